"""The client side: the same grpc.aio client for both servers, sequential calls and a
ladder of calls in flight, with the server's CPU and decision histogram sampled around each."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
import psutil

from nba_service.observability import scrape
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.tools.bench.config import BenchConfig, BenchError, Progress

__all__ = ["Sampler", "Step", "Target", "measure_ladder", "measure_sequential"]

CALL_TIMEOUT_SECONDS = 10.0
MAX_CALLS_PER_STEP = 500_000
SEQUENTIAL_BLOCKS = 4
"""Sequential calls are made in this many blocks, to each server in turn."""
DECISION_HISTOGRAM = "nba_decision_duration_seconds"

Call = Callable[..., Any]


def _us(seconds: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(seconds), q) * 1e6) if len(seconds) else float("nan")


def _cpu_seconds(pid: int | None, without: int | None = None) -> float:
    """CPU time of ``pid`` and its children (``nba serve --workers N``), leaving out ``without`` (its Redis)."""
    if not pid:
        return 0.0
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        for member in (process, *process.children(recursive=True)):
            if member.pid != without:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = member.cpu_times()
                    total += times.user + times.system
    return total


@dataclasses.dataclass
class Target:
    """One server as the client sees it, and what to sample around a measure."""

    name: str
    port: int
    pid: int
    redis_pid: int | None = None
    metrics_url: str | None = None


@dataclasses.dataclass
class Step:
    """One measure against one server: latency quantiles, rate, and the server-side samples."""

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


class Sampler:
    """Server CPU and the server's decision histogram, before and after a measure."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._histogram = (
            scrape.scrape_histogram(target.metrics_url, DECISION_HISTOGRAM) if target.metrics_url else None
        )
        self._cpu = _cpu_seconds(target.pid, target.redis_pid)
        self._redis_cpu = _cpu_seconds(target.redis_pid)

    def finish(self, step: Step) -> Step:
        calls = max(step.calls, 1)
        step.cpu_us_per_call = (_cpu_seconds(self.target.pid, self.target.redis_pid) - self._cpu) / calls * 1e6
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


async def _sequential(
    call: Call, requests: Sequence[pb.DecideRequest], count: int, errors: collections.Counter[str], offset: int = 0
) -> list[float]:
    """``count`` calls one at a time, from ``requests[offset]`` on: the latency of each that succeeded."""
    latencies: list[float] = []
    for i in range(offset, offset + count):
        await _timed(call, requests[i % len(requests)], latencies, errors)
    return latencies


async def _timed(
    call: Call, request: pb.DecideRequest, latencies: list[float], errors: collections.Counter[str]
) -> None:
    """One call: its latency into ``latencies`` if it succeeded, its status code into ``errors`` if not."""
    started = time.perf_counter()
    try:
        await call(request, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as exc:
        errors[exc.code().name] += 1
        return
    latencies.append(time.perf_counter() - started)


async def _load(
    calls: Sequence[Call], requests: Sequence[pb.DecideRequest], concurrency: int, seconds: float, max_calls: int
) -> tuple[list[float], collections.Counter[str], float]:
    """``concurrency`` calls in flight for ``seconds`` (at most ``max_calls``), spread over ``calls``
    (one per connection): latencies, errors, elapsed."""
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    sent = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal sent
        i = offset
        call = calls[offset % len(calls)]
        while sent < max_calls and time.perf_counter() < deadline:
            sent += 1
            request = requests[i % len(requests)]
            i += concurrency
            await _timed(call, request, latencies, errors)

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def measure_sequential(
    targets: Sequence[Target], requests: Sequence[pb.DecideRequest], count: int, warmup: int
) -> list[tuple[Step, int]]:
    """Warm up, then ``count`` calls one at a time to each target, in blocks taken in turn so that
    both see the same machine; per target, the step and the size of one response."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{t.port}") for t in targets]
    try:
        calls = [pb_grpc.DecisionServiceStub(channel).Decide for channel in channels]
        sizes = [(await call(requests[0], timeout=CALL_TIMEOUT_SECONDS)).ByteSize() for call in calls]
        for call in calls:
            await _sequential(call, requests, warmup, collections.Counter(), offset=count)
        samplers = [Sampler(t) for t in targets]
        latencies: list[list[float]] = [[] for _ in targets]
        errors: list[collections.Counter[str]] = [collections.Counter() for _ in targets]
        elapsed = [0.0 for _ in targets]
        per_block = -(-count // SEQUENTIAL_BLOCKS)
        for block in range(SEQUENTIAL_BLOCKS):
            offset = block * per_block
            size = min(per_block, count - offset)
            for i, call in enumerate(calls):
                started = time.perf_counter()
                latencies[i] += await _sequential(call, requests, size, errors[i], offset)
                elapsed[i] += time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    results = []
    for target, sampler, seconds, errs, size, lat in zip(
        targets, samplers, elapsed, errors, sizes, latencies, strict=False
    ):
        if not lat:
            raise BenchError(f"every sequential call to {target.name} failed: {dict(errs)}")
        step = Step(1, len(lat), dict(errs), seconds, _us(lat, 50), _us(lat, 99), len(lat) / seconds, 0.0)
        results.append((sampler.finish(step), size))
    return results


def _channels(target: Target, count: int) -> list[grpc.aio.Channel]:
    """``count`` channels to ``target``, each with its own connection (grpc shares one between
    channels to the same address unless each keeps a local subchannel pool)."""
    return [
        grpc.aio.insecure_channel(f"127.0.0.1:{target.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]


async def measure_ladder(
    targets: Sequence[Target], requests: Sequence[pb.DecideRequest], config: BenchConfig, progress: Progress
) -> list[list[Step]]:
    """Each step of the ladder on each target in turn, calls spread over ``config.connections``
    connections per target; per target, its steps."""
    steps: list[list[Step]] = [[] for _ in targets]
    channels = [_channels(t, config.connections) for t in targets]
    try:
        calls = [[pb_grpc.DecisionServiceStub(channel).Decide for channel in own] for own in channels]
        for concurrency in config.concurrency:
            for target, call, done in zip(targets, calls, steps, strict=False):
                await _load(call, requests, concurrency, min(0.3, config.seconds), MAX_CALLS_PER_STEP)  # ramp up
                sampler = Sampler(target)
                latencies, errors, elapsed = await _load(
                    call, requests, concurrency, config.seconds, MAX_CALLS_PER_STEP
                )
                step = sampler.finish(
                    Step(
                        concurrency,
                        len(latencies),
                        dict(errors),
                        elapsed,
                        _us(latencies, 50),
                        _us(latencies, 99),
                        len(latencies) / elapsed,
                        0.0,
                    )
                )
                progress(
                    f"  {target.name:10} {concurrency:>4} in flight: {step.rps:>8,.0f} calls/s, "
                    f"p99 {step.p99_us:,.0f} µs{', errors ' + str(step.errors) if step.errors else ''}"
                )
                done.append(step)
    finally:
        for channel in (c for own in channels for c in own):
            await channel.close()
    return steps
