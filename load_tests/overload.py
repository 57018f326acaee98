#!/usr/bin/env python3
"""Overload, hostile clients and shutdown against a real ``nba serve`` on this machine (issue 12).

Each scenario starts its own ``nba serve`` (embedded Redis in a temporary directory, the sample
policies, 20,000 generated customers with journeys, the embedded learner), drives it over loopback,
prints what it measured (``--json FILE`` also writes it), and stops the server by PID; the server's
log is kept in ``reports/overload/``. ``--code DIR`` serves another checkout (e.g. ``git archive HEAD``
unpacked in /tmp: the same scenario before a change); ``--env NBA_X=V`` passes settings.

    python load_tests/overload.py flood                   # 1,500 callers over 8 connections, 1 s deadline, 10 s
    python load_tests/overload.py flood --connections 1500 --no-backoff
    python load_tests/overload.py burst                   # 2,900, 5,000 and 10,000 calls started at once
    python load_tests/overload.py idle                    # 20,000 connections that never send a byte
    python load_tests/overload.py idle --http2            # 20,000 that finish the HTTP/2 handshake, then idle
    python load_tests/overload.py stream --streams 20 --seconds 10
    python load_tests/overload.py drain --calls 300
    python load_tests/overload.py ladder --code /tmp/nba-head   # the baseline only, CPU per call

flood
    First the best rate of a short ladder (16 and 64 calls in flight over 4 connections, ``--ladder-seconds``
    each, the ``nba bench`` client shape): the baseline. Then ``--callers`` callers call Decide in a loop for
    ``--seconds`` with a ``--deadline`` deadline over ``--connections`` connections. A caller refused with
    RESOURCE_EXHAUSTED waits the ``retry-after-ms`` the server sent (times 0.5 to 1.5) unless
    ``--no-backoff``; any other failure is retried at once (UNAVAILABLE after 50 ms). Reported: every
    outcome by code, the useful rate (OK per second) against the baseline, the server's counts
    (``nba_grpc_server_handled_total``) against the client's, decisions recorded (``nba_decisions_total``)
    against decisions returned, the latency of calls right after, and the CPU of server and client.
burst
    ``--bursts`` calls started at once over ``--connections`` (default 8), each with the deadline; codes,
    decisions recorded against returned, and calls right after, each on a new connection.
idle
    ``--connections`` idle TCP connections held by helper processes (each within its file limit, raised to
    the hard one), then a new client decides (once without, once with wait_for_ready), the server's open
    files are counted, and after ``--hold`` seconds how many of the idle connections the server closed.
stream
    ``--streams`` DecideStream calls, each on a connection of its own, whose client reads the first answer
    and then writes requests as fast as it may without reading; beside them one client calling Decide one
    call at a time; decisions made and the server's CPU per second.
drain
    ``--calls`` callers in a loop over 4 connections (a failed call retried after 50 ms); SIGTERM after 2 s;
    every call's code (those in flight at SIGTERM apart), health as seen every 20 ms, the time to exit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import psutil
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nba_service.proto.nba.v1 import decision_pb2 as pb  # noqa: E402
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc  # noqa: E402
from nba_service.tools.bench.processes import ServerProcess, stop, stop_orphan, wait_ready  # noqa: E402
from nba_service.tools.bench.workload import decide_requests, load_customers, write_journeys  # noqa: E402

REPORTS = ROOT / "reports" / "overload"
CODE = ROOT
"""The checkout whose ``nba serve`` is measured (``--code``: another one, e.g. the last commit's, for a before)."""
CUSTOMERS = 20_000
REQUESTS = 5_000
SEED = 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the server -----------------------------------------------------------------------------------


@contextlib.contextmanager
def nba_server(work: pathlib.Path, env: dict[str, str], scenario: str) -> Iterator[ServerProcess]:
    """``nba serve`` on free ports with its embedded Redis in ``work``, customers loaded; stopped by PID."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    child_env["NBA_ISOLATED"] = "1"  # a state of its own: not advertised to other nba commands
    child_env.update(env)
    child_env["PYTHONPATH"] = str(CODE)
    log_path = work / "nba-serve.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nba_service.cli",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--data-dir",
                str(work / "data"),
                "--policies",
                str(CODE / "policies"),
                "--ready-file",
                str(work / "ready.json"),
                "--seed",
                str(SEED),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=CODE,
        )
    server = ServerProcess("nba-serve", popen, log_path)
    redis_pid = None
    try:
        info = wait_ready(server, work / "ready.json")
        client = redis.Redis.from_url(str(info["redis_url"]))
        redis_pid = int(client.info("server")["process_id"])
        load_customers(client, work, 0, CUSTOMERS, SEED)
        write_journeys(client, 0, CUSTOMERS, 0.2, SEED)
        client.close()
        log(f"nba serve pid {server.popen.pid} on port {info['port']}, metrics {info['metrics_port']}")
        yield server
    finally:
        stop([server])
        stop_orphan(redis_pid)
        REPORTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, REPORTS / f"server-{scenario}.log")
        log(f"stopped nba serve (pid {server.popen.pid}, exit {server.popen.returncode})")


def target(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.info['port']}"


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def by_label(samples: dict[Any, float], name: str, label: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = collections.defaultdict(float)
    for (sample, sample_labels), value in samples.items():
        found = dict(sample_labels)
        if sample == name and all(found.get(k) == v for k, v in labels.items()):
            out[found.get(label, "")] += value
    return dict(out)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def requests_pool() -> list[pb.DecideRequest]:
    return decide_requests(CUSTOMERS, REQUESTS, SEED, atm_only=False)


# --- flood ----------------------------------------------------------------------------------------


def _retry_after(error: grpc.aio.AioRpcError) -> float:
    for key, value in error.trailing_metadata() or ():
        if key in ("retry-after-ms", "grpc-retry-pushback-ms"):
            with contextlib.suppress(ValueError):
                return float(value) / 1000.0
    return 0.0


async def _ladder(
    address: str, requests: list[pb.DecideRequest], seconds: float, pid: int | None = None
) -> dict[int, float]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    rates = {}

    async def worker(i: int, inflight: int, end: float) -> int:
        done, n = 0, i
        while time.perf_counter() < end:
            n += inflight
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stubs[i % 4].Decide(requests[n % len(requests)], timeout=10)
                done += 1
        return done

    try:
        for inflight in (16, 64):
            began, cpu = time.perf_counter(), cpu_seconds(pid) if pid else 0.0
            done = await asyncio.gather(*(worker(i, inflight, began + seconds) for i in range(inflight)))
            rates[inflight] = sum(done) / (time.perf_counter() - began)
            if pid:
                per_call = (cpu_seconds(pid) - cpu) / max(sum(done), 1) * 1e6
                log(f"  {inflight} in flight: {rates[inflight]:,.0f}/s, server CPU {per_call:,.0f} µs per call")
    finally:
        for channel in channels:
            await channel.close()
    return rates


async def _flood(
    address: str,
    requests: list[pb.DecideRequest],
    callers: int,
    connections: int,
    seconds: float,
    deadline: float,
    backoff: bool,
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(connections)]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    for channel in channels:
        await channel.channel_ready()
    codes: collections.Counter[str] = collections.Counter()
    details: dict[str, str] = {}
    ok_in_window = 0
    latencies: list[float] = []
    began = time.perf_counter()
    end = began + seconds
    rng = random.Random(SEED)

    async def caller(i: int) -> None:
        nonlocal ok_in_window
        stub = stubs[i % connections]
        n = i
        await asyncio.sleep(rng.random() * 0.1)  # callers arrive over 100 ms
        while time.perf_counter() < end:
            n += callers
            started = time.perf_counter()
            try:
                await stub.Decide(requests[n % len(requests)], timeout=deadline)
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                details.setdefault(error.code().name, error.details())
                if backoff and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(_retry_after(error) * rng.uniform(0.5, 1.5))
                elif error.code() is grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(0.05)
                continue
            finished = time.perf_counter()
            codes["OK"] += 1
            latencies.append(finished - started)
            if finished <= end:
                ok_in_window += 1

    await asyncio.gather(*(caller(i) for i in range(callers)))
    finished = time.perf_counter()
    # a call right after: the first of a few sequential calls on a new connection
    after: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        for k in range(5):
            started = time.perf_counter()
            try:
                await stub.Decide(requests[k], timeout=5)
                after.append((time.perf_counter() - started) * 1000)
            except grpc.aio.AioRpcError as error:
                after.append(float("nan"))
                codes["after:" + error.code().name] += 1
    for channel in channels:
        await channel.close()
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(int(p * len(latencies)), len(latencies) - 1)] * 1000 if latencies else float("nan")

    return {
        "codes": dict(codes),
        "details": details,
        "ok_in_window": ok_in_window,
        "useful_rate": ok_in_window / seconds,
        "tail_seconds": finished - end,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "after_ms": after,
    }


async def _burst(
    address: str, requests: list[pb.DecideRequest], size: int, connections: int, deadline: float
) -> dict[str, Any]:
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    for channel in channels:
        await channel.channel_ready()
    codes: collections.Counter[str] = collections.Counter()

    async def call(i: int) -> None:
        try:
            await stubs[i % connections].Decide(requests[i % len(requests)], timeout=deadline)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1

    began = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(size)))
    seconds = time.perf_counter() - began
    for channel in channels:
        await channel.close()
    probes = []
    ended = time.perf_counter()
    for k in range(4):
        async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            started = time.perf_counter()
            try:
                await pb_grpc.DecisionServiceStub(channel).Decide(requests[k], timeout=5)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            probes.append(
                f"{code} in {(time.perf_counter() - started) * 1000:.1f} ms (at +{(started - ended) * 1000:.0f} ms)"
            )
    return {"size": size, "codes": dict(codes), "seconds": seconds, "after": probes[0], "probes": probes}


def run_bursts(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Bursts of calls started at once (``--bursts``), each with the deadline, over ``--connections``."""
    requests = requests_pool()
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="nba-overload-") as folder,
        nba_server(pathlib.Path(folder), env, "burst") as server,
    ):
        for size in args.bursts:
            before = scrape(server)
            result = asyncio.run(_burst(target(server), requests, size, args.connections, args.deadline))
            time.sleep(0.5)  # the server counts a call as it ends, just after its client has seen it
            after = scrape(server)
            result["recorded"] = total(after, "nba_decisions_total") - total(before, "nba_decisions_total")
            result["server_codes"] = delta(
                by_label(after, "nba_grpc_server_handled_total", "grpc_code", grpc_method="Decide"),
                by_label(before, "nba_grpc_server_handled_total", "grpc_code", grpc_method="Decide"),
            )
            returned = result["codes"].get("OK", 0)
            print(
                f"burst of {size:,} over {args.connections} connections: {result['codes']} in "
                f"{result['seconds']:.1f} s; recorded {result['recorded']:,.0f}, returned {returned:,} "
                f"({(result['recorded'] - returned) / max(returned, 1):+.2%}); server counted "
                f"{result['server_codes']}; calls right after: {result['probes']}"
            )
            results.append(result)
    return {"scenario": "bursts", "bursts": results}


