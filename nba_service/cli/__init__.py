"""The ``nba`` command: serve, demo, policy ..., customers ...

Every command that touches state takes ``--redis-url`` (or ``NBA_REDIS_URL``), and
``--redis-mode sentinel`` with ``--redis-sentinels`` and ``--redis-master-name`` for the
primary Redis Sentinel names (:mod:`nba_service.store.connect`); without either it
uses the embedded Redis in ``--data-dir`` (``NBA_DATA_DIR``), joining the running one
if ``nba serve`` started it. Without ``--data-dir`` it
uses the running server's (which the server advertises), and it refuses to
start a second embedded Redis beside a running server's
(:mod:`nba_service.app.discovery`); ``nba status`` says which state is used.

Each command group lives in its own module with a ``register(subparsers)``
function; :data:`COMMANDS` lists them in the order ``nba --help`` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

import redis

from nba_service import __version__
from nba_service.cli._common import settings_from
from nba_service.settings import SettingsError
from nba_service.store.migrate import MigrationError

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = (
    "serve",
    "status",
    "demo",
    "console",
    "policy",
    "customers",
    "campaign",
    "scheduler",
    "models",
    "history",
    "store",
    "events",
    "explain",
    "evaluate",
    "simulate",
    "bench",
    "chaos",
    "auth",
)
"""Modules of :mod:`nba_service.cli` that each register a command (group)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nba", description="Real-time next-best-action decision service.")
    parser.add_argument("--version", action="version", version=f"nba {__version__}")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (env NBA_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"nba_service.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        level = args.log_level or os.environ.get("NBA_LOG_LEVEL") or ("INFO" if args.command == "serve" else "WARNING")
        settings_from(args, discover=False)  # the settings are valid; which Redis, the command finds
    except SettingsError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"nba: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"nba: Redis: {exc}", file=sys.stderr)
        return 3
    except MigrationError as exc:  # an older key layout this command cannot bring up to date
        print(f"nba: {exc}", file=sys.stderr)
        return 1
