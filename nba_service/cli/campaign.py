"""``nba campaign run|status|suspend|resume|history``: outbound campaigns of the live policy (docs/campaigns.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import sys
import time
from collections.abc import Iterator

from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.run import BATCH_SIZE, CampaignRunner, RunReport, RunStateError, RunStore, find_campaign
from nba_service.campaigns.session import campaign_session
from nba_service.campaigns.workers import MAX_WORKERS
from nba_service.cli._common import settings_from, state_client, state_options, write_json
from nba_service.domain import NoPolicyError
from nba_service.settings import Settings
from nba_service.store.connect import RedisTarget
from nba_service.store.policy_store import PolicyStore

__all__ = ["register"]


@contextlib.contextmanager
def _redis_target(settings: Settings) -> Iterator[RedisTarget]:
    """The configured Redis, or the embedded Redis (started for the command if no server runs it)."""
    if not settings.uses_embedded_redis:
        yield RedisTarget.of(settings)
        return
    from nba_service.store.embedded import EmbeddedRedis

    with EmbeddedRedis(settings.data_dir) as embedded:
        yield RedisTarget(url=embedded.url)


class _ProgressLine:
    """One line on stderr, rewritten after each batch on a terminal (elsewhere a line every 5 s and the last
    one): customers scanned, in the segment, decided (per second), delivered."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last = self.started  # elsewhere: the first line after 5 s (a short run's workers: one line)
        self.report: RunReport | None = None
        self.shown: tuple[int, int, int] | None = None

    def __call__(self, report: RunReport, *, last: bool = False) -> None:
        self.report = report
        now = time.monotonic()
        figures = (report.scanned, report.decided, report.total_delivered)
        if figures == self.shown or (not last and not self.tty and now - self.last < 5.0):
            return
        self.shown, self.last = figures, now
        rate = report.decided / max(now - self.started, 1e-9)
        line = (
            f"{report.campaign} {report.run_id}: scanned {report.scanned:,}, in segment {report.in_segment:,}, "
            f"decided {report.decided:,} ({rate:,.0f}/s), delivered {report.total_delivered:,}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Show the last figures (unless shown already) and end the line."""
        if self.report is not None:
            self(self.report, last=True)
        if self.tty and self.shown is not None:
            print(file=sys.stderr)


def _execute(args: argparse.Namespace, *, resume: bool) -> int:
    settings = settings_from(args)
    progress = _ProgressLine()
    started = time.monotonic()
    metrics = None
    if args.metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        metrics = CampaignMetrics(CollectorRegistry())
        start_http_server(args.metrics_port, registry=metrics.registry)

    async def go() -> RunReport:
        with _redis_target(settings) as target:
            async with campaign_session(settings, target) as (dataplane, client):
                runner = CampaignRunner(
                    dataplane,
                    client,
                    find_campaign(dataplane.snapshot, args.name),
                    batch_size=args.batch_size,
                    workers=args.workers,
                    target=target,
                    progress=progress,
                    export_dir=getattr(args, "export", None),
                    metrics=metrics,
                )
                if resume:
                    return await runner.run(runner.resumable())
                report = runner.begin(dry_run=args.dry_run, started_by="cli")
                return await runner.run(report, limit=args.limit)

    try:
        report = asyncio.run(go())
    except (RunStateError, NoPolicyError) as exc:
        progress.close()
        print(f"nba campaign: {exc}", file=sys.stderr)
        return 1
    progress.close()
    elapsed = time.monotonic() - started
    write_json(args.json, report.as_dict() | {"seconds": round(elapsed, 3)})
    _print_report(report)
    print(f"{report.decided:,} decisions in {elapsed:.1f} s ({report.decided / max(elapsed, 1e-9):,.0f}/s)")
    return 0


def _print_report(report: RunReport) -> None:
    when = datetime.datetime.fromtimestamp(report.started, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    kind = "dry run (nothing written)" if report.dry_run else f"run {report.run_id}"
    ended = f" ({report.ended})" if report.ended else ""
    print(f"campaign {report.campaign}, {kind}, started {when} UTC, policy version {report.policy_version}")
    print(f"status: {report.status}{ended}")
    print(f"scanned {report.scanned:,}  in segment {report.in_segment:,}  decided {report.decided:,}")
    verb = "would deliver" if report.dry_run else "delivered"
    print(f"{verb} {report.total_delivered:,}:")
    for key, count in sorted(report.by_offer.items(), key=lambda kv: (-kv[1], kv[0])):
        offer, _, channel = key.partition("|")
        print(f"  {offer:28} {channel:12} {count:>8,}")
    if report.suppressed:
        print("not delivered, by reason:")
        for reason, count in sorted(report.suppressed.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {reason:41} {count:>8,}")


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"--workers: {text!r} is not a whole number in 1..{MAX_WORKERS}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    return _execute(args, resume=False)


def cmd_resume(args: argparse.Namespace) -> int:
    return _execute(args, resume=True)


def _campaigns(client: object, name: str | None) -> list[str]:
    if name:
        return [name]
    store = PolicyStore(client)  # type: ignore[arg-type]
    live = store.live()
    if live is None:
        return []
    from nba_service.policies.parser import parse_policy_files

    return [c.id for c in parse_policy_files(store.load(live).files).campaigns]


def cmd_status(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = RunStore(client)
        reports = [r for r in (store.latest(name) for name in _campaigns(client, args.name)) if r is not None]
    write_json(args.json, [r.as_dict() for r in reports])
    if not reports:
        print("no campaign has run yet" if not args.name else f"campaign {args.name} has no run")
    for index, report in enumerate(reports):
        if index:
            print()
        _print_report(report)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        store = RunStore(client)
        reports = [r for name in _campaigns(client, args.name) for r in store.runs(name)]
    write_json(args.json, [r.as_dict() for r in reports])
    if not reports:
        print("no campaign has run yet")
        return 0
    print(
        f"{'campaign':24} {'run':22} {'started (UTC)':19}  {'status':9} {'in segment':>10}"
        f" {'decided':>8} {'delivered':>9}"
    )
    for r in reports:
        when = datetime.datetime.fromtimestamp(r.started, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{r.campaign:24} {r.run_id:22} {when:19}  {r.status:9} {r.in_segment:>10,} {r.decided:>8,}"
            f" {r.total_delivered:>9,}"
        )
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    with state_client(settings_from(args)) as client:
        try:
            report = RunStore(client).set_status(args.name, "suspended", expect=("running",))
        except RunStateError as exc:
            print(f"nba campaign suspend: {exc}", file=sys.stderr)
            return 1
    print(
        f"run {report.run_id} of {args.name} suspended: it stops after its current batch; "
        f"`nba campaign resume {args.name}` continues it"
    )
    return 0


def working_options(parser: argparse.ArgumentParser, *, workers: int, workers_help: str) -> None:
    """The options of a command that works a run (``run``, ``resume``)."""
    parser.add_argument("--export", metavar="DIR", help="also write the deliveries as one JSONL file per channel here")
    parser.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, metavar="N", help=f"keys scanned per batch ({BATCH_SIZE})"
    )
    parser.add_argument("--workers", type=_workers, default=workers, metavar="N", help=workers_help)
    parser.add_argument("--json", metavar="FILE", help="also write the run's figures as JSON here")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the run's Prometheus metrics on this port while it works",
    )
    state_options(parser)


def register(sub: argparse._SubParsersAction) -> None:
    campaign = sub.add_parser(
        "campaign",
        help="outbound campaigns: run, resume, suspend, status, history",
        description="Run an outbound campaign of the live policy set over the customers in Redis: each customer "
        "of its segment is decided like a live decision and delivered to a Redis stream per channel "
        "(docs/campaigns.md).",
    )
    commands = campaign.add_subparsers(dest="campaign_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a campaign now (or preview it with --dry-run)")
    run.add_argument("name", help="the campaign's id in the live policy set")
    run.add_argument(
        "--dry-run", action="store_true", help="decide without writing anything: counts by offer and channel"
    )
    run.add_argument("--limit", type=int, metavar="N", help="decide at most N customers, then end the run")
    working_options(
        run,
        workers=_default_workers(),
        workers_help="processes deciding the run, each on a share of the customers (default: the CPUs, "
        f"{_default_workers()} here; at most {MAX_WORKERS}; a dry run uses one)",
    )
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="continue the campaign's suspended or interrupted run")
    resume.add_argument("name")
    # a run resumes with the workers it started with: its checkpoints are per share
    working_options(resume, workers=1, workers_help=argparse.SUPPRESS)
    resume.set_defaults(func=cmd_resume)

    suspend = commands.add_parser("suspend", help="stop the campaign's running run after its current batch")
    suspend.add_argument("name")
    state_options(suspend)
    suspend.set_defaults(func=cmd_suspend)

    for name, func, text in (
        ("status", cmd_status, "the latest run of each campaign (or of NAME): progress and counts"),
        ("history", cmd_history, "every run of each campaign (or of NAME)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("name", nargs="?")
        command.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
        state_options(command)
        command.set_defaults(func=func)
