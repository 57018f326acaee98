"""``nba store ...``: the key layout of nba's Redis. ``migrate`` moves the state a previous release wrote into this
release's layout (into another Redis, a Redis Cluster, or in place); ``layout`` says which layout a Redis holds."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import cast

import redis
from redis.cluster import RedisCluster

from nba_service.cli._common import settings_from, state_client, state_options, write_json
from nba_service.domain.enums import RedisMode
from nba_service.settings import Settings
from nba_service.store import connect, keys
from nba_service.store.connect import RedisTarget
from nba_service.store.migrate import (
    CHECKPOINT,
    UPGRADE_COMMANDS,
    MigrationError,
    MigrationReport,
    has_legacy_keys,
    layout_of,
    migrate_locked,
)
from nba_service.store.urls import redacted_url

MIGRATE_DESCRIPTION = """\
Move the state a previous release of nba wrote (keys nba:c:{<customer>}:...,
nba:d:<id>, one outcome stream, ...) into this release's key layout, where a
customer's keys, its decisions and its bucket's pending set and outcome stream
share one hash slot, so a Redis Cluster can hold them.

Moved, with their TTLs: profiles, journeys, contact histories, open journeys,
declines, decisions (and which bucket each old decision id is in), pending
outcomes, the outcome entries the learners have not acknowledged yet, policy
and model versions with their history, budget counters, the consent audit and
the pseudonym key. Heartbeats and locks are dropped; other nba: keys are left
where they are and listed.

With --to (a standalone Redis, or any node of a Redis Cluster with --to-mode
cluster) the keys are copied (DUMP and RESTORE) into it, which must hold no nba
data; --from is left as it was. Without --to, or when --to is the same Redis,
they are renamed in place: what `nba serve` and `nba learner` do by themselves
when they start on a Redis of a previous release. Stop the previous release's
servers first: what they write after the scan passed a key is not migrated.

Resumable: progress is checkpointed in the target after each batch; the same
command run again after a crash or Ctrl-C continues where it stopped, copying
nothing twice. Prints the counts by kind.

Exit status: 0 done (or nothing to do), 1 the target cannot take it (it holds
nba data, another migration runs), 2 bad options, 3 a Redis error (the URL is
named, its password masked).

examples:
  nba store migrate --from redis://old-redis:6379/0 \\
      --to redis://redis-cluster-0.redis-cluster:6379 --to-mode cluster
  nba store migrate --redis-url redis://redis:6379/0      # in place
"""

PROGRESS_SECONDS = 2.0
"""Off a terminal, a progress line at most this often (and at each phase)."""


class _Failed(Exception):
    """A command error already worded for the user: (message, exit code)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _connect(option: str, target: RedisTarget) -> redis.Redis:
    """A client of ``target`` (given as ``option``) that answered a PING."""
    try:
        client = connect.sync_client(target)
    except ValueError as exc:
        raise _Failed(f"{option}: {exc}", 2) from None
    except redis.RedisError as exc:  # cluster mode reads the slot map at once
        raise _Failed(f"{option} {redacted_url(target.url)}: {exc}", 3) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise _Failed(f"{option} {redacted_url(target.url)}: cannot reach it: {exc}", 3) from None
    return client


@contextlib.contextmanager
def _source(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[redis.Redis, str]]:
    """The Redis to migrate from, and its name for messages (no password)."""
    if args.from_url:
        client = _connect("--from", RedisTarget(url=args.from_url))
        try:
            yield client, redacted_url(args.from_url)
        finally:
            client.close()
        return
    if settings.redis_mode is RedisMode.CLUSTER:
        raise _Failed(
            "the previous layout was never on a Redis Cluster: give the standalone Redis to migrate from with --from "
            "(or --redis-mode standalone|sentinel)",
            2,
        )
    name = (
        f"the embedded Redis in {settings.data_dir}"
        if settings.uses_embedded_redis
        else RedisTarget.of(settings).describe()
    )
    try:
        with state_client(settings, layout=False) as client:
            yield client, name
    except redis.ConnectionError as exc:
        raise _Failed(f"{name}: cannot reach it: {exc}", 3) from None