def run_flood(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    requests = requests_pool()
    with (
        tempfile.TemporaryDirectory(prefix="nba-overload-") as folder,
        nba_server(pathlib.Path(folder), env, "flood") as server,
    ):
        address = target(server)
        log("baseline: 16 and 64 calls in flight over 4 connections, 2 s each ...")
        ladder = asyncio.run(_ladder(address, requests, args.ladder_seconds, server.popen.pid))
        best = max(ladder.values())
        log(f"baseline best {best:,.0f} calls/s ({ladder})")
        before = scrape(server)
        cpu_before = cpu_seconds(server.popen.pid)
        log(
            f"flood: {args.callers} callers over {args.connections} connections, {args.seconds:g} s, "
            f"deadline {args.deadline:g} s, {'honouring retry-after' if args.backoff else 'no backoff'} ..."
        )
        own_before = time.process_time()
        result = asyncio.run(
            _flood(address, requests, args.callers, args.connections, args.seconds, args.deadline, args.backoff)
        )
        own_cpu = time.process_time() - own_before
        after = scrape(server)
        cpu = cpu_seconds(server.popen.pid) - cpu_before
    server_codes = delta(
        by_label(after, "nba_grpc_server_handled_total", "grpc_code", grpc_method="Decide"),
        by_label(before, "nba_grpc_server_handled_total", "grpc_code", grpc_method="Decide"),
    )
    recorded = total(after, "nba_decisions_total") - total(before, "nba_decisions_total")
    returned = result["codes"].get("OK", 0)
    unreturned = delta(
        by_label(after, "nba_decisions_unreturned_total", "reason"),
        by_label(before, "nba_decisions_unreturned_total", "reason"),
    )
    client_calls = sum(v for k, v in result["codes"].items() if not k.startswith("after:")) + 5
    report = {
        "scenario": "flood",
        "callers": args.callers,
        "connections": args.connections,
        "seconds": args.seconds,
        "deadline": args.deadline,
        "backoff": args.backoff,
        "baseline_rates": ladder,
        "baseline_best": best,
        **result,
        "useful_vs_baseline": result["useful_rate"] / best,
        "server_codes": server_codes,
        "server_counted": sum(server_codes.values()),
        "client_calls": client_calls,
        "recorded": recorded,
        "returned": returned,
        "recorded_excess": (recorded - returned) / max(returned, 1),
        "server_unreturned": unreturned,
        "server_cpu_seconds": cpu,
        "client_cpu_seconds": own_cpu,
        "load_average": os.getloadavg(),
    }
    print(
        f"flood: client codes {report['codes']}\n  first details: {report['details']}\n"
        f"  useful {report['useful_rate']:,.0f} OK/s = {report['useful_vs_baseline']:.0%} of the baseline "
        f"{best:,.0f}/s; p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms\n"
        f"  server counted {report['server_counted']:,.0f} of {client_calls:,} calls: {server_codes}\n"
        f"  recorded {recorded:,.0f}, returned {returned:,}: excess {report['recorded_excess']:.2%}; "
        f"server says unreturned {unreturned}\n"
        f"  calls right after (ms): {', '.join(f'{v:.1f}' for v in report['after_ms'])}\n"
        f"  CPU: server {cpu:.1f} s, this client {own_cpu:.1f} s over {args.seconds:g} s + "
        f"{report['tail_seconds']:.1f} s; load average {report['load_average'][0]:.2f}"
    )
    return report


def run_ladder(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Only the baseline ladder, with the server's CPU per call (to compare two checkouts)."""
    requests = requests_pool()
    with (
        tempfile.TemporaryDirectory(prefix="nba-overload-") as folder,
        nba_server(pathlib.Path(folder), env, "ladder") as server,
    ):
        rates = asyncio.run(_ladder(target(server), requests, args.ladder_seconds, server.popen.pid))
    print(f"ladder ({CODE}): {', '.join(f'{k} in flight {v:,.0f}/s' for k, v in rates.items())}")
    return {"scenario": "ladder", "code": str(CODE), "rates": rates}


# --- idle connections -----------------------------------------------------------------------------


def _raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, ACK = 4, 6, 1


def _frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + bytes(4) + payload


class _Idle(asyncio.Protocol):
    """One idle connection: silent, or (``http2``) one that completes the HTTP/2 handshake, answers
    SETTINGS and PINGs as a client library would, and never opens a stream."""

    def __init__(self, http2: bool, closed: list[int]) -> None:
        self.http2, self.closed, self.buffer, self.mine = http2, closed, bytearray(), False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.http2:
            transport.write(PREFACE + _frame(SETTINGS, 0))

    def data_received(self, data: bytes) -> None:
        if not self.http2:
            return
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags, payload = self.buffer[3], self.buffer[4], bytes(self.buffer[9 : 9 + length])
            del self.buffer[: 9 + length]
            assert self.transport is not None
            if kind == SETTINGS and not flags & ACK:
                self.transport.write(_frame(SETTINGS, ACK))
            elif kind == PING and not flags & ACK:
                self.transport.write(_frame(PING, ACK, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.mine:
            self.closed[0] += 1


async def _hold(port: int, count: int, http2: bool) -> None:
    loop = asyncio.get_running_loop()
    closed = [0]
    transports: list[tuple[asyncio.BaseTransport, _Idle]] = []
    failed = 0

    async def connect() -> None:
        nonlocal failed
        try:
            transport, protocol = await loop.create_connection(lambda: _Idle(http2, closed), "127.0.0.1", port)
        except OSError:
            failed += 1
            return
        transports.append((transport, protocol))

    for first in range(0, count, 256):
        await asyncio.gather(*(connect() for _ in range(min(256, count - first))))
    print(json.dumps({"opened": len(transports), "failed": failed}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    print(json.dumps({"closed": closed[0]}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for transport, protocol in transports:
        protocol.mine = True
        transport.close()


async def _fresh_call(address: str, request: pb.DecideRequest, wait_for_ready: bool, timeout: float) -> str:
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await pb_grpc.DecisionServiceStub(channel).Decide(request, timeout=timeout, wait_for_ready=wait_for_ready)
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
    return f"{code} in {(time.perf_counter() - started) * 1000:.0f} ms"


HOLDER_RESERVE = 200
"""Files a holder process keeps free for itself."""


def hold(port: int, count: int, http2: bool) -> int:
    """The ``_hold`` helper: open ``count`` idle connections, say how many, wait for a line on stdin,
    say how many the server has closed since, and (at the next line) close them all."""
    limit = _raise_file_limit()
    asyncio.run(_hold(port, min(count, limit - HOLDER_RESERVE), http2))
    return 0


def run_idle(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    limit = _raise_file_limit()
    per_holder = limit - HOLDER_RESERVE
    requests = requests_pool()
    with (
        tempfile.TemporaryDirectory(prefix="nba-overload-") as folder,
        nba_server(pathlib.Path(folder), env, "idle") as server,
    ):
        address = target(server)
        pid = server.popen.pid
        fds_before = psutil.Process(pid).num_fds()
        began = time.perf_counter()
        holders = []
        left = args.connections
        try:
            while left > 0:
                n = min(left, per_holder)
                holders.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "_hold", str(server.info["port"]), str(n), str(int(args.http2))],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
                left -= n
            opened = failed = 0
            for holder in holders:
                assert holder.stdout is not None
                counts = json.loads(holder.stdout.readline())
                opened += counts["opened"]
                failed += counts["failed"]
            log(
                f"opened {opened:,} idle connections in {time.perf_counter() - began:.1f} s "
                f"from {len(holders)} processes ({failed:,} failed)"
            )
            time.sleep(0.5)  # let the server accept what the kernel queued
            fds = psutil.Process(pid).num_fds()
            plain = asyncio.run(_fresh_call(address, requests[0], False, 5.0))
            ready = asyncio.run(_fresh_call(address, requests[1], True, 10.0))
            log(f"new client: {plain}; with wait_for_ready: {ready}")
            time.sleep(args.hold)
            closed = 0
            for holder in holders:
                assert holder.stdin is not None and holder.stdout is not None
                holder.stdin.write("\n")
                holder.stdin.flush()
                closed += json.loads(holder.stdout.readline())["closed"]
            fds_later = psutil.Process(pid).num_fds()
            later = asyncio.run(_fresh_call(address, requests[2], False, 5.0))
            server_limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        finally:
            for holder in holders:
                with contextlib.suppress(OSError):
                    assert holder.stdin is not None
                    holder.stdin.write("\n")
                    holder.stdin.close()
                holder.wait(30)
    report = {
        "scenario": "idle",
        "connections": args.connections,
        "opened": opened,
        "failed": failed,
        "server_fds_before": fds_before,
        "server_fds": fds,
        "server_file_limit": server_limit,
        "new_client": plain,
        "new_client_wait_for_ready": ready,
        "hold_seconds": args.hold,
        "closed_by_server": closed,
        "server_fds_later": fds_later,
        "new_client_later": later,
    }
    print(
        f"idle{' (HTTP/2)' if args.http2 else ''}: {opened:,} open ({failed:,} failed); "
        f"server files {fds_before} -> {fds} "
        f"(limit {server_limit})\n  new client: {plain}; with wait_for_ready: {ready}\n"
        f"  after {args.hold:g} s: {closed:,} closed by the server, server files {fds_later}, new client: {later}"
    )
    return report


# --- a stream that stops reading ------------------------------------------------------------------


async def _stream(address: str, server: ServerProcess, requests: list[pb.DecideRequest], streams: int, seconds: float):
    # each stream on a connection of its own, a default client (BDP probing on); it reads the first answer only
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(streams)
    ]
    calls = [pb_grpc.DecisionServiceStub(channel).DecideStream() for channel in channels]
    written = [0] * streams

    async def writer(i: int) -> None:
        n = i
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError, grpc.aio.UsageError):
            while True:
                n += streams
                await calls[i].write(requests[n % len(requests)])
                written[i] += 1
                if written[i] == 1:
                    await calls[i].read()

    tasks = [asyncio.create_task(writer(i)) for i in range(streams)]
    latencies: list[float] = []
    probe_channel = grpc.aio.insecure_channel(address)
    probe = pb_grpc.DecisionServiceStub(probe_channel)
    timeline = []
    pid = server.popen.pid
    last_decisions = total(await asyncio.to_thread(scrape, server), "nba_decisions_total")
    last_cpu = cpu_seconds(pid)
    for second in range(int(seconds)):
        tick = time.perf_counter() + 1.0
        while time.perf_counter() < tick:
            started = time.perf_counter()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await probe.Decide(requests[len(latencies) % len(requests)], timeout=5)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        decisions = total(await asyncio.to_thread(scrape, server), "nba_decisions_total")
        cpu = cpu_seconds(pid)
        timeline.append({"second": second + 1, "decisions": decisions - last_decisions, "cpu": cpu - last_cpu})
        last_decisions, last_cpu = decisions, cpu
    for call in calls:
        call.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    await probe_channel.close()
    latencies.sort()
    return timeline, sum(written), latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def run_stream(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    requests = requests_pool()
    with (
        tempfile.TemporaryDirectory(prefix="nba-overload-") as folder,
        nba_server(pathlib.Path(folder), env, "stream") as server,
    ):
        timeline, written, p50, p99 = asyncio.run(_stream(target(server), server, requests, args.streams, args.seconds))
    report = {
        "scenario": "stream",
        "streams": args.streams,
        "timeline": timeline,
        "requests_written": written,
        "probe_p50_ms": p50,
        "probe_p99_ms": p99,
    }
    rows = "\n".join(
        f"  {t['second']:>3} s: {t['decisions']:>7,.0f} decisions, server CPU {t['cpu']:.2f} s" for t in timeline
    )
    print(
        f"stream: {args.streams} streams that never read (requests written {written:,}); "
        f"one Decide at a time beside them: p50 {p50:.1f} ms, p99 {p99:.1f} ms\n{rows}"
    )
    return report


# --- drain on SIGTERM -----------------------------------------------------------------------------


async def _drain(address: str, server: ServerProcess, requests: list[pb.DecideRequest], calls: int, timeout: float):
    """``calls`` callers in a loop over 4 connections (a failed call is retried after 50 ms), SIGTERM after
    2 s, health checked every 20 ms on a connection of its own, the callers going on until the server exits."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(4)]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    for channel in channels:
        await channel.channel_ready()
    health_channel = grpc.aio.insecure_channel(address, options=options)
    health = health_pb2_grpc.HealthStub(health_channel)
    codes: collections.Counter[str] = collections.Counter()
    around: collections.Counter[str] = collections.Counter()
    stopping = asyncio.Event()
    signalled = 0.0
    in_flight = 0

    async def caller(i: int) -> None:
        nonlocal in_flight
        n = i
        while not stopping.is_set():
            n += calls
            issued = time.perf_counter()
            in_flight += 1
            try:
                await stubs[i % len(stubs)].Decide(requests[n % len(requests)], timeout=timeout)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            in_flight -= 1
            codes[code] += 1
            if signalled:
                around[("in flight at SIGTERM: " if issued < signalled else "issued after SIGTERM: ") + code] += 1
            if code != "OK":
                await asyncio.sleep(0.05)

    async def watch() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []
        while not stopping.is_set():
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            if signalled and (not seen or seen[-1][1] != status):
                seen.append((round((time.perf_counter() - signalled) * 1000), status))
            await asyncio.sleep(0.02)
        return seen

    tasks = [asyncio.create_task(caller(i)) for i in range(calls)]
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(2.0)
    at_sigterm = in_flight
    signalled = time.perf_counter()
    server.popen.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.popen.wait, 60)
    exited = time.perf_counter() - signalled
    await asyncio.sleep(0.2)  # calls made after the exit
    stopping.set()
    await asyncio.gather(*tasks)
    statuses = await watcher
    for channel in channels:
        await channel.close()
    await health_channel.close()
    return dict(codes), dict(around), statuses, exited, at_sigterm


def run_drain(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    requests = requests_pool()
    with (
        tempfile.TemporaryDirectory(prefix="nba-overload-") as folder,
        nba_server(pathlib.Path(folder), env, "drain") as server,
    ):
        codes, after_signal, statuses, exited, at_sigterm = asyncio.run(
            _drain(target(server), server, requests, args.calls, 1.0)
        )
        log_text = server.log.read_text(errors="replace")
    report = {
        "scenario": "drain",
        "calls": args.calls,
        "codes": codes,
        "around_sigterm": after_signal,
        "in_flight_at_sigterm": at_sigterm,
        "health": statuses,
        "exit_seconds": exited,
        "exit_code": server.popen.returncode,
        "log_tail": log_text.splitlines()[-5:],
    }
    print(
        f"drain: {args.calls} callers, {at_sigterm} calls in flight at SIGTERM; every call: {codes}\n"
        f"  around SIGTERM: {after_signal}\n"
        f"  health after SIGTERM (ms, status): {statuses}\n  exited {exited:.2f} s after SIGTERM "
        f"(code {server.popen.returncode})"
    )
    return report


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=("flood", "burst", "ladder", "idle", "stream", "drain", "all"))
    parser.add_argument("--callers", type=int, default=1500, help="flood: concurrent callers (default 1500)")
    parser.add_argument(
        "--connections", type=int, help="flood: connections the callers share (default 50); idle: idle ones (20000)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="flood and stream: how long (default 10)")
    parser.add_argument("--deadline", type=float, default=1.0, help="flood: each call's deadline in s (default 1)")
    parser.add_argument("--no-backoff", dest="backoff", action="store_false", help="flood: retry refused calls at once")
    parser.add_argument(
        "--http2", action="store_true", help="idle: connections that complete the HTTP/2 handshake, then idle"
    )
    parser.add_argument("--hold", type=float, default=8.0, help="idle: seconds before counting closed ones (default 8)")
    parser.add_argument("--streams", type=int, default=20, help="stream: streams that never read (default 20)")
    parser.add_argument(
        "--bursts",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[2900, 5000, 10000],
        help="burst: sizes of the bursts (default 2900,5000,10000)",
    )
    parser.add_argument("--calls", type=int, default=300, help="drain: calls in flight at SIGTERM (default 300)")
    parser.add_argument("--env", action="append", default=[], metavar="NBA_X=V", help="server settings (repeatable)")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--ladder-seconds", type=float, default=2.0, help="flood: each baseline step (default 2)")
    parser.add_argument("--code", help="the checkout to serve from (default this one), e.g. an export of HEAD")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_hold"]:
        return hold(int(argv[1]), int(argv[2]), bool(int(argv[3])))
    args = parser.parse_args(argv)
    if args.code:
        global CODE
        CODE = pathlib.Path(args.code).resolve()
    env = dict(item.split("=", 1) for item in args.env)
    results = []
    scenarios = ("flood", "burst", "idle", "stream", "drain") if args.scenario == "all" else (args.scenario,)
    for scenario in scenarios:
        if scenario == "burst":
            args.connections = args.connections or 8
            results.append(run_bursts(args, env))
        elif scenario == "ladder":
            results.append(run_ladder(args, env))
        elif scenario == "flood":
            args.connections = args.connections if args.scenario == "flood" and args.connections else 8
            results.append(run_flood(args, env))
        elif scenario == "idle":
            args.connections = args.connections if args.scenario == "idle" and args.connections else 20_000
            results.append(run_idle(args, env))
        elif scenario == "stream":
            results.append(run_stream(args, env))
        else:
            results.append(run_drain(args, env))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
