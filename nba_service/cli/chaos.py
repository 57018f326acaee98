"""``nba chaos``: each fault of the reliability suite against a real server and Redis, on loopback."""

from __future__ import annotations

import argparse
import pathlib
import sys

from nba_service.cli._common import write_json


def _faults(text: str) -> tuple[str, ...]:
    from nba_service.tools.chaos import FAULTS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAULTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give some of {', '.join(FAULTS)}")
    return names


def cmd_chaos(args: argparse.Namespace) -> int:
    from nba_service.tools.chaos import FAULTS, ChaosConfig, format_table, run_chaos

    overrides = {"policies": args.policies, "seed": args.seed}
    if args.quick:
        config = ChaosConfig.quick(**overrides)
    else:
        config = ChaosConfig(**{k: v for k, v in overrides.items() if v is not None})
    if not pathlib.Path(config.policies).is_dir():
        print(
            f"nba chaos: {config.policies} not found (run it from the project folder or give --policies)",
            file=sys.stderr,
        )
        return 1

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    run = run_chaos(config, args.faults or FAULTS, progress)
    print(format_table(run.results))
    print(f"\n{'every fault held' if run.passed else 'some faults were not held'} ({run.seconds:.0f} s)")
    write_json(args.json, run.as_dict())
    return 0 if run.passed else 1


def register(sub: argparse._SubParsersAction) -> None:
    chaos = sub.add_parser(
        "chaos",
        help="run each fault of the reliability suite against a real server and Redis (loopback only)",
        description="Starts, for each fault, a redis-server and nba serve on free loopback ports, injects the "
        "fault under load (Redis killed, overload and bursts, idle connections, streams that stop reading, "
        "corrupt protobuf, SIGTERM with calls in flight, policy attacks written into Redis), and prints a table: "
        "load held, status codes, recovery time, decisions returned vs recorded, outcomes acknowledged vs "
        "learned, RSS and file descriptors, and a verdict per fault. Exit code 1 when a fault was not held. "
        "See docs/reliability.md.",
    )
    chaos.add_argument(
        "--quick", action="store_true", help="each fault scaled down to a few seconds (what make test runs)"
    )
    chaos.add_argument("--faults", type=_faults, help="comma-separated faults to run (default: all, in order)")
    chaos.add_argument("--policies", help="policy directory every server serves (default policies/)")
    chaos.add_argument("--seed", type=int, help="seed of the customers, requests and exploration (default 1)")
    chaos.add_argument("--json", help="also write the results as JSON here")
    chaos.set_defaults(func=cmd_chaos)
