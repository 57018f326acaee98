"""One benchmark run, or a sweep over offers or customers: servers, workload, measures, results."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import psutil

from nba_service.policies.parser import load_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.bench.client import CALL_TIMEOUT_SECONDS, Step, Target, measure_ladder, measure_sequential
from nba_service.tools.bench.config import BenchConfig, BenchError, Progress
from nba_service.tools.bench.processes import Servers, start_servers
from nba_service.tools.bench.workload import decide_requests, load_customers, write_journeys, write_offer_policies

__all__ = ["machine", "run_bench", "run_sweep"]

REQUEST_POOL = 4096
"""Distinct requests drawn once and sent in turn, the same to both servers."""
POLICY_LIVE_TIMEOUT_SECONDS = 30.0


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "platform": platform.platform(),
        "memory_bytes": psutil.virtual_memory().total,
    }


def _server_rss(pid: int, without: int | None) -> int:
    """Resident memory of the server process and its children (workers), its Redis left out."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (process, *process.children(recursive=True)) if p.pid != without)


def _policy_dir(config: BenchConfig, work: pathlib.Path, offers: int | None) -> pathlib.Path:
    if offers is None:
        return pathlib.Path(config.policies).resolve()
    return write_offer_policies(work / f"policies-{offers}", offers, config.policies, config.seed)


def _populate(
    servers: Servers, work: pathlib.Path, config: BenchConfig, start: int, stop: int, progress: Progress
) -> None:
    began = time.perf_counter()
    loaded = load_customers(servers.client, work, start, stop, config.seed)
    customers, events = write_journeys(servers.client, start, stop, config.journey_share, config.seed)
    progress(
        f"loaded {loaded:,} customer profiles and {events:,} journey events for {customers:,} of them "
        f"in {time.perf_counter() - began:.1f} s"
    )


def _section(sequential: Step, steps: list[Step]) -> dict[str, Any]:
    best = max(steps, key=lambda s: s.rps)
    return {
        "p50_us": sequential.p50_us,
        "p99_us": sequential.p99_us,
        "max_rps": best.rps,
        "p99_at_max_us": best.p99_us,
        "concurrency_at_max": best.concurrency,
        "cpu_us_per_call": best.cpu_us_per_call,
        "errors": _merge_errors(sequential, *steps),
        "sequential": dataclasses.asdict(sequential),
        "ladder": [dataclasses.asdict(s) for s in steps],
    }


def _merge_errors(*steps: Step) -> dict[str, int]:
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
        with start_servers(work, policies, config.seed, progress, config.workers, echo_redis=True) as servers:
            redis_empty = int(servers.client.info("memory")["used_memory"])
            _populate(servers, work, config, 0, config.customers, progress)
            redis_used = int(servers.client.info("memory")["used_memory"])
            requests = decide_requests(config.customers, REQUEST_POOL, config.seed, atm_only=config.offers is not None)
            assert servers.echo_redis is not None
            echo = Target("echo", int(servers.echo.info["port"]), int(servers.echo.info["pid"]))
            floor = Target(
                "echo+redis",
                int(servers.echo_redis.info["port"]),
                int(servers.echo_redis.info["pid"]),
                servers.redis_pid,
            )
            nba = Target(
                "decide", int(servers.nba.info["port"]), servers.nba.popen.pid, servers.redis_pid, servers.metrics_url
            )
            targets = (echo, floor, nba)
            progress(f"sequential: {config.warmup} warm-up then {config.sequential:,} calls to each server ...")
            (echo_seq, echo_bytes), (floor_seq, _), (nba_seq, nba_bytes) = asyncio.run(
                measure_sequential(targets, requests, config.sequential, config.warmup)
            )
            progress(
                f"throughput: {', '.join(map(str, config.concurrency))} calls in flight, {config.seconds:g} s each ..."
            )
            echo_steps, floor_steps, nba_steps = asyncio.run(measure_ladder(targets, requests, config, progress))
            server_rss = _server_rss(nba.pid, servers.redis_pid)
            pids = {"echo": echo.pid, "echo_redis": floor.pid, "server": nba.pid, "redis": servers.redis_pid}
    decide = _section(nba_seq, nba_steps)
    best = max(nba_steps, key=lambda s: s.rps)
    decide.update(
        {
            "server_p50_us": nba_seq.server_p50_us,
            "server_p99_us": nba_seq.server_p99_us,
            "server_p50_at_max_us": best.server_p50_us,
            "server_p99_at_max_us": best.server_p99_us,
            "redis_cpu_us_per_decision": best.redis_cpu_us_per_call,
            "response_bytes": nba_bytes,
        }
    )
    echo_section = _section(echo_seq, echo_steps)
    echo_section["response_bytes"] = echo_bytes
    floor_section = _section(floor_seq, floor_steps)
    floor_best = max(floor_steps, key=lambda s: s.rps)
    floor_section["redis_cpu_us_per_call"] = floor_best.redis_cpu_us_per_call
    return {
        "echo": echo_section,
        "echo_redis": floor_section,
        "decide": decide,
        "ratios": {
            "p50": _ratio(decide["p50_us"], echo_section["p50_us"]),
            "p99": _ratio(decide["p99_us"], echo_section["p99_us"]),
            "throughput": _ratio(decide["max_rps"], echo_section["max_rps"]),
            "cpu_per_call": _ratio(decide["cpu_us_per_call"], echo_section["cpu_us_per_call"]),
            "echo_redis_p50": _ratio(floor_section["p50_us"], echo_section["p50_us"]),
            "echo_redis_throughput": _ratio(floor_section["max_rps"], echo_section["max_rps"]),
        },
        "server_p50_us": nba_seq.server_p50_us,
        "server_p99_us": nba_seq.server_p99_us,
        "cpu_us_per_decision": best.cpu_us_per_call,
        "redis_cpu_us_per_decision": best.redis_cpu_us_per_call,
        "redis_bytes_per_customer": redis_used / max(config.customers, 1),
        "redis_added_bytes_per_customer": (redis_used - redis_empty) / max(config.customers, 1),
        "redis_used_memory_bytes": redis_used,
        "redis_empty_memory_bytes": redis_empty,
        "server_rss_bytes": server_rss,
        "pids": pids,
        "config": {
            **dataclasses.asdict(config),
            "policy_offers": len(policy.offers),
            "policy_channels": len(policy.channels),
            "requests": "mix" if config.offers is None else "atm_decline",
        },
        "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "seconds": time.perf_counter() - began,
    }


