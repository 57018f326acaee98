"""``nba bench``: Decide against an echo server on this machine, in one run."""

from __future__ import annotations

import argparse
import pathlib
import sys

from nba_service.cli._common import write_json

SWEEP_VALUES = {"offers": (10, 50, 200, 1000), "customers": (10_000, 100_000, 1_000_000)}
QUICK_SWEEP_VALUES = {"offers": (10, 50, 200, 1000), "customers": (10_000, 20_000, 50_000)}
DEFAULT_SHARDS = (1, 2, 3)
"""Primaries of the local Redis Clusters of ``--redis-mode cluster`` without ``--shards``."""


def _positive_int(text: str) -> int:
    values = _ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one whole number")
    return values[0]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive whole numbers, e.g. 1,4,16,64")
    return values


def _hot_kinds(text: str) -> tuple[str, ...]:
    from nba_service.tools.bench.cluster import HOT_KINDS

    kinds = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [k for k in kinds if k not in HOT_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: give {' and/or '.join(HOT_KINDS)}, e.g. customer,budget")
    return tuple(dict.fromkeys(kinds))


def _cluster_flags_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of --redis-mode, --shards, --hot and --sweep (None: nothing)."""
    if args.bench_redis_mode == "cluster":
        if args.sweep:
            return "--sweep runs on the embedded Redis only: leave out --redis-mode cluster"
        return None
    for flag, value in (("--shards", args.shards), ("--hot", args.hot)):
        if value:
            return f"{flag} is for the Redis Cluster scale curve: add --redis-mode cluster"
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    from nba_service.tools.bench import (
        BenchConfig,
        BenchError,
        format_cluster_report,
        format_report,
        format_sweep,
        run_bench,
        run_cluster_bench,
        run_sweep,
    )

    problem = _cluster_flags_error(args)
    if problem:
        print(f"nba bench: {problem}", file=sys.stderr)
        return 1

    overrides = {
        "customers": args.customers,
        "offers": args.offers,
        "policies": args.policies,
        "sequential": args.sequential,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "connections": args.connections,
        "seed": args.seed,
    }
    if args.quick:
        config = BenchConfig.quick(**overrides)
    else:
        config = BenchConfig(**{k: v for k, v in overrides.items() if v is not None})
    if config.connections < config.workers:
        print(
            f"nba bench: --connections {config.connections} would leave some of the {config.workers} workers idle "
            "(each connection is served by one): give at least --workers",
            file=sys.stderr,
        )
        return 1
    if not pathlib.Path(config.policies).is_dir():
        print(
            f"nba bench: {config.policies} not found (run it from the project folder or give --policies)",
            file=sys.stderr,
        )
        return 1

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.bench_redis_mode == "cluster":
            result = run_cluster_bench(config, args.shards or DEFAULT_SHARDS, args.hot or (), progress)
            report = format_cluster_report(result)
        elif args.sweep:
            values = args.values or (QUICK_SWEEP_VALUES if args.quick else SWEEP_VALUES)[args.sweep]
            result = run_sweep(args.sweep, values, config, progress)
            report = format_sweep(result)
        else:
            result = run_bench(config, progress)
            report = format_report(result)
    except BenchError as exc:
        print(f"nba bench: {exc}", file=sys.stderr)
        return 1
    print(report)
    write_json(args.json, result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmark Decide against an echo gRPC server on this machine",
        description="Starts nba serve (embedded Redis, customers and journeys loaded) and an echo server built "
        "the same way, drives both with the same client, and prints sequential latency, the highest "
        "throughput and the ratios Decide/Echo. With --redis-mode cluster: the Redis Cluster scale curve "
        "(docs/performance.md).",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a short run (under a minute): 20,000 customers, 500 sequential calls, 1 s steps",
    )
    bench.add_argument("--customers", type=_positive_int, help="customer profiles loaded (default 100000)")
    bench.add_argument(
        "--offers",
        type=_positive_int,
        help="candidate offers per request: a generated policy set, every offer eligible for ATM "
        "declines (default: the policy directory and the scenario mix)",
    )
    bench.add_argument("--policies", help="policy directory (default policies/)")
    bench.add_argument("--sequential", type=_positive_int, help="calls measured one at a time (default 2000)")
    bench.add_argument("--seconds", type=_positive_float, help="length of each throughput step (default 3)")
    bench.add_argument("--concurrency", type=_ints, help="calls in flight per throughput step (default 1,4,16,64)")
    bench.add_argument(
        "--sweep",
        choices=("offers", "customers"),
        help="sequential latency for several offer or customer counts, and how it grows",
    )
    bench.add_argument(
        "--values",
        type=_ints,
        help="values of the sweep (default offers 10,50,200,1000; customers 10000,100000,1000000)",
    )
    bench.add_argument(
        "--workers",
        type=_positive_int,
        help="nba serve --workers: server processes sharing the port (default 1; the echo stays one)",
    )
    bench.add_argument(
        "--connections",
        type=_positive_int,
        help="connections to each server for the throughput ladder (default 4): each one is served "
        "by one worker, so give at least --workers",
    )
    bench.add_argument(
        "--redis-mode",
        dest="bench_redis_mode",  # not the settings' redis_mode: the bench starts its own Redis either way
        choices=("standalone", "cluster"),
        default="standalone",
        help="standalone: nba serve on its embedded Redis (default); cluster: the Redis Cluster scale curve: the "
        "embedded Redis, then a local Redis Cluster of each --shards number of primaries, the same load on each, "
        "Redis CPU, commands and keys per primary",
    )
    bench.add_argument(
        "--shards",
        type=_ints,
        help="with --redis-mode cluster: primaries of each local cluster, e.g. 1,2,3 (the default)",
    )
    bench.add_argument(
        "--hot",
        type=_hot_kinds,
        help="with --redis-mode cluster: hot-spot rows on the largest cluster: customer (a fifth of the decisions "
        "for one customer), budget (one budgeted offer chosen by every decision), or customer,budget",
    )
    bench.add_argument("--seed", type=int, help="seed of the generated customers and requests (default 1)")
    bench.add_argument("--json", help="also write the results as JSON here")
    bench.set_defaults(func=cmd_bench)
