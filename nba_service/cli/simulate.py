"""``nba simulate``: oracle, random, rules-only and the learned policy in a simulated world."""

from __future__ import annotations

import argparse
import sys
import time

from nba_service.cli._common import policy_knobs, policy_options, write_json


def cmd_simulate(args: argparse.Namespace) -> int:
    from nba_service.tools.simulate import SimulationConfig, plot_regret, simulate

    try:
        config = SimulationConfig(**policy_knobs(args, "steps"))
        started = time.perf_counter()
        result = simulate(config)
    except ValueError as exc:
        print(f"nba simulate: {exc}", file=sys.stderr)
        return 2
    print(
        f"{config.steps:,} customer moments; learned policy: {config.describe()}; "
        f"ran in {time.perf_counter() - started:.1f} s"
    )
    print(result.table())
    print(f"learned, last tenth of the run: {result.last_share:.1%} of the oracle's expected reward")
    write_json(args.json, result.to_json())
    if args.plot:
        plot_regret(result, args.plot)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser(
        "simulate",
        help="learned policy vs oracle, random and rules in a simulated world",
        description="Simulated customers whose response depends on the moment (ATM decline, near a store, "
        "abandoned cart, agent call) and their segment. Runs the oracle, uniform random, rules-only "
        "(highest prior x value) and the learned policy (the real engine, models and exploration) "
        "over the same moments, online, and reports reward as a share of the oracle's.",
    )
    sim.add_argument("--steps", type=int, help="customer moments to simulate (default 20000)")
    policy_options(sim, "seed of the world and the exploration (default 0)")
    sim.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    sim.add_argument("--plot", metavar="FILE.png", help="draw the cumulative regret curves")
    sim.set_defaults(func=cmd_simulate)
