"""``nba bench``: what a decision costs next to an empty gRPC call, on this machine, in one run.

Starts two servers as processes of their own:

- the real one, ``nba serve`` with its embedded Redis, a policy set, customer
  profiles and journeys loaded;
- an echo server built the same way (grpc.aio, the same server options, the
  same metrics interceptor, health and reflection) whose ``Decide`` answers
  at once: this module run as ``python -m nba_service.bench echo``.

Both are driven by the same grpc.aio client with the same requests: sequential
latency (one call at a time), then a ladder of calls in flight for the highest
throughput of each and its p99. The report adds the ratios Decide / Echo, the
server's own decision histogram, and the CPU time per decision of the server
process and of its Redis.

Sweeps repeat the sequential measure for several candidate-offer counts (the
cost of one more offer) or customer counts (latency and server memory should be
flat; Redis bytes per customer). Every process started is stopped in the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import psutil
import redis
import yaml

from nba_service.api.converters import event_from_proto
from nba_service.observability import scrape
from nba_service.policies.schema import load_policy_dir, read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.simulation import ScenarioMix, generate_customers
from nba_service.store import codec, keys
from nba_service.store.customer_import import import_customers
from nba_service.store.policy_store import PolicyStore
from nba_service.store.state import JOURNEY_TTL_SECONDS

__all__ = ["BenchConfig", "BenchError", "format_report", "format_sweep", "run_bench", "run_sweep", "serve_echo",
           "write_offer_policies"]

READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 10.0
POLICY_LIVE_TIMEOUT_SECONDS = 30.0
REQUEST_POOL = 4096
"""Distinct requests drawn once and sent in turn, the same to both servers."""
MAX_CALLS_PER_STEP = 500_000
POPULATION_CHUNK = 100_000
JOURNEY_WINDOW_SECONDS = 30 * 86400
DECISION_HISTOGRAM = "nba_decision_duration_seconds"
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)
"""The options ``NbaServer.start`` gives ``grpc.aio.server`` for one worker."""

Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """The benchmark could not run (a server did not start, every call failed, ...)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BenchConfig:
    """What one run measures; :meth:`quick` is the under-a-minute version."""

    customers: int = 100_000
    """Customer profiles loaded into Redis."""
    offers: int | None = None
    """Candidate offers per request: a generated policy set where every offer answers
    ``atm_decline`` and is eligible. None: the policy directory and the scenario mix."""
    policies: str = "policies"
    """The policy directory served (and whose channels generated sets use)."""
    sequential: int = 2000
    """Calls measured one at a time, after the warm-up."""
    warmup: int = 300
    """Calls sent to each server before anything is measured."""
    seconds: float = 3.0
    """Length of each step of the throughput ladder."""
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    """The throughput ladder: calls in flight at each step."""
    journey_share: float = 0.2
    """Share of customers given a journey of 3 to 10 past events."""
    seed: int = 1

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        values: dict[str, Any] = {"customers": 20_000, "sequential": 500, "warmup": 200, "seconds": 1.0}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def describe_policy(self) -> str:
        if self.offers is None:
            return f"{self.policies}/ with the scenario mix (ATM, app, web, agent moments)"
        return f"{self.offers} generated offers, every one eligible for each atm_decline request"


# --- the echo server ------------------------------------------------------------------

class EchoServicer(pb_grpc.DecisionServiceServicer):
    """``Decide`` answers at once with a response built from the request: the floor of any call."""

    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        return pb.DecideResponse(request_id=request.request_id, no_action=True)


