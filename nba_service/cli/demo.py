"""``nba demo``: everything on an embedded Redis with simulated traffic."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    from nba_service.tools.demo import run_demo

    return run_demo(
        duration=args.duration,
        concurrency=args.concurrency,
        seed=args.seed,
        policies=args.policies,
        customers=args.customers,
    )


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run everything on an embedded Redis with simulated traffic")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of simulated traffic (default 30)")
    demo.add_argument("--concurrency", type=int, default=8, help="simulated channel backends at once (default 8)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulation (default 7)")
    demo.add_argument("--policies", default="policies", help="policy directory (default policies/)")
    demo.add_argument("--customers", default="policies/customers.jsonl", help="customer profiles to load")
    demo.set_defaults(func=cmd_demo)