def run_sweep(
    kind: str, values: Sequence[int], config: BenchConfig, progress: Progress = lambda _: None
) -> dict[str, Any]:
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
        with start_servers(work, _policy_dir(config, work, offers), config.seed, progress, config.workers) as servers:
            redis_empty = int(servers.client.info("memory")["used_memory"])
            echo = Target("echo", int(servers.echo.info["port"]), int(servers.echo.info["pid"]))
            nba = Target(
                "decide", int(servers.nba.info["port"]), servers.nba.popen.pid, servers.redis_pid, servers.metrics_url
            )
            pids = {"echo": echo.pid, "server": nba.pid, "redis": servers.redis_pid}
            loaded = 0
            if kind == "offers":
                _populate(servers, work, config, 0, config.customers, progress)
                loaded = config.customers
                requests = decide_requests(loaded, REQUEST_POOL, config.seed, atm_only=True)
            echo_seq: Step | None = None
            for value in values:
                if kind == "offers":
                    if value != values[0]:
                        _publish(servers, _policy_dir(config, work, value), requests[0], value)
                else:
                    _populate(servers, work, config, loaded, value, progress)
                    loaded = value
                    requests = decide_requests(loaded, REQUEST_POOL, config.seed, atm_only=config.offers is not None)
                used = int(servers.client.info("memory")["used_memory"])  # before this point's decisions
                targets = (nba,) if echo_seq else (echo, nba)  # the echo once, at the first point
                measured = [
                    step
                    for step, _ in asyncio.run(measure_sequential(targets, requests, config.sequential, config.warmup))
                ]
                echo_seq, step = echo_seq or measured[0], measured[-1]
                point = {
                    kind: value,
                    "p50_us": step.p50_us,
                    "p99_us": step.p99_us,
                    "server_p50_us": step.server_p50_us,
                    "server_p99_us": step.server_p99_us,
                    "cpu_us_per_call": step.cpu_us_per_call,
                    "errors": step.errors,
                }
                if kind == "customers":
                    point.update(
                        {
                            "server_rss_bytes": _server_rss(nba.pid, servers.redis_pid),
                            "redis_used_memory_bytes": used,
                            "redis_bytes_per_customer": used / value,
                            "redis_added_bytes_per_customer": (used - redis_empty) / value,
                        }
                    )
                progress(
                    f"  {kind} {value:>9,}: Decide p50 {step.p50_us:,.0f} µs, p99 {step.p99_us:,.0f} µs"
                    f" (server p50 {step.server_p50_us or 0:,.0f} µs)"
                )
                points.append(point)
    assert echo_seq is not None
    result: dict[str, Any] = {
        "sweep": kind,
        "points": points,
        "pids": pids,
        "echo": {"p50_us": echo_seq.p50_us, "p99_us": echo_seq.p99_us},
        "config": dataclasses.asdict(config),
        "machine": machine(),
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


def _publish(servers: Servers, policies: pathlib.Path, probe: pb.DecideRequest, offers: int) -> None:
    """Publish ``policies`` and wait until the server answers with it."""
    version = PolicyStore(servers.client).publish(
        load_policy_dir(policies).files, author="nba bench", message=f"bench: {offers} offers"
    )
    with grpc.insecure_channel(f"127.0.0.1:{servers.nba.info['port']}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        deadline = time.monotonic() + POLICY_LIVE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if stub.Decide(probe, timeout=CALL_TIMEOUT_SECONDS).policy_version == str(version):
                return
            time.sleep(0.05)  # the server picks the version up from pub/sub
    raise BenchError(f"policy version {version} ({offers} offers) not live after {POLICY_LIVE_TIMEOUT_SECONDS:.0f} s")
