"""The servers of a run, each a process of its own: ``nba serve``, the echo server and
(for the main run) the echo that also makes a decision's two Redis script calls.

Both are started with ``--port 0`` and a ready file, and always stopped by
PID: SIGTERM, then a wait, then SIGKILL only if they do not stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import redis

from nba_service.domain.enums import RedisMode
from nba_service.store.connect import RedisTarget, sync_client
from nba_service.tools.bench.config import BenchError, Progress

__all__ = ["ServerProcess", "Servers", "spawn", "start_servers", "stop", "stop_orphan", "wait_ready"]

READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0


@dataclasses.dataclass
class ServerProcess:
    """A server started by the bench; ``info`` is what its ready file said (port, ...)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _child_env() -> dict[str, str]:
    """The bench's environment, but never another Redis, another address or a learner; its embedded Redis is
    a state of its own, not advertised to other commands (``NBA_ISOLATED``)."""
    env = dict(os.environ)
    env.update({"NBA_LEARNER": "off", "NBA_REDIS_URL": "", "NBA_REDIS_MODE": "", "NBA_REDIS_SENTINELS": ""})
    env.update({"NBA_HOST": "127.0.0.1", "NBA_METRICS_HOST": "127.0.0.1"})
    env["NBA_ISOLATED"] = "1"
    return env


def spawn(name: str, args: list[str], work: pathlib.Path) -> ServerProcess:
    log = work / f"{name}.log"
    with log.open("wb") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=log_file, stderr=subprocess.STDOUT, env=_child_env()
        )
    return ServerProcess(name, popen, log)


def wait_ready(process: ServerProcess, ready: pathlib.Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if ready.exists():
            process.info = json.loads(ready.read_text())
            return process.info
        if process.popen.poll() is not None:
            raise BenchError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log.read_text()}")
        time.sleep(0.05)  # polling a file the server writes once it serves
    raise BenchError(f"{process.name} was not ready after {READY_TIMEOUT_SECONDS:.0f} s:\n{process.log.read_text()}")


def stop(processes: list[ServerProcess]) -> None:
    """SIGTERM to each, then wait for each; SIGKILL only for one that does not stop in time."""
    running = [p.popen for p in processes if p.popen.poll() is None]
    for popen in running:
        popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for popen in running:
        try:
            popen.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def stop_orphan(pid: int | None) -> None:
    """The embedded Redis the server started, if the server did not stop it."""
    if not pid:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        orphan = psutil.Process(pid)
        if "redis" not in orphan.name():
            return
        orphan.terminate()
        try:
            orphan.wait(STOP_TIMEOUT_SECONDS)
        except psutil.TimeoutExpired:
            orphan.kill()


@dataclasses.dataclass
class Servers:
    """The two servers of a run and the Redis client of the bench itself."""

    echo: ServerProcess
    nba: ServerProcess
    client: redis.Redis
    redis_pid: int
    echo_redis: ServerProcess | None = None
    """The echo with two empty script calls per call to nba serve's Redis, when asked for."""

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.nba.info['metrics_port']}/metrics"


@contextlib.contextmanager
def start_servers(
    work: pathlib.Path,
    policies: pathlib.Path,
    seed: int,
    progress: Progress,
    workers: int = 1,
    echo_redis: bool = False,
    redis_url: str | None = None,
    redis_mode: str = "standalone",
) -> Iterator[Servers]:
    """The echo server and ``nba serve`` (its embedded Redis in ``work``, ``policies`` published,
    learner off, ``workers`` processes), and with ``echo_redis`` the echo that makes two empty
    script calls to that Redis per call; all ready, and stopped, with that Redis, on the way out.

    With ``redis_url`` (and ``redis_mode``, e.g. ``cluster`` for a node of a local Redis Cluster), nba serve
    uses that Redis instead of an embedded one: the caller's, neither emptied nor stopped here
    (``Servers.redis_pid`` is then 0 and ``Servers.client`` a client of that mode)."""
    own_redis = redis_url is None
    where = "embedded Redis" if own_redis else f"Redis {redis_mode} at {redis_url}"
    progress(f"starting nba serve ({where}, learner off) and the echo server ...")
    started: list[ServerProcess] = []
    client: redis.Redis | None = None
    redis_pid: int | None = None
    try:
        echo = spawn(
            "echo", ["nba_service.tools.bench", "echo", "--port", "0", "--ready-file", str(work / "echo.json")], work
        )
        started.append(echo)
        nba = spawn(
            "nba-serve",
            [
                "nba_service.cli",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--data-dir",
                str(work / "data"),
                "--policies",
                str(policies),
                "--ready-file",
                str(work / "ready.json"),
                "--seed",
                str(seed),
                "--learner",
                "off",
                *(["--workers", str(workers)] if workers > 1 else []),
                *([] if own_redis else ["--redis-url", str(redis_url), "--redis-mode", redis_mode]),
            ],
            work,
        )
        started.append(nba)
        wait_ready(echo, work / "echo.json")
        info = wait_ready(nba, work / "ready.json")
        if own_redis:
            client = sync_client(RedisTarget(url=str(info["redis_url"])))
            redis_pid = int(client.info("server")["process_id"])
        else:
            client = sync_client(RedisTarget(url=str(redis_url), mode=RedisMode(redis_mode)))
            redis_pid = 0
        floor = None
        if echo_redis:
            floor = spawn(
                "echo-redis",
                [
                    "nba_service.tools.bench",
                    "echo",
                    "--port",
                    "0",
                    "--ready-file",
                    str(work / "echo-redis.json"),
                    "--redis-url",
                    str(info["redis_url"]),
                ],
                work,
            )
            started.append(floor)
            wait_ready(floor, work / "echo-redis.json")
        yield Servers(echo, nba, client, redis_pid, floor)
    finally:
        if client is not None:
            if own_redis:
                # Nothing of this private Redis is kept: emptying it spares the save on shutdown.
                with contextlib.suppress(redis.RedisError):
                    client.flushall(asynchronous=True)
            client.close()  # before the server stops: it leaves a Redis with other clients running
        stop(started)
        stop_orphan(redis_pid)
        progress("stopped " + ", ".join(f"{p.name} (pid {p.popen.pid})" for p in started))
