"""``nba events ...``: event files for ``nba policy preview``."""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

from nba_service.api.event_log import append_request
from nba_service.policies.rule_functions import parse_duration
from nba_service.store.customer_import import read_records
from nba_service.tools.sources import SourceError, moment_time
from nba_service.tools.traffic import ScenarioMix


def cmd_events_generate(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.customers)
    if not path.is_file():
        print(f"nba events generate: {path}: no such file", file=sys.stderr)
        return 1
    customer_ids = sorted(
        {str(r["customer_id"]) for _, r in read_records(path) if isinstance(r, dict) and r.get("customer_id")}
    )
    if not customer_ids:
        print(f"nba events generate: {path}: no customer_id found", file=sys.stderr)
        return 1
    try:
        span = parse_duration(args.span)
        start = moment_time(args.start, time.time() - span)
    except (SourceError, ValueError) as exc:
        print(f"nba events generate: {exc}", file=sys.stderr)
        return 1
    if args.count < 0:
        print("nba events generate: --count must be >= 0", file=sys.stderr)
        return 1
    mix = ScenarioMix(customer_ids, seed=args.seed, unknown_share=args.unknown_share)
    clock = random.Random(f"{args.seed}:timestamps")
    offsets = sorted(clock.uniform(0.0, span) for _ in range(args.count))
    for offset in offsets:
        append_request(sys.stdout, mix.next().request, round(start + offset, 3))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser("events", help="write event files for `nba policy preview`")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    generate = events_sub.add_parser(
        "generate",
        help="simulated customer moments as JSON lines on standard output",
        description="Draws ATM declines, location pings, abandoned carts, app opens, page views, agent contacts "
        "and purchases from the demo's traffic mix, for the customers of a CRM export, spread over "
        "a time span. The same seed gives the same file.",
    )
    generate.add_argument("--count", type=int, default=1000, help="events to write (default 1000)")
    generate.add_argument("--seed", type=int, default=7, help="seed of the simulation (default 7)")
    generate.add_argument(
        "--customers",
        default="policies/customers.jsonl",
        metavar="FILE",
        help="customer ids from this JSON-lines or CSV export (default policies/customers.jsonl)",
    )
    generate.add_argument(
        "--start", metavar="TIME", help="time of the span's start (ISO 8601, UTC if no offset; default: SPAN ago)"
    )
    generate.add_argument("--span", default="1d", help="events spread over this duration (default 1d)")
    generate.add_argument(
        "--unknown-share",
        type=float,
        default=0.03,
        help="share of events from customers not in the export (default 0.03)",
    )
    generate.set_defaults(func=cmd_events_generate)