async def serve_echo(host: str, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Serve the echo until SIGINT or SIGTERM, built like ``NbaServer``: same options, interceptor,
    health and reflection."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    from prometheus_client import CollectorRegistry

    from nba_service.api.server import SERVICE_NAME, MetricsInterceptor
    from nba_service.observability.metrics import Metrics

    server = grpc.aio.server(interceptors=[MetricsInterceptor(Metrics(CollectorRegistry()))],
                             options=list(SERVER_OPTIONS))
    pb_grpc.add_DecisionServiceServicer_to_server(EchoServicer(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    if ready is not None:
        ready(bound)
    await stopping.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nba_service.bench echo --port 0 --ready-file F``: the echo server alone."""
    parser = argparse.ArgumentParser(prog="python -m nba_service.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="serve nba.v1.DecisionService/Decide as an echo")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=0)
    echo.add_argument("--ready-file", help="write {port, pid} as JSON here once serving")
    args = parser.parse_args(argv)

    def ready(port: int) -> None:
        if args.ready_file:
            _write_atomically(pathlib.Path(args.ready_file), json.dumps({"port": port, "pid": os.getpid()}))

    asyncio.run(serve_echo(args.host, args.port, ready))
    return 0


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # appears whole or not at all


# --- processes ------------------------------------------------------------------------

@dataclasses.dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"NBA_LEARNER": "off", "NBA_REDIS_URL": "", "NBA_HOST": "127.0.0.1", "NBA_METRICS_HOST": "127.0.0.1"})
    return env


def _spawn(name: str, args: list[str], work: pathlib.Path) -> _Process:
    log = work / f"{name}.log"
    with log.open("wb") as log_file:
        popen = subprocess.Popen([sys.executable, "-m", *args], stdout=log_file, stderr=subprocess.STDOUT,
                                 env=_child_env(), cwd=work)
    return _Process(name, popen, log)


def _wait_ready(process: _Process, ready: pathlib.Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if ready.exists():
            process.info = json.loads(ready.read_text())
            return process.info
        if process.popen.poll() is not None:
            raise BenchError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log.read_text()}")
        time.sleep(0.05)  # polling a file the server writes once it serves
    raise BenchError(f"{process.name} was not ready after {READY_TIMEOUT_SECONDS:.0f} s:\n{process.log.read_text()}")


def _stop(process: _Process) -> None:
    """SIGTERM, wait, and SIGKILL only if it does not stop in time."""
    popen = process.popen
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def _stop_orphan(pid: int | None) -> None:
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
class _Servers:
    """The two servers of a run and the Redis client of the bench itself."""

    echo: _Process
    nba: _Process
    client: redis.Redis
    redis_pid: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.nba.info['metrics_port']}/metrics"


@contextlib.contextmanager
def _servers(work: pathlib.Path, policies: pathlib.Path, seed: int, progress: Progress) -> Iterator[_Servers]:
    progress("starting nba serve (embedded Redis, learner off) and the echo server ...")
    started: list[_Process] = []
    client: redis.Redis | None = None
    redis_pid: int | None = None
    try:
        echo = _spawn("echo", ["nba_service.bench", "echo", "--port", "0", "--ready-file", str(work / "echo.json")],
                      work)
        started.append(echo)
        nba = _spawn("nba-serve", ["nba_service.cli", "serve", "--port", "0", "--metrics-port", "0",
                                   "--data-dir", str(work / "data"), "--policies", str(policies),
                                   "--ready-file", str(work / "ready.json"), "--seed", str(seed)], work)
        started.append(nba)
        _wait_ready(echo, work / "echo.json")
        info = _wait_ready(nba, work / "ready.json")
        client = redis.Redis.from_url(str(info["redis_url"]))
        redis_pid = int(client.info("server")["process_id"])
        yield _Servers(echo, nba, client, redis_pid)
    finally:
        if client is not None:
            # Nothing of this private Redis is kept: emptying it spares the save on shutdown.
            with contextlib.suppress(redis.RedisError):
                client.flushall(asynchronous=True)
            client.close()  # before the server stops: it leaves a Redis with other clients running
        for process in reversed(started):
            _stop(process)
        _stop_orphan(redis_pid)
        progress("stopped " + ", ".join(f"{p.name} (pid {p.popen.pid})" for p in started))


# --- workload -------------------------------------------------------------------------

def customer_id(index: int) -> str:
    """The id :func:`load_customers` gives the customer at ``index`` of the population."""
    return f"c{index // POPULATION_CHUNK:02d}{index % POPULATION_CHUNK:06d}"


def load_customers(client: redis.Redis, work: pathlib.Path, start: int, stop: int, seed: int) -> int:
    """Write customers ``start`` to ``stop`` as CRM exports and import them (pipelined)."""
    loaded = 0
    for chunk in range(start // POPULATION_CHUNK, (stop - 1) // POPULATION_CHUNK + 1):
        first = chunk * POPULATION_CHUNK
        low, high = max(start, first) - first, min(stop, first + POPULATION_CHUNK) - first
        records = generate_customers(high, seed + chunk, prefix=f"c{chunk:02d}")[low:high]
        path = work / f"customers-{chunk:02d}-{low}.jsonl"
        with path.open("w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        report = import_customers(client, path, batch_size=2000, progress=False)
        path.unlink()
        if report.refused:
            raise BenchError(f"{len(report.refused)} generated profiles refused, first: {report.refused[0]}")
        loaded += report.loaded
    return loaded


def write_journeys(client: redis.Redis, start: int, stop: int, share: float, seed: int) -> tuple[int, int]:
    """Give a ``share`` of customers ``start``..``stop`` 3 to 10 past events of the scenario mix,
    written as the decision path writes them; returns (customers, events)."""
    rng = random.Random(seed * 7919 + start)
    moments = ScenarioMix(["x"], seed=seed + start, unknown_share=0.0)
    now = time.time()
    customers = events = 0
    with client.pipeline(transaction=False) as pipe:
        for index in range(start, stop):
            if rng.random() >= share:
                continue
            cid = customer_id(index)
            journey, opened = keys.journey(cid), keys.open_journeys(cid)
            for ts in sorted(now - rng.uniform(0, JOURNEY_WINDOW_SECONDS) for _ in range(rng.randint(3, 10))):
                request = moments.next().request
                event = event_from_proto(request.event, True)
                fields = {**event.fields, **({"attributes": dict(event.attributes)} if event.attributes else {})}
                pipe.lpush(journey, codec.encode_journey(ts, event.type, request.origin_channel, fields))
                if event.type == "cart_abandon":
                    pipe.hset(opened, f"cart:{event.fields['cart_id']}", codec.encode_open_journey(ts, fields))
                    pipe.expire(opened, JOURNEY_TTL_SECONDS)
                elif event.type == "custom" and event.fields.get("name") == "purchase":
                    pipe.delete(opened)
                events += 1
            pipe.expire(journey, JOURNEY_TTL_SECONDS)
            customers += 1
            if customers % 1000 == 0:
                pipe.execute()
        pipe.execute()
    return customers, events


def decide_requests(population: int, count: int, seed: int, atm_only: bool) -> list[pb.DecideRequest]:
    """``count`` requests of the scenario mix over a skewed population (only ATM declines if ``atm_only``)."""
    mix = ScenarioMix([customer_id(i) for i in range(population)], seed=seed)
    requests: list[pb.DecideRequest] = []
    for _ in range(count * 50):  # ATM declines are about a fifth of the mix
        moment = mix.next()
        if not atm_only or moment.scenario == "atm_decline":
            requests.append(moment.request)
            if len(requests) == count:
                break
    return requests


def write_offer_policies(folder: str | os.PathLike[str], offers: int, channels_from: str | os.PathLike[str],
                         seed: int = 1) -> pathlib.Path:
    """A policy set of ``offers`` offers that all answer ``atm_decline`` and are always eligible,
    over the channels of ``channels_from``; validated.

    Each offer may use the ATM screen (open for every decline) and two more
    channels in turn; no contact limits, so none is ever capped.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    channels = [c for text in read_policy_dir(channels_from).values()
                for c in (yaml.safe_load(text) or {}).get("channels", [])]
    ids = [c["id"] for c in channels]
    rng = random.Random(seed)
    specs = []
    for i in range(offers):
        own = [ids[(i + k) % len(ids)] for k in range(2)]
        if "atm_screen" in ids and "atm_screen" not in own:
            own.append("atm_screen")
        specs.append({
            "id": f"bench_offer_{i:04d}", "name": f"Bench offer {i}", "category": f"bench_{i % 8}",
            "events": ["atm_decline"], "value": round(rng.uniform(1, 50), 2), "prior": round(rng.uniform(0.01, 0.3), 3),
            "channels": own, "content": {"default": f"{{first_name}}, offer {i}: {{amount}} {{currency}} sorted."},
        })
    (folder / "channels.yaml").write_text(yaml.safe_dump({"channels": channels}, sort_keys=False))
    (folder / "settings.yaml").write_text(yaml.safe_dump({"settings": {"no_action_threshold": 0.0}}))
    (folder / "offers.yaml").write_text(yaml.safe_dump({"offers": specs}, sort_keys=False, width=1000))
    policy = load_policy_dir(folder)
    if len(policy.offers) != offers:
        raise BenchError(f"generated {len(policy.offers)} offers instead of {offers}")
    return folder


# --- measuring ------------------------------------------------------------------------

Call = Callable[..., Any]


def _us(seconds: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(seconds), q) * 1e6) if len(seconds) else float("nan")


def _cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return 0.0


@dataclasses.dataclass
class _Target:
    """One server as the client sees it, and what to sample around a measure."""

    name: str
    port: int
    pid: int
    redis_pid: int | None = None
    metrics_url: str | None = None


@dataclasses.dataclass
class _Step:
    concurrency: int
    calls: int
    errors: dict[str, int]
    seconds: float
    p50_us: float
    p99_us: float
    rps: float
    cpu_us_per_call: float
    redis_cpu_us_per_call: float | None = None
    server_p50_us: float | None = None
    server_p99_us: float | None = None


class _Sampler:
    """Server CPU and the server's decision histogram, before and after a measure."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self._histogram = scrape.scrape_histogram(target.metrics_url, DECISION_HISTOGRAM) if target.metrics_url else None
        self._cpu = _cpu_seconds(target.pid)
        self._redis_cpu = _cpu_seconds(target.redis_pid)

    def finish(self, step: _Step) -> _Step:
        calls = max(step.calls, 1)
        step.cpu_us_per_call = (_cpu_seconds(self.target.pid) - self._cpu) / calls * 1e6
        if self.target.redis_pid:
            step.redis_cpu_us_per_call = (_cpu_seconds(self.target.redis_pid) - self._redis_cpu) / calls * 1e6
        if self.target.metrics_url:
            after = scrape.scrape_histogram(self.target.metrics_url, DECISION_HISTOGRAM)
            if after:
                buckets = scrape.subtract(after, self._histogram)
                p50, p99 = scrape.histogram_quantile(buckets, 0.5), scrape.histogram_quantile(buckets, 0.99)
                step.server_p50_us = None if p50 is None else p50 * 1e6
                step.server_p99_us = None if p99 is None else p99 * 1e6
        return step


async def _sequential(call: Call, requests: Sequence[pb.DecideRequest], count: int,
                      errors: collections.Counter[str]) -> list[float]:
    latencies: list[float] = []
    for i in range(count):
        request = requests[i % len(requests)]
        started = time.perf_counter()
        try:
            await call(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            continue
        latencies.append(time.perf_counter() - started)
    return latencies


async def _load(call: Call, requests: Sequence[pb.DecideRequest], concurrency: int, seconds: float,
                max_calls: int) -> tuple[list[float], collections.Counter[str], float]:
    """``concurrency`` calls in flight for ``seconds`` (at most ``max_calls``): latencies, errors, elapsed."""
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    sent = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal sent
        i = offset
        while sent < max_calls and time.perf_counter() < deadline:
            sent += 1
            request = requests[i % len(requests)]
            i += concurrency
            started = time.perf_counter()
            try:
                await call(request, timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def _measure_sequential(target: _Target, requests: Sequence[pb.DecideRequest], count: int,
                              warmup: int) -> tuple[_Step, int]:
    """Warm up, then ``count`` calls one at a time; also the size of one response."""
    errors: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        call = pb_grpc.DecisionServiceStub(channel).Decide
        response = await call(requests[0], timeout=CALL_TIMEOUT_SECONDS)
        await _sequential(call, requests[1:], warmup, collections.Counter())
        sampler = _Sampler(target)
        started = time.perf_counter()
        latencies = await _sequential(call, requests, count, errors)
        elapsed = time.perf_counter() - started
    if not latencies:
        raise BenchError(f"every sequential call to {target.name} failed: {dict(errors)}")
    step = _Step(1, len(latencies), dict(errors), elapsed, _us(latencies, 50), _us(latencies, 99),
                 len(latencies) / elapsed, 0.0)
    return sampler.finish(step), response.ByteSize()


async def _measure_ladder(target: _Target, requests: Sequence[pb.DecideRequest], config: BenchConfig,
                          progress: Progress) -> list[_Step]:
    steps = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}") as channel:
        call = pb_grpc.DecisionServiceStub(channel).Decide
        for concurrency in config.concurrency:
            await _load(call, requests, concurrency, min(0.3, config.seconds), MAX_CALLS_PER_STEP)  # ramp
            sampler = _Sampler(target)
            latencies, errors, elapsed = await _load(call, requests, concurrency, config.seconds, MAX_CALLS_PER_STEP)
            step = sampler.finish(_Step(concurrency, len(latencies), dict(errors), elapsed, _us(latencies, 50),
                                        _us(latencies, 99), len(latencies) / elapsed, 0.0))
            progress(f"  {target.name:6} {concurrency:>4} in flight: {step.rps:>8,.0f} calls/s, "
                     f"p99 {step.p99_us:,.0f} µs{', errors ' + str(step.errors) if step.errors else ''}")
            steps.append(step)
    return steps


# --- the run --------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "cpu": model,
            "python": platform.python_version(), "grpc": grpc.__version__, "platform": platform.platform(),
            "memory_bytes": psutil.virtual_memory().total}


def _policy_dir(config: BenchConfig, work: pathlib.Path, offers: int | None) -> pathlib.Path:
    if offers is None:
        return pathlib.Path(config.policies).resolve()
    return write_offer_policies(work / f"policies-{offers}", offers, config.policies, config.seed)


def _populate(servers: _Servers, work: pathlib.Path, config: BenchConfig, start: int, stop: int,
              progress: Progress) -> None:
    began = time.perf_counter()
    loaded = load_customers(servers.client, work, start, stop, config.seed)
    customers, events = write_journeys(servers.client, start, stop, config.journey_share, config.seed)
    progress(f"loaded {loaded:,} customer profiles and {events:,} journey events for {customers:,} of them "
             f"in {time.perf_counter() - began:.1f} s")


def _section(sequential: _Step, steps: list[_Step]) -> dict[str, Any]:
    best = max(steps, key=lambda s: s.rps)
    return {"p50_us": sequential.p50_us, "p99_us": sequential.p99_us, "max_rps": best.rps,
            "p99_at_max_us": best.p99_us, "concurrency_at_max": best.concurrency,
            "cpu_us_per_call": best.cpu_us_per_call, "errors": _merge_errors(sequential, *steps),
            "sequential": dataclasses.asdict(sequential), "ladder": [dataclasses.asdict(s) for s in steps]}


def _merge_errors(*steps: _Step) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for step in steps:
        total.update(step.errors)
    return dict(total)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def run_bench(config: BenchConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    """One full run: both servers, the workload, sequential and ladder measures; the results as a dict."""
    load_before = os.getloadavg()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nba-bench-") as folder:
        work = pathlib.Path(folder)
        policies = _policy_dir(config, work, config.offers)
        policy = load_policy_dir(policies)
        with _servers(work, policies, config.seed, progress) as servers:
            redis_empty = int(servers.client.info("memory")["used_memory"])
            _populate(servers, work, config, 0, config.customers, progress)
            redis_used = int(servers.client.info("memory")["used_memory"])
            requests = decide_requests(config.customers, REQUEST_POOL, config.seed, atm_only=config.offers is not None)
            echo = _Target("echo", int(servers.echo.info["port"]), int(servers.echo.info["pid"]))
            nba = _Target("decide", int(servers.nba.info["port"]), servers.nba.popen.pid, servers.redis_pid,
                          servers.metrics_url)
            progress(f"sequential: {config.warmup} warm-up then {config.sequential:,} calls to each server ...")
            echo_seq, echo_bytes = asyncio.run(_measure_sequential(echo, requests, config.sequential, config.warmup))
            nba_seq, nba_bytes = asyncio.run(_measure_sequential(nba, requests, config.sequential, config.warmup))
            progress(f"throughput: {', '.join(map(str, config.concurrency))} calls in flight, "
                     f"{config.seconds:g} s each ...")
            echo_steps = asyncio.run(_measure_ladder(echo, requests, config, progress))
            nba_steps = asyncio.run(_measure_ladder(nba, requests, config, progress))
            server_rss = psutil.Process(nba.pid).memory_info().rss
    decide = _section(nba_seq, nba_steps)
    best = max(nba_steps, key=lambda s: s.rps)
    decide.update({"server_p50_us": nba_seq.server_p50_us, "server_p99_us": nba_seq.server_p99_us,
                   "server_p50_at_max_us": best.server_p50_us, "server_p99_at_max_us": best.server_p99_us,
                   "redis_cpu_us_per_decision": best.redis_cpu_us_per_call, "response_bytes": nba_bytes})
    echo_section = _section(echo_seq, echo_steps)
    echo_section["response_bytes"] = echo_bytes
    return {
        "echo": echo_section,
        "decide": decide,
        "ratios": {"p50": _ratio(decide["p50_us"], echo_section["p50_us"]),
                   "p99": _ratio(decide["p99_us"], echo_section["p99_us"]),
                   "throughput": _ratio(decide["max_rps"], echo_section["max_rps"]),
                   "cpu_per_call": _ratio(decide["cpu_us_per_call"], echo_section["cpu_us_per_call"])},
        "server_p50_us": nba_seq.server_p50_us,
        "server_p99_us": nba_seq.server_p99_us,
        "cpu_us_per_decision": best.cpu_us_per_call,
        "redis_cpu_us_per_decision": best.redis_cpu_us_per_call,
        "redis_bytes_per_customer": redis_used / max(config.customers, 1),
        "redis_used_memory_bytes": redis_used,
        "redis_empty_memory_bytes": redis_empty,
        "server_rss_bytes": server_rss,
        "config": {**dataclasses.asdict(config), "policy_offers": len(policy.offers),
                   "policy_channels": len(policy.channels), "requests": "atm_decline" if config.offers else "mix"},
        "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "seconds": time.perf_counter() - began,
    }


def run_sweep(kind: str, values: Sequence[int], config: BenchConfig,
              progress: Progress = lambda _: None) -> dict[str, Any]:
    """Sequential latency for each number of offers (one server, each set published in turn) or of
    customers (loaded in increasing steps), next to the echo's."""
    if kind not in ("offers", "customers"):
        raise ValueError(f"sweep {kind!r}: offers or customers")
    values = sorted(set(values))
    load_before = os.getloadavg()
    began = time.perf_counter()
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nba-bench-") as folder:
        work = pathlib.Path(folder)
        offers = values[0] if kind == "offers" else config.offers
        with _servers(work, _policy_dir(config, work, offers), config.seed, progress) as servers:
            redis_empty = int(servers.client.info("memory")["used_memory"])
            echo = _Target("echo", int(servers.echo.info["port"]), int(servers.echo.info["pid"]))
            nba = _Target("decide", int(servers.nba.info["port"]), servers.nba.popen.pid, servers.redis_pid,
                          servers.metrics_url)
            loaded = 0
            if kind == "offers":
                _populate(servers, work, config, 0, config.customers, progress)
                loaded = config.customers
                requests = decide_requests(loaded, REQUEST_POOL, config.seed, atm_only=True)
            echo_seq = None
            for value in values:
                if kind == "offers":
                    if value != values[0]:
                        _publish(servers, _policy_dir(config, work, value), requests[0], value)
                else:
                    _populate(servers, work, config, loaded, value, progress)
                    loaded = value
                    requests = decide_requests(loaded, REQUEST_POOL, config.seed, atm_only=config.offers is not None)
                if echo_seq is None:
                    echo_seq, _ = asyncio.run(_measure_sequential(echo, requests, config.sequential, config.warmup))
                step, _ = asyncio.run(_measure_sequential(nba, requests, config.sequential, config.warmup))
                point = {kind: value, "p50_us": step.p50_us, "p99_us": step.p99_us,
                         "server_p50_us": step.server_p50_us, "server_p99_us": step.server_p99_us,
                         "cpu_us_per_call": step.cpu_us_per_call, "errors": step.errors}
                if kind == "customers":
                    used = int(servers.client.info("memory")["used_memory"])
                    point.update({"server_rss_bytes": psutil.Process(nba.pid).memory_info().rss,
                                  "redis_used_memory_bytes": used, "redis_bytes_per_customer": used / value,
                                  "redis_added_bytes_per_customer": (used - redis_empty) / value})
                progress(f"  {kind} {value:>9,}: Decide p50 {step.p50_us:,.0f} µs, p99 {step.p99_us:,.0f} µs"
                         f" (server p50 {step.server_p50_us or 0:,.0f} µs)")
                points.append(point)
    assert echo_seq is not None
    result: dict[str, Any] = {
        "sweep": kind, "points": points,
        "echo": {"p50_us": echo_seq.p50_us, "p99_us": echo_seq.p99_us},
        "config": dataclasses.asdict(config), "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "seconds": time.perf_counter() - began,
    }
    xs = np.array([p[kind] for p in points], dtype=float)
    if kind == "offers" and len(points) > 1:
        result["us_per_offer"] = float(np.polyfit(xs, [p["p50_us"] for p in points], 1)[0])
        if all(p["server_p50_us"] is not None for p in points):
            result["server_us_per_offer"] = float(np.polyfit(xs, [p["server_p50_us"] for p in points], 1)[0])
    if kind == "customers" and len(points) > 1:
        first, last = points[0], points[-1]
        result["p50_change"] = last["p50_us"] / first["p50_us"] - 1
        if first["server_p50_us"] and last["server_p50_us"]:
            result["server_p50_change"] = last["server_p50_us"] / first["server_p50_us"] - 1
        result["server_rss_change"] = last["server_rss_bytes"] / first["server_rss_bytes"] - 1
    return result


def _publish(servers: _Servers, policies: pathlib.Path, probe: pb.DecideRequest, offers: int) -> None:
    """Publish ``policies`` and wait until the server answers with it."""
    version = PolicyStore(servers.client).publish(load_policy_dir(policies).files, author="nba bench",
                                                  message=f"bench: {offers} offers")
    with grpc.insecure_channel(f"127.0.0.1:{servers.nba.info['port']}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        deadline = time.monotonic() + POLICY_LIVE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if stub.Decide(probe, timeout=CALL_TIMEOUT_SECONDS).policy_version == str(version):
                return
            time.sleep(0.05)  # the server picks the version up from pub/sub
    raise BenchError(f"policy version {version} ({offers} offers) not live after {POLICY_LIVE_TIMEOUT_SECONDS:.0f} s")


# --- reports --------------------------------------------------------------------------

def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def format_report(result: dict[str, Any]) -> str:
    echo, decide, ratios, config = result["echo"], result["decide"], result["ratios"], result["config"]
    m = result["machine"]
    policy = (f"{config['policies']}/ ({config['policy_offers']} offers, {config['policy_channels']} channels), "
              "scenario mix" if config["offers"] is None else
              f"{config['policy_offers']} generated offers, all eligible for each ATM decline")
    lines = [
        f"nba bench: {config['customers']:,} customers; {policy}",
        f"{config['sequential']:,} sequential calls; throughput ladder "
        f"{', '.join(map(str, config['concurrency']))} calls in flight x {config['seconds']:g} s",
        f"machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, grpcio {m['grpc']}; "
        f"load average {result['load_average']['before'][0]:.2f} before, {result['load_average']['after'][0]:.2f} after",
        "",
        f"{'':34}{'Echo':>10}{'Decide':>10}{'Decide/Echo':>13}",
        f"{'sequential p50 (µs)':34}{_n(echo['p50_us']):>10}{_n(decide['p50_us']):>10}{_n(ratios['p50'], 2):>13}",
        f"{'sequential p99 (µs)':34}{_n(echo['p99_us']):>10}{_n(decide['p99_us']):>10}{_n(ratios['p99'], 2):>13}",
        f"{'max throughput (calls/s)':34}{_n(echo['max_rps']):>10}{_n(decide['max_rps']):>10}"
        f"{_n(ratios['throughput'], 2):>13}",
        f"{'  p99 at that load (µs)':34}{_n(echo['p99_at_max_us']):>10}{_n(decide['p99_at_max_us']):>10}",
        f"{'  calls in flight':34}{echo['concurrency_at_max']:>10}{decide['concurrency_at_max']:>10}",
        f"{'server CPU per call (µs)':34}{_n(echo['cpu_us_per_call']):>10}{_n(decide['cpu_us_per_call']):>10}"
        f"{_n(ratios['cpu_per_call'], 2):>13}",
        f"{'Redis CPU per decision (µs)':34}{'':>10}{_n(decide['redis_cpu_us_per_decision']):>10}",
        "",
        f"inside the server ({DECISION_HISTOGRAM}): sequential p50 {_n(decide['server_p50_us'])} µs, "
        f"p99 {_n(decide['server_p99_us'])} µs; at max throughput p50 {_n(decide['server_p50_at_max_us'])} µs, "
        f"p99 {_n(decide['server_p99_at_max_us'])} µs",
        f"response size: Decide {decide['response_bytes']} bytes, Echo {echo['response_bytes']} bytes; "
        f"Redis {result['redis_bytes_per_customer']:,.0f} bytes per customer "
        f"(used_memory {result['redis_used_memory_bytes'] / 2**20:,.1f} MiB); "
        f"server RSS {result['server_rss_bytes'] / 2**20:,.0f} MiB",
        "",
        f"{'calls in flight':>16}{'Echo calls/s':>14}{'p99 µs':>9}{'Decide calls/s':>16}{'p99 µs':>9}",
    ]
    for e, d in zip(echo["ladder"], decide["ladder"]):
        lines.append(f"{e['concurrency']:>16}{_n(e['rps']):>14}{_n(e['p99_us']):>9}{_n(d['rps']):>16}"
                     f"{_n(d['p99_us']):>9}")
    errors = {"echo": echo["errors"], "decide": decide["errors"]}
    if any(errors.values()):
        lines.append(f"errors: {errors}")
    return "\n".join(lines)


def format_sweep(result: dict[str, Any]) -> str:
    kind, points, config = result["sweep"], result["points"], result["config"]
    m = result["machine"]
    lines = [
        f"nba bench --sweep {kind}: sequential Decide latency, {config['sequential']:,} calls per point"
        + (f", {config['customers']:,} customers" if kind == "offers" else
           f", {'policies/' if config['offers'] is None else str(config['offers']) + ' generated offers'}"),
        f"machine: {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, grpcio {m['grpc']}; "
        f"load average {result['load_average']['before'][0]:.2f} before, {result['load_average']['after'][0]:.2f} after",
        f"echo: p50 {_n(result['echo']['p50_us'])} µs, p99 {_n(result['echo']['p99_us'])} µs",
        "",
    ]
    if kind == "offers":
        lines.append(f"{'offers':>9}{'p50 µs':>9}{'p99 µs':>9}{'p50/echo':>10}{'server p50':>12}{'server p99':>12}")
        for p in points:
            lines.append(f"{p['offers']:>9,}{_n(p['p50_us']):>9}{_n(p['p99_us']):>9}"
                         f"{_n(p['p50_us'] / result['echo']['p50_us'], 2):>10}"
                         f"{_n(p['server_p50_us']):>12}{_n(p['server_p99_us']):>12}")
        if "us_per_offer" in result:
            lines.append("")
            lines.append(f"cost per extra offer (least squares over the p50s): {result['us_per_offer']:.2f} µs "
                         f"seen by the client, {_n(result.get('server_us_per_offer'), 2)} µs inside the server")
    else:
        lines.append(f"{'customers':>11}{'p50 µs':>9}{'p99 µs':>9}{'server p50':>12}{'server RSS MiB':>16}"
                     f"{'Redis MiB':>11}{'Redis B/customer':>18}")
        for p in points:
            lines.append(f"{p['customers']:>11,}{_n(p['p50_us']):>9}{_n(p['p99_us']):>9}{_n(p['server_p50_us']):>12}"
                         f"{p['server_rss_bytes'] / 2**20:>16,.0f}{p['redis_used_memory_bytes'] / 2**20:>11,.1f}"
                         f"{p['redis_bytes_per_customer']:>18,.0f}")
        if "p50_change" in result:
            lines.append("")
            lines.append(f"from {points[0]['customers']:,} to {points[-1]['customers']:,} customers: p50 "
                         f"{result['p50_change']:+.1%}, server p50 {result.get('server_p50_change', float('nan')):+.1%}, "
                         f"server RSS {result['server_rss_change']:+.1%}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
