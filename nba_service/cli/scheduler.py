"""``nba scheduler``: start the live policy's scheduled campaigns when they are due (docs/campaigns.md)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading

from nba_service.campaigns.run import BATCH_SIZE
from nba_service.campaigns.scheduler import Scheduler
from nba_service.cli._common import settings_from, state_client, state_options
from nba_service.cli.campaign import _redis_target
from nba_service.store.migrate import MigrationError, ensure_layout

__all__ = ["register"]


def cmd_scheduler(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    stop = threading.Event()
    with state_client(settings) as client:
        try:
            ensure_layout(client)  # a Redis of the previous release is upgraded in place first
        except MigrationError as exc:
            print(f"nba scheduler: {exc}", file=sys.stderr)
            return 1
    with _redis_target(settings) as target:
        scheduler = Scheduler(
            settings, target, name=args.name, poll_seconds=args.poll_seconds, batch_size=args.batch_size
        )
        if args.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(args.metrics_port, registry=scheduler.registry)
        print(f"scheduler {scheduler.name} running (one is active at a time; Ctrl-C to stop)", flush=True)
        asyncio.run(_until_signalled(scheduler, stop))
    print(f"scheduler {scheduler.name} stopped", flush=True)
    return 0


async def _until_signalled(scheduler: Scheduler, stop: threading.Event) -> None:
    """Run until SIGINT or SIGTERM; the loop's handlers set ``stop`` outside the signal's context (a handler
    setting an Event from the signal itself can deadlock when a second signal interrupts the first)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await scheduler.run(stop)


def register(sub: argparse._SubParsersAction) -> None:
    scheduler = sub.add_parser(
        "scheduler",
        help="start scheduled campaigns when they are due (one active instance; others wait as standbys)",
        description="Start the live policy set's campaigns with a cron-like schedule when they are due, in order "
        "of priority, one run at a time; a Redis lock keeps one scheduler active, and a standby takes over when "
        "it dies (docs/campaigns.md).",
    )
    scheduler.add_argument("--name", help="this instance's name in the lock and the logs (default: host:pid#token)")
    scheduler.add_argument(
        "--poll-seconds", type=float, default=1.0, metavar="S", help="how often the schedules are checked (1)"
    )
    scheduler.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, metavar="N", help=f"keys scanned per batch ({BATCH_SIZE})"
    )
    scheduler.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve the scheduler's and its runs' Prometheus metrics"
    )
    state_options(scheduler)
    scheduler.set_defaults(func=cmd_scheduler)
