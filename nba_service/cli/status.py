"""``nba status``: which Redis the commands use, what is live in it, and which servers use it."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from nba_service.app import discovery
from nba_service.cli._common import redis_client, settings_from, state_options, write_json
from nba_service.settings import Settings
from nba_service.store import connect, heartbeats, keys
from nba_service.store.connect import RedisTarget
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore
from nba_service.store.urls import redacted_url

__all__ = ["register"]


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def _connect(settings: Settings) -> Iterator[tuple[redis.Redis, dict[str, Any]]]:
    """A client of the Redis the commands use, and what ``nba status`` says about that Redis."""
    if not settings.uses_embedded_redis:
        target = RedisTarget.of(settings)
        client = redis_client(target)
        try:
            client.ping()
            about: dict[str, Any] = {"url": target.describe(), "embedded": False, "mode": str(target.mode)}
            if target.sentinel:
                primary = connect.primary_address(client)
                about.update(
                    url=redacted_url(settings.redis_url),
                    master_name=target.master_name,
                    sentinels=[f"{host}:{port}" for host, port in target.sentinels],
                    primary=f"{primary[0]}:{primary[1]}" if primary else "",
                )
            yield client, about
        finally:
            client.close()
        return
    advertised = [a for a in discovery.live_servers() if discovery.same_dir(a.data_dir, settings.data_dir)]
    with EmbeddedRedis(settings.data_dir) as embedded:
        about = {
            "url": embedded.url,
            "mode": "standalone",
            "embedded": True,
            "data_dir": str(embedded.data_dir),
            "redis_pid": embedded.pid,
            "started_for_this_command": embedded.owner,
            "advertised_by": [{"pid": a.pid, "since": a.started_at} for a in advertised],
        }
        client = redis_client(RedisTarget(url=embedded.url))
        try:
            yield client, about
        finally:
            client.close()


def _policy(client: redis.Redis) -> dict[str, Any] | None:
    store = PolicyStore(client)
    live = store.live()
    if live is None:
        return None
    try:
        policy = store.load(live)
    except (KeyError, ValueError) as exc:  # gone, or too large to be read
        return {"version": live, "problem": str(exc)}
    return {
        "version": live,
        "author": policy.author,
        "message": policy.message,
        "published_at": policy.published_at,
        "digest": policy.digest,
    }


def _model(client: redis.Redis) -> dict[str, Any] | None:
    store = ModelStore(client)
    live = store.live()
    if live is None:
        return None
    described: dict[str, Any] = {"version": live}
    for version in reversed(store.history()):
        if version.version == live:
            described.update(updates=version.updates, published_at=version.published_at, source=version.source)
            break
    challenger = client.get(keys.MODEL_CHALLENGER_VERSION)
    described["challenger"] = challenger is not None and int(challenger) == live
    return described


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with _connect(settings) as (client, about):
        status: dict[str, Any] = {
            "redis": about,
            "policy": _policy(client),
            "model": _model(client),
            "servers": heartbeats.servers(client),
        }
    if settings.uses_embedded_redis:
        status["elsewhere"] = [
            {"pid": a.pid, "data_dir": a.data_dir, "redis_url": a.redis_url, "since": a.started_at}
            for a in discovery.live_servers()
            if not discovery.same_dir(a.data_dir, settings.data_dir)
        ]
    if args.json == "-":
        print(json.dumps(status, indent=2))
        return 0
    write_json(args.json, status)
    _print_status(status)
    return 0


def _print_status(status: dict[str, Any]) -> None:
    about = status["redis"]
    if about.get("mode") == "sentinel":
        print(
            f"redis:   sentinel: the primary {about['master_name']!r}, now {about['primary']}, as the sentinels "
            f"{','.join(about['sentinels'])} name it (--redis-mode sentinel / NBA_REDIS_MODE)"
        )
    elif not about["embedded"]:
        print(f"redis:   {about['url']} (--redis-url / NBA_REDIS_URL)")
    else:
        where = f"{about['url']}, redis-server pid {about['redis_pid']}"
        print(f"redis:   embedded, data dir {about['data_dir']} ({where})")
        for server in about["advertised_by"]:
            print(f"         run by nba serve (pid {server['pid']}) since {_when(server['since'])} UTC")
        if about["started_for_this_command"]:
            print("         no server was running it: started for this command, and saved and stopped again")
    policy = status["policy"]
    if policy is None:
        print("policy:  none published (`nba policy publish DIR`)")
    elif "problem" in policy:
        print(f"policy:  version {policy['version']} live; {policy['problem']}")
    else:
        message = f", {policy['message']!r}" if policy["message"] else ""
        print(
            f"policy:  version {policy['version']} live, published {_when(policy['published_at'])} UTC "
            f"by {policy['author']}{message}"
        )
    model = status["model"]
    if model is None:
        print("model:   none published (offers are scored by their priors)")
    else:
        line = f"model:   version {model['version']} live"
        if "published_at" in model:
            line += f", published {_when(model['published_at'])} UTC ({model['source']}, {model['updates']} outcomes)"
        if model["challenger"]:
            line += "; a challenger was trained with it"
        print(line)
    _print_servers(status["servers"])
    for other in status.get("elsewhere", []):
        print(
            f"also running on this machine: nba serve (pid {other['pid']}) with its embedded Redis in "
            f"{other['data_dir']} (another state: --data-dir {other['data_dir']} to see it)"
        )


def _print_servers(servers: Sequence[dict[str, str]]) -> None:
    if not servers:
        print(
            f"servers: none (no nba serve has written a heartbeat to this Redis in the last "
            f"{heartbeats.HEARTBEAT_TTL_SECONDS:g} s)"
        )
        return
    every = heartbeats.HEARTBEAT_SECONDS
    print(f"servers: {len(servers)} connected (from their heartbeats, rewritten every {every:g} s)")
    header = ["pid", "address", "release", "mode", "learner", "policy", "model", "serving", "up since (UTC)", "host"]
    rows = []
    for beat in servers:
        try:
            since = _when(float(beat.get("started_at", "")))
        except ValueError:
            since = "-"
        rows.append(
            [
                beat.get("pid", "-"),
                beat.get("address", "-"),
                beat.get("version", "-"),
                beat.get("mode", "-"),
                beat.get("learner", "-"),
                beat.get("policy_version") or "-",
                beat.get("model_version") or "-",
                beat.get("serving", "-"),
                since,
                beat.get("host", "-"),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for cells in [header, *rows]:
        padded = [cell.ljust(width) for cell, width in zip(cells[:-1], widths, strict=True)]
        print("  " + "  ".join([*padded, cells[-1]]).rstrip())


def register(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser(
        "status",
        help="which Redis the commands use, the live policy and model versions, and the servers using it",
        description="Which Redis the commands use (the --redis-url, the primary Redis Sentinel names with "
        "--redis-mode sentinel, or the embedded Redis: its data dir and socket, and the nba serve that runs it), "
        "the live policy version (who published it, when, why), the "
        "live model version, and the nba serve processes using that Redis, from their heartbeats.",
    )
    status.add_argument("--json", metavar="FILE", help="also write the status as JSON here ('-': print only the JSON)")
    state_options(status)
    status.set_defaults(func=cmd_status)
