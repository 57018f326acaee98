"""Faults that take a process away: Redis killed with SIGKILL under load, and ``nba serve`` sent
SIGTERM with calls in flight."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service.tools.chaos.config import ChaosConfig, Progress
from nba_service.tools.chaos.load import Tally, closed_loop, open_channels, paced, quantile, warm
from nba_service.tools.chaos.report import FaultResult, seconds
from nba_service.tools.chaos.rig import (
    Stack,
    decision_keys,
    handled_codes,
    metric_sum,
    missing_decisions,
    outcome_states,
    poll,
    scrape,
    settled,
    stack,
)

__all__ = ["redis_outage", "sigterm"]

ALLOWED = frozenset({"OK", "UNAVAILABLE"})
EXIT_MARGIN_SECONDS = 15.0
"""How long past its grace period a server may take to exit before it is killed."""


def _learned(s: Stack, acknowledged: list[str], timeout: float) -> dict[str, int]:
    """Where the acknowledged outcomes are, once the learner has learned them all or after ``timeout``."""
    states = outcome_states(s.client, acknowledged)
    if poll(lambda: outcome_states(s.client, acknowledged)["learned"] == len(acknowledged), timeout, 0.2) is not None:
        states = outcome_states(s.client, acknowledged)
    return states


def _judge_records(result: FaultResult, s: Stack, returned: list[str], recorded: int, excess: float) -> None:
    missing = missing_decisions(s.client, returned)
    result.returned, result.recorded = len(returned), recorded
    result.details["missing_decisions"] = missing
    result.check("no returned decision missing", missing == 0, f"{missing:,} of {len(returned):,} not in Redis")
    over = recorded - len(returned)
    result.check(
        f"recorded exceed returned by at most {excess:.0%}",
        over <= excess * max(len(returned), 1),
        f"{recorded:,} recorded, {len(returned):,} returned ({over / max(len(returned), 1):+.1%})",
    )


def redis_outage(config: ChaosConfig, progress: Progress) -> FaultResult:
    """Redis killed with SIGKILL under a steady load of decisions and outcomes, then started again
    on the same port with its append-only file.

    Calls made while Redis is down should fail fast with UNAVAILABLE, the service should answer
    again within ``outage_recovery_seconds`` of Redis accepting connections, every decision
    returned should be in Redis afterwards, and every outcome acknowledged should be learned.
    """
    t = config.targets
    result = FaultResult(
        "redis_outage",
        "Redis outage (kill -9)",
        load=f"{config.outage_rate:,.0f} decisions/s, Redis down {config.outage_down:g} s",
        recovery="after Redis is back",
    )
    with stack(config, progress, "redis-outage") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        before = scrape(s.nba.metrics_url)
        result.rss_before, result.fds_before = s.nba.stats().values()
        tally = Tally()
        marks: dict[str, float] = {}

        async def drive() -> None:
            stop = asyncio.Event()
            async with open_channels(s.nba.port, 2) as stubs:
                load = asyncio.create_task(
                    paced(
                        stubs,
                        s.requests,
                        config.outage_rate,
                        float("inf"),
                        config.deadline,
                        tally,
                        outcome_share=0.5,
                        seed=config.seed,
                        stop=stop,
                    )
                )
                try:
                    marks["start"] = time.monotonic()
                    await asyncio.sleep(config.outage_before)  # load before the fault
                    s.redis.kill9()
                    marks["down"] = time.monotonic()
                    progress(f"  redis-server killed (SIGKILL) under {config.outage_rate:,.0f} decisions/s")
                    await asyncio.sleep(config.outage_down)  # the outage
                    marks["restart"] = time.monotonic()
                    await asyncio.to_thread(s.redis.start)
                    marks["up"] = time.monotonic()
                    progress(f"  redis-server back on port {s.redis.port} (pid {s.redis.pid})")
                    await asyncio.sleep(config.outage_after)  # load after the fault
                finally:
                    stop.set()
                    await load
                    marks["end"] = time.monotonic()

        asyncio.run(drive())
        s.pids["redis-restarted"] = s.redis.pid or 0
        after = settled(s.nba.metrics_url)
        states = _learned(s, tally.acknowledged, config.learn_timeout)
        result.rss_after, result.fds_after = s.nba.stats().values()

        result.codes = tally.codes()
        # Calls started while Redis was down: each should fail fast, unless Redis came back while it
        # was being answered (then OK is as good).
        during = [c for c in tally.calls if marks["down"] <= c.start < marks["restart"]]
        during_codes = collections.Counter(c.code for c in during)
        wrong = [c for c in during if c.code != "UNAVAILABLE" and not (c.code == "OK" and c.end >= marks["restart"])]
        slowest = quantile((c.seconds for c in during if c.code != "OK"), 0.99)
        first_ok = min(
            (c.end for c in tally.calls if c.code == "OK" and c.start >= marks["down"] and c.end >= marks["restart"]),
            default=None,
        )
        if first_ok is not None:
            result.recovery_seconds = max(0.0, first_ok - marks["up"])
            failing_after = [c.code for c in tally.calls if c.start >= first_ok and c.code != "OK"]
        else:
            failing_after = []
        sent = len(tally.calls)
        result.details.update(
            {
                "rate": sent / max(marks["end"] - marks["start"], 1e-9),
                "outage_seconds": marks["up"] - marks["down"],
                "outage_codes": dict(during_codes),
                "outage_p99_seconds": slowest,
                "failed_after_recovery": dict(collections.Counter(failing_after)),
                "outcome_codes": dict(collections.Counter(c.code for c in tally.outcomes)),
                "outcomes": states,
                "server_codes": handled_codes(before, after),
            }
        )
        every = tally.all_codes()
        result.check(
            "only OK and UNAVAILABLE (no UNKNOWN, INTERNAL, DEADLINE_EXCEEDED)",
            set(every) <= ALLOWED,
            f"Decide and ReportOutcome: {dict(every)}",
        )
        result.check(
            f"a fast UNAVAILABLE during the outage (p99 under {t.outage_fast_seconds:g} s)",
            bool(during) and not wrong and (slowest or 0) <= t.outage_fast_seconds,
            f"{len(during):,} calls while Redis was down: {dict(during_codes)} (OK: answered once it was back), "
            "p99 of the failures " + ("-" if slowest is None else f"{slowest * 1000:,.0f} ms"),
        )
        result.check(
            f"answers again within {t.outage_recovery_seconds:g} s of Redis returning",
            result.recovery_seconds is not None and result.recovery_seconds <= t.outage_recovery_seconds,
            "never answered again"
            if result.recovery_seconds is None
            else f"{seconds(result.recovery_seconds)}; {len(failing_after)} calls failed after the first answer",
        )
        recorded = int(metric_sum(after, "nba_decisions_total") - metric_sum(before, "nba_decisions_total"))
        _judge_records(result, s, tally.returned(), recorded, t.recorded_excess)
        result.acknowledged, result.learned = len(tally.acknowledged), states["learned"]
        result.check(
            "every acknowledged outcome learned",
            states["learned"] == len(tally.acknowledged),
            f"{len(tally.acknowledged):,} acknowledged: {states['learned']:,} learned, {states['pending']:,} "
            f"pending after {config.learn_timeout:g} s, {states['lost']:,} lost",
        )
    return result


async def _watch_health(port: int, seen: list[tuple[float, str]], stop: asyncio.Event) -> None:
    """Health.Check every 20 ms on a connection of its own until ``stop``: what a load balancer sees."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                seen.append((time.monotonic(), health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)))
            except grpc.aio.AioRpcError as exc:
                seen.append((time.monotonic(), exc.code().name))
            await asyncio.sleep(0.02)  # the probe's period


