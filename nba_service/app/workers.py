"""``nba serve --workers N``: N server processes sharing one port.

Python serves one request at a time per process; to use every core, the
supervisor starts N ``nba serve`` processes bound to the same port with
SO_REUSEPORT (the kernel spreads connections across them). Each worker keeps
its own policy and model snapshot, all state stays in Redis, and the embedded
learner runs in whichever worker holds the learner lock. The supervisor owns
the embedded Redis (when no URL is given) and serves the workers' metrics,
aggregated with prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from nba_service.app import discovery
from nba_service.app.server import check_exposure, publish_if_changed, start_metrics_http
from nba_service.settings import Settings
from nba_service.store import connect
from nba_service.store.connect import RedisTarget
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.migrate import ensure_layout

__all__ = ["WorkerInfo", "run_workers"]

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    port: int
    metrics_port: int
    redis_url: str
    pids: tuple[int, ...]


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _worker_env(settings: Settings, index: int, redis_url: str, multiproc_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    for field in dataclasses.fields(Settings):
        value = getattr(settings, field.name)
        if value is not None:
            env["NBA_" + field.name.upper()] = str(value)
    env.update(
        {
            "NBA_REDIS_URL": redis_url,
            "NBA_METRICS_PORT": "-1",
            "NBA_WORKERS": "1",
            "NBA_REUSE_PORT": "1",
            "NBA_POLICIES": "",
            "PROMETHEUS_MULTIPROC_DIR": multiproc_dir,
        }
    )
    if settings.seed is not None:
        env["NBA_SEED"] = str(settings.seed + index)  # each worker explores with its own stream
    return env


def run_workers(settings: Settings, ready: Callable[[WorkerInfo], None] | None = None) -> int:
    """Supervise ``settings.workers`` servers until SIGINT/SIGTERM or until one of them dies."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes: list[subprocess.Popen[bytes]] = []

    def forward_hup(*_: object) -> None:  # rotation: every worker re-reads its TLS and auth files
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, forward_hup)
    check_exposure(settings)
    embedded: EmbeddedRedis | None = None
    advertisement: pathlib.Path | None = None
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="nba-workers-"))
    metrics_http = None
    try:
        url = settings.redis_url
        if settings.uses_embedded_redis:
            embedded = EmbeddedRedis(settings.data_dir)
            url = embedded.start()
            if not settings.isolated:  # the supervisor advertises the Redis; each worker writes its heartbeat
                advertisement = discovery.advertise(settings.data_dir, url)
        client = connect.sync_client(RedisTarget.of(settings, url=url))
        try:
            ensure_layout(client)  # a Redis of the previous release: upgraded once, before the workers start
            if settings.policies:
                publish_if_changed(client, settings.policies)
        finally:
            client.close()
        port = settings.port or _free_port(settings.host)
        multiproc = workdir / "metrics"
        multiproc.mkdir()
        for index in range(settings.workers):
            env = _worker_env(dataclasses.replace(settings, port=port), index, url, str(multiproc))
            ready_file = workdir / f"worker-{index}.json"
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nba_service.cli", "serve", "--ready-file", str(ready_file)], env=env
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for index, process in enumerate(processes):
            ready_file = workdir / f"worker-{index}.json"
            while not ready_file.exists():
                if process.poll() is not None or time.monotonic() > deadline or stopping:
                    raise RuntimeError(f"worker {index} did not start (exit code {process.poll()})")
                time.sleep(0.05)  # polling a file the worker writes when it serves
        metrics_port = -1
        if settings.metrics_port >= 0:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(multiproc))
            metrics_http = start_metrics_http(settings, registry)
            metrics_port = metrics_http.server_port
        info = WorkerInfo(port, metrics_port, url, tuple(p.pid for p in processes))
        log.info("%d workers serving on %s:%d (pids %s)", len(processes), settings.host, port, info.pids)
        if ready is not None:
            ready(info)
        while not stopping:
            if any(p.poll() is not None for p in processes):
                log.error("a worker exited; stopping the others")
                return 1
            time.sleep(0.2)  # waiting for a signal or a worker's exit
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(settings.grace_seconds + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        discovery.withdraw(advertisement)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)
