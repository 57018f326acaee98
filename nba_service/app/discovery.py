"""One state per machine: how every ``nba`` command finds the running server's embedded Redis.

A ``nba serve`` that runs an embedded Redis advertises it: a file ``servers/<pid>.json`` in the
*default* data directory (:func:`~nba_service.settings.default_data_dir`, whatever the server's own
``--data-dir``), naming its data directory, the Redis URL (a unix socket), its pid and start time. The
file is removed when the server stops; one left by a server that died (its pid gone, or reused by
another process) is ignored and deleted, and one whose Redis does not answer is ignored.

:func:`resolve` applies the advertisements to a command's settings (``nba serve`` included):

- ``--redis-url`` / ``NBA_REDIS_URL`` given, or a ``--redis-mode`` other than ``standalone`` (Sentinel): that
  Redis, nothing else is looked at;
- no ``--data-dir`` / ``NBA_DATA_DIR``: the data directory of the running server (the default one
  when a server runs there, or when none runs);
- a data directory given that no running server uses, while one runs with another:
  :class:`StateConflict`, naming both, instead of a second embedded Redis the server would never see;
- ``--isolated`` / ``NBA_ISOLATED``: the data directory as given, a deliberately separate state (such a
  server does not advertise itself either).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import Sequence

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nba_service import __version__
from nba_service.settings import Settings, SettingsError, default_data_dir
from nba_service.store.connect import RedisTarget, sync_client

__all__ = ["Advertisement", "StateConflict", "advertise", "live_servers", "resolve", "same_dir", "withdraw"]

log = logging.getLogger(__name__)

ADVERTISEMENTS = "servers"
"""The folder of the default data directory that holds the advertisements."""
PING_TIMEOUT_SECONDS = 1.0
"""How long an advertised Redis has to answer PING to count as live."""
START_TIME_SLACK_SECONDS = 1.0
"""An advertised pid whose process started more than this apart from the recorded time is another process."""


class StateConflict(SettingsError):
    """A command would start a second embedded Redis beside a running server's; the message says what to do."""


@dataclasses.dataclass(frozen=True, slots=True)
class Advertisement:
    """A running ``nba serve`` and its embedded Redis, as its advertisement file says."""

    data_dir: str
    redis_url: str
    pid: int
    started_at: float
    """When the server advertised itself (Unix seconds)."""
    process_started: float
    """The process's start time (psutil's ``create_time``), to tell a reused pid."""
    version: str
    """The nba release of the server."""
    path: pathlib.Path
    """The advertisement file."""

    def describe(self) -> str:
        return f"nba serve (pid {self.pid}) with its embedded Redis in {self.data_dir}"


def advertisement_dir() -> pathlib.Path:
    return pathlib.Path(default_data_dir()) / ADVERTISEMENTS


def advertise(data_dir: str | os.PathLike[str], redis_url: str) -> pathlib.Path | None:
    """Advertise this process's embedded Redis; the file's path (for :func:`withdraw`), None if it cannot be
    written (a read-only home: the server runs, and says that other commands will not find it)."""
    folder = advertisement_dir()
    path = folder / f"{os.getpid()}.json"
    record = {
        "data_dir": os.path.realpath(data_dir),
        "redis_url": redis_url,
        "pid": os.getpid(),
        "started_at": time.time(),
        "process_started": psutil.Process().create_time(),
        "version": __version__,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        tmp.replace(path)  # appears whole or not at all
    except OSError as exc:
        log.warning(
            "cannot advertise the embedded Redis in %s (%s): commands will find it only with --data-dir %s",
            folder,
            exc,
            data_dir,
        )
        return None
    log.info("embedded Redis in %s advertised in %s", data_dir, path)
    return path


def withdraw(path: pathlib.Path | None) -> None:
    """Remove an advertisement written by :func:`advertise` (None: nothing was written)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _read(path: pathlib.Path) -> Advertisement | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return Advertisement(
            data_dir=str(record["data_dir"]),
            redis_url=str(record["redis_url"]),
            pid=int(record["pid"]),
            started_at=float(record["started_at"]),
            process_started=float(record["process_started"]),
            version=str(record.get("version", "")),
            path=path,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _process_alive(advert: Advertisement) -> bool:
    """The advertised pid runs, and is the process that wrote the file (not a later one given the same pid)."""
    try:
        process = psutil.Process(advert.pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and abs(process.create_time() - advert.process_started) <= START_TIME_SLACK_SECONDS
        )
    except psutil.Error:
        return False


def redis_answers(url: str, timeout: float = PING_TIMEOUT_SECONDS) -> bool:
    """Whether the Redis at ``url`` answers PING (one try, no retry)."""
    client = sync_client(
        RedisTarget(url=url), socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.BusyLoadingError:
        return True  # alive, still loading its data
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
    return True


def live_servers() -> list[Advertisement]:
    """The advertised servers that run and whose Redis answers, oldest first.

    An advertisement whose process is gone is deleted; one whose Redis does not answer is only skipped
    (the server may be starting or stopping).
    """
    folder = advertisement_dir()
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    live = []
    for path in paths:
        advert = _read(path)
        if advert is None:
            continue
        if not _process_alive(advert):
            log.info("ignoring (and removing) the stale advertisement %s: pid %d is gone", path, advert.pid)
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if not redis_answers(advert.redis_url):
            log.info("ignoring the advertisement %s: its Redis %s does not answer", path, advert.redis_url)
            continue
        live.append(advert)
    return sorted(live, key=lambda a: a.started_at)


def same_dir(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def resolve(settings: Settings, *, explicit_data_dir: bool, servers: Sequence[Advertisement] | None = None) -> Settings:
    """``settings`` with the data directory a command should use (see the module's doc).

    ``explicit_data_dir``: whether ``--data-dir`` or ``NBA_DATA_DIR`` was given; ``servers``: the live
    advertisements (default :func:`live_servers`). :class:`StateConflict` when the command would start a
    second embedded Redis beside a running server's, or cannot tell which of several to use.
    """
    if not settings.uses_embedded_redis or settings.isolated:
        return settings
    servers = live_servers() if servers is None else servers
    if not servers or any(same_dir(s.data_dir, settings.data_dir) for s in servers):
        return settings
    mine = os.path.realpath(settings.data_dir)
    dirs = sorted({s.data_dir for s in servers})
    running = "; ".join(s.describe() for s in servers)
    if explicit_data_dir:
        uses = " or ".join(f"--data-dir {d}" for d in dirs)
        raise StateConflict(
            f"{running} {'is' if len(servers) == 1 else 'are'} running; this command would start a second "
            f"embedded Redis in {mine}, which that server never sees.\n"
            f"  to use the server's state: leave out --data-dir (and NBA_DATA_DIR), or give {uses}, "
            f"or --redis-url {servers[0].redis_url}\n"
            f"  to use {mine} anyway: stop that server, or give --isolated (NBA_ISOLATED=1)"
        )
    if len(dirs) > 1:
        raise StateConflict(
            f"nba servers run with embedded Redis in different data dirs ({running}): give --data-dir (or "
            "--redis-url) to say which state this command uses"
        )
    log.info("using the state of %s", servers[0].describe())
    return dataclasses.replace(settings, data_dir=dirs[0])