def _same_redis(one: redis.Redis, other: redis.Redis) -> bool:
    """Whether two standalone clients reach the same server and database (the server's run id says; False when
    the user may not ask it)."""
    if isinstance(other, RedisCluster):
        return False
    try:
        run_ids = [str(c.info("server").get("run_id")) for c in (one, other)]
    except redis.exceptions.NoPermissionError:
        return False
    databases = [int(c.connection_pool.connection_kwargs.get("db") or 0) for c in (one, other)]
    return run_ids[0] == run_ids[1] and databases[0] == databases[1]


class _Progress:
    """Progress lines on stderr: one overwritten line on a terminal, else one every few seconds and at each phase."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.phase = ""
        self.shown = 0.0
        self.resumed_told = False

    def __call__(self, report: MigrationReport) -> None:
        if report.resumed and not self.resumed_told:
            print(f"resuming the migration left unfinished (phase {report.phase})", file=sys.stderr)
            self.resumed_told = True
        if report.phase == "keys" and not report.scanned:
            return  # the checkpoint of a migration that has not read anything yet
        now = time.monotonic()
        changed = report.phase != self.phase
        if not self.tty and not changed and now - self.shown < PROGRESS_SECONDS:
            return
        line = f"{report.phase}: {report.scanned:,} keys scanned, {report.migrated:,} migrated"
        if report.phase in ("outcomes", "done"):
            line += f", {report.outcomes:,} outcome entries copied"
        if self.tty:
            print(f"\r{line}\033[K", end="" if report.phase != "done" else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
        self.phase, self.shown = report.phase, now


def _print_report(report: MigrationReport) -> None:
    rows = report.rows()
    width = max(len(label) for label, _ in rows)
    digits = max(5, *(len(f"{count:,}") for _, count in rows))
    print(f"{'':{width}}  {'count':>{digits}}")
    for label, count in rows:
        print(f"{label:{width}}  {count:>{digits},}")
    if report.unknown_keys:
        shown = ", ".join(report.unknown_keys)
        more = report.unknown - len(report.unknown_keys)
        print(f"unknown keys (left where they are): {shown}{f' and {more} more' if more > 0 else ''}")


def cmd_store_migrate(args: argparse.Namespace) -> int:
    if args.batch < 1:
        print(f"nba store migrate: --batch: at least 1 (got {args.batch})", file=sys.stderr)
        return 2
    settings = settings_from(args)
    try:
        with _source(args, settings) as (source, source_name):
            return _migrate(args, source, source_name)
    except _Failed as exc:
        print(f"nba store migrate: {exc}", file=sys.stderr)
        return exc.code


def _migrate(args: argparse.Namespace, source: redis.Redis, source_name: str) -> int:
    target: redis.Redis = source
    target_name = source_name
    cluster = args.to_mode == RedisMode.CLUSTER.value
    if args.to:
        target_name = redacted_url(args.to) + (" (Redis Cluster)" if cluster else "")
        target = _connect("--to", RedisTarget(url=args.to, mode=RedisMode(args.to_mode)))
    try:
        in_place = target is source or args.to == args.from_url or _same_redis(source, target)
        where = f"{source_name}, in place" if in_place else f"{source_name} -> {target_name}"
        print(f"migrating {where}, to key layout {keys.LAYOUT_VERSION}", flush=True)
        try:
            report = migrate_locked(
                source, target, in_place=in_place, batch=args.batch, progress=_Progress(), source_name=source_name
            )
        except MigrationError as exc:
            raise _Failed(str(exc), 1) from None
        except redis.exceptions.NoPermissionError as exc:
            needed = ", ".join(UPGRADE_COMMANDS) if in_place else "SCAN, DUMP and PTTL on --from; RESTORE on --to"
            raise _Failed(f"{where}: {exc}: the migration needs a Redis user that may send {needed}", 3) from None
        except redis.RedisError as exc:
            raise _Failed(
                f"{where}: {exc} (what was done is kept: run the same command again to resume from its checkpoint)", 3
            ) from None
        except KeyboardInterrupt:
            raise _Failed("interrupted: run the same command again to resume from its checkpoint", 130) from None
    finally:
        if target is not source:
            target.close()
    if report.running_servers:
        print(
            f"warning: {len(report.running_servers)} server(s) of the previous release were running on the source "
            f"({', '.join(report.running_servers[:5])}): what they wrote after the scan passed is not migrated",
            file=sys.stderr,
        )
    write_json(args.json, {**report.counts(), "in_place": in_place, "layout": keys.LAYOUT_VERSION})
    if report.already:
        print(f"{target_name} already holds key layout {report.already}: nothing to migrate")
        return 0
    _print_report(report)
    left = "the old names are gone" if in_place else "the source is left as it was"
    print(f"done: {target_name} holds key layout {keys.LAYOUT_VERSION} ({left})")
    return 0


def cmd_store_layout(args: argparse.Namespace) -> int:
    with state_client(settings_from(args), layout=False) as client:
        layout = layout_of(client)
        checkpoint = cast("bytes | None", client.hget(CHECKPOINT, "phase"))
        legacy = layout is None and has_legacy_keys(client)
        empty = layout is None and not legacy and next(iter(client.scan_iter(match="nba:*", count=1000)), None) is None
    if checkpoint is not None:
        print(
            f"a migration is unfinished (phase {checkpoint.decode()}; checkpoint {CHECKPOINT}): run `nba store migrate`"
            " again to resume it"
        )
        return 0
    if layout is not None:
        print(f"key layout {layout}")
    elif legacy:
        print(
            f"the key layout of a previous release (before buckets): `nba serve` upgrades it in place when it starts, "
            f"or run `nba store migrate` (to layout {keys.LAYOUT_VERSION})"
        )
    elif empty:
        print(f"no nba data yet (`nba serve` sets key layout {keys.LAYOUT_VERSION} when it starts)")
    else:
        print(f"key layout {keys.LAYOUT_VERSION} (not marked yet: `nba serve` marks it when it starts)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    store = sub.add_parser("store", help="the key layout of nba's Redis: migrate a previous release's state, show it")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    migrate = store_sub.add_parser(
        "migrate",
        help="move a previous release's state into this release's key layout (another Redis, a cluster, or in place)",
        description=MIGRATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument(
        "--from",
        dest="from_url",
        metavar="URL",
        help="the Redis the previous release used (a standalone Redis, or its primary); default: the Redis the "
        "other commands use (--redis-url, NBA_REDIS_URL, the sentinels' primary, or the embedded one)",
    )
    migrate.add_argument(
        "--to",
        metavar="URL",
        help="the Redis to migrate into (empty of nba data); default: --from itself, upgraded in place",
    )
    migrate.add_argument(
        "--to-mode",
        choices=[RedisMode.STANDALONE.value, RedisMode.CLUSTER.value],
        default=RedisMode.STANDALONE.value,
        help="standalone: --to is a Redis (default); cluster: --to is any node of a Redis Cluster",
    )
    migrate.add_argument(
        "--batch", type=int, default=1000, metavar="N", help="keys per SCAN and per pipelined round trip (default 1000)"
    )
    migrate.add_argument("--json", metavar="FILE", help="also write the counts as JSON here")
    state_options(migrate)
    migrate.set_defaults(func=cmd_store_migrate)

    layout = store_sub.add_parser(
        "layout",
        help="which key layout the Redis holds (and whether a migration is unfinished)",
        description="Which key layout nba's Redis holds: this release's (marked by nba:{g}:layout), a previous "
        "release's (upgraded in place by `nba serve` when it starts, or by `nba store migrate`), none yet, or an "
        "unfinished migration.",
    )
    state_options(layout)
    layout.set_defaults(func=cmd_store_layout)
