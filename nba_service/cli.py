"""The ``nba`` command: serve, demo, policy ..., customers ...

Every command that touches state takes ``--redis-url`` (or ``NBA_REDIS_URL``);
without one it uses the embedded Redis in ``--data-dir`` (``NBA_DATA_DIR``),
joining the running one if ``nba serve`` started it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence

import redis

from nba_service import __version__
from nba_service.policies.schema import PolicyValidationError, load_policy_dir
from nba_service.settings import Settings, SettingsError
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.policy_store import PolicyStore

__all__ = ["main"]

log = logging.getLogger("nba")


def _state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis to use (env NBA_REDIS_URL); default: the embedded Redis")
    parser.add_argument("--data-dir", help="where the embedded Redis lives (env NBA_DATA_DIR)")


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides = {name: getattr(args, name, None) for name in ("redis_url", "data_dir", "log_level")}
    overrides.update(extra)
    return Settings.from_env(**overrides)


@contextlib.contextmanager
def state_client(settings: Settings) -> Iterator[redis.Redis]:
    """A Redis client for a command: the configured URL, or the embedded Redis."""
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            client.ping()
            yield client
        finally:
            client.close()
        return
    with EmbeddedRedis(settings.data_dir) as embedded:
        client = redis.Redis.from_url(embedded.url)
        try:
            yield client
        finally:
            client.close()


# --- serve ----------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from nba_service.api.server import run

    settings = _settings(args, host=args.host, port=args.port, metrics_host=args.metrics_host,
                         metrics_port=args.metrics_port, policies=args.policies, epsilon=args.epsilon, seed=args.seed)

    def ready(server: object) -> None:
        if args.ready_file:
            info = {"port": server.port, "metrics_port": server.metrics_port,  # type: ignore[attr-defined]
                    "redis_url": server.redis_url}  # type: ignore[attr-defined]
            path = pathlib.Path(args.ready_file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(path)  # appears whole or not at all

    try:
        run(settings, ready)
    except PolicyValidationError as exc:
        print(f"nba serve: the policy set in {settings.policies} is invalid, nothing published:\n{exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"nba serve: {exc}", file=sys.stderr)
        return 1
    return 0


# --- policy ---------------------------------------------------------------------------

def cmd_policy_validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_dir(args.directory)
    except PolicyValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.directory}: valid ({len(policy.offers)} offers, {len(policy.channels)} channels, "
          f"{len(policy.files)} files)")
    return 0


def cmd_policy_publish(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_dir(args.directory)
    except PolicyValidationError as exc:
        print(f"{exc}\nnothing was published; the live policy is unchanged", file=sys.stderr)
        return 1
    with state_client(_settings(args)) as client:
        version = PolicyStore(client).publish(policy.files, author=args.author or "", message=args.message or "")
    print(f"published {args.directory} as policy version {version} "
          f"({len(policy.offers)} offers, {len(policy.channels)} channels)")
    return 0


def cmd_policy_history(args: argparse.Namespace) -> int:
    with state_client(_settings(args)) as client:
        store = PolicyStore(client)
        live = store.live()
        history = store.history()
    if not history:
        print("no policy version has been published")
        return 0
    print(f"{'':2}{'version':>7}  {'published (UTC)':19}  {'author':12}  message")
    for p in history:
        when = datetime.datetime.fromtimestamp(p.published_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{'*' if p.version == live else ' ':2}{p.version:>7}  {when:19}  {p.author[:12]:12}  {p.message}")
    return 0


def cmd_policy_rollback(args: argparse.Namespace) -> int:
    with state_client(_settings(args)) as client:
        store = PolicyStore(client)
        try:
            version = store.rollback(args.version)
        except KeyError as exc:
            print(f"nba policy rollback: {exc.args[0]}", file=sys.stderr)
            return 1
    print(f"policy version {version} is live again")
    return 0


# --- customers ------------------------------------------------------------------------

def cmd_customers_load(args: argparse.Namespace) -> int:
    from nba_service.store.customer_import import import_customers

    path = pathlib.Path(args.file)
    if not path.is_file():
        print(f"nba customers load: {path}: no such file", file=sys.stderr)
        return 1
    with state_client(_settings(args)) as client:
        report = import_customers(client, path, progress=sys.stderr.isatty())
    print(f"{path}: {report.loaded} rows loaded ({report.created} new customers), {len(report.refused)} refused")
    for number, reason in report.refused[:50]:
        print(f"  line {number}: {reason}")
    if len(report.refused) > 50:
        print(f"  ... and {len(report.refused) - 50} more")
    return 0 if not report.refused else 2


# --- demo -----------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from nba_service.demo import run_demo

    return run_demo(duration=args.duration, concurrency=args.concurrency, seed=args.seed,
                    policies=args.policies, customers=args.customers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nba", description="Real-time next-best-action decision service.")
    parser.add_argument("--version", action="version", version=f"nba {__version__}")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env NBA_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC decision service")
    serve.add_argument("--host", help="gRPC address (env NBA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (env NBA_PORT, default 50051; 0 picks one)")
    serve.add_argument("--metrics-host", help="metrics address (env NBA_METRICS_HOST, default 127.0.0.1)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (env NBA_METRICS_PORT, default 9464; -1: off)")
    serve.add_argument("--policies", help="publish this policy directory at start-up if it differs from the live one")
    serve.add_argument("--epsilon", type=float, help="exploration rate (env NBA_EPSILON, default 0.05)")
    serve.add_argument("--seed", type=int, help="seed of the exploration random generator (env NBA_SEED)")
    serve.add_argument("--ready-file", help="write {port, metrics_port, redis_url} as JSON here once serving")
    _state_options(serve)
    serve.set_defaults(func=cmd_serve)

    policy = sub.add_parser("policy", help="validate, publish and roll back policy sets")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    validate = policy_sub.add_parser("validate", help="check a policy directory; exit 1 on any problem")
    validate.add_argument("directory")
    validate.set_defaults(func=cmd_policy_validate)
    publish = policy_sub.add_parser("publish", help="validate and publish a policy directory as a new version")
    publish.add_argument("directory")
    publish.add_argument("--message", "-m", help="what changed and why")
    publish.add_argument("--author", help="who publishes (default: the login name)")
    _state_options(publish)
    publish.set_defaults(func=cmd_policy_publish)
    history = policy_sub.add_parser("history", help="list published versions (* = live)")
    _state_options(history)
    history.set_defaults(func=cmd_policy_history)
    rollback = policy_sub.add_parser("rollback", help="make an earlier version live again")
    rollback.add_argument("version", nargs="?", type=int, help="default: the version before the live one")
    _state_options(rollback)
    rollback.set_defaults(func=cmd_policy_rollback)

    customers = sub.add_parser("customers", help="manage customer profiles")
    customers_sub = customers.add_subparsers(dest="customers_command", required=True, metavar="ACTION")
    load = customers_sub.add_parser("load", help="bulk-load profiles from a JSON-lines or CSV export")
    load.add_argument("file")
    _state_options(load)
    load.set_defaults(func=cmd_customers_load)

    demo = sub.add_parser("demo", help="run everything on an embedded Redis with simulated traffic")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of simulated traffic (default 30)")
    demo.add_argument("--concurrency", type=int, default=8, help="simulated channel backends at once (default 8)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulation (default 7)")
    demo.add_argument("--policies", default="policies", help="policy directory (default policies/)")
    demo.add_argument("--customers", default="policies/customers.jsonl", help="customer profiles to load")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        level = args.log_level or os.environ.get("NBA_LOG_LEVEL") or ("INFO" if args.command == "serve" else "WARNING")
        _settings(args)
    except SettingsError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"nba: Redis: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