def sigterm(config: ChaosConfig, progress: Progress) -> FaultResult:
    """SIGTERM to ``nba serve`` while ``sigterm_in_flight`` callers keep calls in flight.

    Every call in flight at SIGTERM should end OK or UNAVAILABLE (none CANCELLED; before it, under the load of
    the callers, admission may refuse one whose deadline its wait would pass), the health service should say
    NOT_SERVING while the server drains, no returned decision or acknowledged outcome should be
    lost, and the server should exit.
    """
    t = config.targets
    n = config.sigterm_in_flight
    result = FaultResult(
        "sigterm", f"SIGTERM, {n:,} calls in flight", load=f"{n:,} callers in a loop", recovery="to drain and exit"
    )
    with stack(config, progress, "sigterm") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        keys_before = decision_keys(s.client)
        result.rss_before, result.fds_before = s.nba.stats().values()
        tally = Tally()
        health: list[tuple[float, str]] = []
        marks: dict[str, float] = {}
        grace_limit = 5.0 + EXIT_MARGIN_SECONDS

        async def drive() -> None:
            stop, stop_health = asyncio.Event(), asyncio.Event()
            async with open_channels(s.nba.port, 4) as stubs:
                load = asyncio.create_task(
                    closed_loop(
                        stubs,
                        s.requests,
                        n,
                        3600.0,
                        config.deadline,
                        tally,
                        stop=stop,
                        outcome_share=0.5,
                        backoff=0.05,
                        seed=config.seed,
                    )
                )
                watcher = asyncio.create_task(_watch_health(s.nba.port, health, stop_health))
                try:
                    await asyncio.sleep(config.sigterm_after)  # load before the signal
                    marks["in_flight"] = tally.in_flight
                    result.rss_after, result.fds_after = s.nba.stats().values()
                    os.kill(s.nba.pid, signal.SIGTERM)
                    marks["term"] = time.monotonic()
                    progress(f"  SIGTERM to nba serve (pid {s.nba.pid}) with {tally.in_flight} calls in flight")
                    while s.nba.running() and time.monotonic() - marks["term"] < grace_limit:
                        await asyncio.sleep(0.01)  # waiting for the server to exit
                    marks["exit"] = time.monotonic()
                finally:
                    stop.set()
                    stop_health.set()
                    await load
                    await watcher

        # bounded: a client side that hangs after the server has gone ends the fault with an error
        asyncio.run(asyncio.wait_for(drive(), config.sigterm_after + grace_limit + 60.0))
        exited = not s.nba.running()
        exit_code = s.nba.process.popen.poll()
        result.recovery_seconds = marks["exit"] - marks["term"]
        states = outcome_states(s.client, tally.acknowledged)
        recorded = decision_keys(s.client) - keys_before

        result.codes = tally.codes()
        term = marks["term"]
        in_flight = collections.Counter(c.code for c in tally.calls if c.start < term < c.end)
        after_term = [status for when, status in health if when >= term]
        result.details.update(
            {
                "in_flight_at_sigterm": int(marks["in_flight"]),
                "in_flight_codes": dict(in_flight),
                "health_after_sigterm": dict(collections.Counter(after_term)),
                "health_sequence": _runs(after_term),
                "exit_code": exit_code,
                "outcome_codes": dict(collections.Counter(c.code for c in tally.outcomes)),
                "outcomes": states,
            }
        )
        every = tally.all_codes()
        result.check(
            "the calls in flight at SIGTERM OK or UNAVAILABLE, none CANCELLED (before it, admission may also refuse "
            "a call whose deadline its wait would pass: DEADLINE_EXCEEDED, nothing recorded)",
            set(in_flight) <= ALLOWED and set(every) <= ALLOWED | {"DEADLINE_EXCEEDED"},
            f"Decide and ReportOutcome: {dict(every)}; the {int(marks['in_flight'])} in flight at SIGTERM: "
            f"{dict(in_flight)}",
        )
        result.check(
            "health NOT_SERVING during the drain",
            after_term.count("NOT_SERVING") >= 2,  # one answer can be a race with the server's stop
            f"health checks every 20 ms after SIGTERM: {_runs(after_term) or 'none answered'}",
        )
        result.check(
            "the server exits",
            exited and exit_code == 0,
            f"exit code {exit_code} after {result.recovery_seconds:.2f} s"
            if exited
            else f"still running {grace_limit:g} s after SIGTERM",
        )
        _judge_records(result, s, tally.returned(), recorded, t.recorded_excess)
        result.acknowledged, result.learned = len(tally.acknowledged), states["learned"]
        result.check(
            "no acknowledged outcome lost",
            states["lost"] == 0,
            f"{len(tally.acknowledged):,} acknowledged: {states['learned']:,} learned, {states['pending']:,} "
            f"pending (learned by the next learner), {states['lost']:,} lost",
        )
    return result


def _runs(statuses: list[str]) -> str:
    """``SERVING, SERVING, NOT_SERVING, UNAVAILABLE`` as ``SERVING ×2 → NOT_SERVING → UNAVAILABLE``."""
    runs = [(status, len(list(group))) for status, group in itertools.groupby(statuses)]
    return " → ".join(f"{status} ×{n}" if n > 1 else status for status, n in runs)
