"""What every ``nba`` command shares: settings, the Redis connection, version tables and ``--json`` files."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import redis

from nba_service.settings import Settings
from nba_service.store.embedded import EmbeddedRedis

__all__ = ["print_versions", "settings_from", "state_client", "state_options", "write_json"]


def state_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis to use (env NBA_REDIS_URL); default: the embedded Redis")
    parser.add_argument("--data-dir", help="where the embedded Redis lives (env NBA_DATA_DIR)")


def settings_from(args: argparse.Namespace, **extra: object) -> Settings:
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


def print_versions(live: int | None, columns: tuple[str, str], rows: list[tuple[int, float, str, str]]) -> None:
    """A version history: (version, published at, a short column, a long one) a row, * = live."""
    short, long = columns
    print(f"{'':2}{'version':>7}  {'published (UTC)':19}  {short:12}  {long}")
    for version, published_at, third, last in rows:
        when = datetime.datetime.fromtimestamp(published_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{'*' if version == live else ' ':2}{version:>7}  {when:19}  {third[:12]:12}  {last}")


def write_json(path: str | None, data: Any) -> None:
    """Write a command's figures for scripts (``--json FILE``), indented, when a path was given."""
    if path:
        pathlib.Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
