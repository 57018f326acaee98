"""Faults of too much: more callers than the server can answer, bursts, tens of thousands of
idle connections, and streams whose client stops reading."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from nba_service.tools.bench.client import Target, measure_ladder
from nba_service.tools.bench.config import BenchConfig
from nba_service.tools.chaos.config import ChaosConfig, ChaosError, Progress
from nba_service.tools.chaos.load import (
    Call,
    Tally,
    burst,
    closed_loop,
    decide,
    open_channels,
    paced,
    probe,
    quantile,
    warm,
)
from nba_service.tools.chaos.report import FaultResult
from nba_service.tools.chaos.rig import (
    LOAD_NICENESS,
    STARTED,
    Stack,
    cpu_seconds,
    fd_count,
    load_yields,
    metric_sum,
    poll,
    scrape,
    settled,
    stack,
)

__all__ = ["idle_connections", "overload", "stalled_streams"]

FAILURES = frozenset({"UNKNOWN", "INTERNAL"})
STREAM_WRITES = 1_000_000
"""Most requests one stalled stream writes (the window ends it long before)."""
IDLE_READY_SECONDS = 120.0
OVERLOAD_RAMP_SECONDS = 0.5
"""The start of the overload left out of its rate (the ladder's steps leave out a ramp-up too)."""


def _at_once(result: FaultResult, call: Call, limit: float, when: str) -> None:
    result.check(
        f"a call right after {when} answers at once (under {limit:g} s)",
        call.code == "OK" and call.seconds <= limit,
        f"{call.code} in {call.seconds * 1000:,.0f} ms",
    )


def _no_failures(result: FaultResult, codes: dict[str, int], what: str) -> None:
    bad = {code: n for code, n in codes.items() if code in FAILURES}
    result.check(f"no UNKNOWN or INTERNAL ({what})", not bad, f"{codes}")


def _excess(
    result: FaultResult, returned: int, recorded: int, share: float, what: str, calls: int = 0, of_calls: float = 0.0
) -> None:
    over = recorded - returned
    floor = f"{of_calls:.0%} of the calls" if of_calls else "one decision"
    result.check(  # or by one decision: the least there is, when a loaded machine returns only a few dozen
        f"recorded exceed returned by at most {share:.0%} or {floor} ({what})",
        over <= max(1.0, share * returned, of_calls * calls),
        f"{recorded:,} recorded, {returned:,} returned ({over / max(returned, 1):+.1%})",
    )


def _decisions(samples: dict[str, Any]) -> float:
    return metric_sum(samples, "nba_decisions_total")


def overload(config: ChaosConfig, progress: Progress) -> list[FaultResult]:
    """``overload_callers`` callers calling Decide in a loop with a 1 s deadline, then bursts of calls
    started at once; before them, the ``nba bench`` ladder against the same server gives the best
    rate of this run.

    No call should end UNKNOWN or INTERNAL, decisions recorded should exceed those returned by at
    most 1% (work for a caller that gave up is wasted), the answers per second should stay at
    least 80% of the best rate, and a call right after should answer at once.
    """
    t = config.targets
    loop = FaultResult(
        "overload",
        f"overload, {config.overload_callers:,} callers",
        load=f"{config.overload_callers:,} callers × {config.overload_seconds:g} s, deadline {config.deadline:g} s",
        recovery="a call right after",
    )
    bursts = FaultResult(
        "bursts",
        "bursts of " + "/".join(f"{n:,}" for n in config.bursts) + " calls",
        load="all started at once, deadline " + f"{config.deadline:g} s",
        recovery="a call right after (slowest)",
    )
    with stack(config, progress, "overload") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        target = Target("decide", s.nba.port, s.nba.pid, s.redis.pid, s.nba.metrics_url)
        bench = BenchConfig(concurrency=config.ladder, seconds=config.ladder_seconds, connections=4)
        # The ladder and the callers measured alike: this process (the load generator) below the server and
        # Redis, so that what it spends on calls they refuse comes after their CPU, not out of it.
        with load_yields() as yielded:
            loop.details["load_generator_niceness"] = LOAD_NICENESS if yielded else 0
            progress(f"  the nba bench ladder first: {', '.join(map(str, config.ladder))} calls in flight")
            steps = asyncio.run(measure_ladder([target], s.requests, bench, progress))[0]
            best = max(steps, key=lambda step: step.rps)
            loop.details["bench_best_rps"] = best.rps
            loop.details["bench_best_concurrency"] = best.concurrency
            loop.details["bench_ladder"] = {step.concurrency: round(step.rps) for step in steps}
            before = settled(s.nba.metrics_url)
            loop.rss_before, loop.fds_before = s.nba.stats().values()
            tally = Tally()

            async def flood() -> tuple[float, Call]:
                async with open_channels(s.nba.port, config.overload_connections) as stubs:
                    elapsed = await closed_loop(
                        stubs,
                        s.requests,
                        config.overload_callers,
                        config.overload_seconds,
                        config.deadline,
                        tally,
                    )
                return elapsed, await probe(s.nba.port, s.requests[0])

            progress(f"  {config.overload_callers:,} callers for {config.overload_seconds:g} s ...")
            elapsed, after_call = asyncio.run(flood())
        after = settled(s.nba.metrics_url)
        loop.rss_after, loop.fds_after = s.nba.stats().values()
        loop.codes = tally.codes()
        ok = loop.codes.get("OK", 0)
        # Answers per second while every caller is calling, as the ladder measures a step: from the end of the
        # ramp-up (the callers' connections set up, the queues filled) to the time the callers stop starting
        # calls; the tail after it (calls in flight finishing, fewer and fewer) is no overload.
        began = min(call.start for call in tally.calls)
        steady_from, steady_to = began + OVERLOAD_RAMP_SECONDS, began + config.overload_seconds
        useful = sum(1 for c in tally.calls if c.code == "OK" and steady_from <= c.end < steady_to) / (
            steady_to - steady_from
        )
        loop.returned, loop.recorded = ok, int(_decisions(after) - _decisions(before))
        loop.recovery_seconds = after_call.seconds
        latencies = [c.seconds for c in tally.calls if c.code == "OK"]
        loop.details.update(
            {
                "useful_rps": useful,
                "answers_per_second_overall": ok / elapsed,
                "seconds": elapsed,
                "ok_p50_seconds": quantile(latencies, 0.5),
                "ok_p99_seconds": quantile(latencies, 0.99),
                "after_call": {"code": after_call.code, "seconds": after_call.seconds},
            }
        )
        loop.load += f" ({useful:,.0f} answers/s; bench best {best.rps:,.0f}/s)"
        _no_failures(loop, loop.codes, "Decide")
        _excess(loop, ok, loop.recorded, t.recorded_excess, "Decide")
        loop.check(
            f"answers/s at least {t.useful_throughput:.0%} of the best nba bench rate",
            useful >= t.useful_throughput * best.rps,
            f"{useful:,.0f}/s = {useful / best.rps:.0%} of {best.rps:,.0f}/s ({best.concurrency} in flight), from "
            f"{OVERLOAD_RAMP_SECONDS:g} s to {config.overload_seconds:g} s ({ok / elapsed:,.0f}/s over the "
            f"{elapsed:.1f} s until the last call ended)",
        )
        _at_once(loop, after_call, t.answer_at_once_seconds, "the overload")

        bursts.rss_before, bursts.fds_before = s.nba.stats().values()
        all_codes: collections.Counter[str] = collections.Counter()
        returned = recorded = 0
        slowest_after: Call | None = None
        for size in config.bursts:
            before = settled(s.nba.metrics_url)
            one = Tally()

            async def fire(size: int = size, one: Tally = one) -> tuple[float, Call]:
                async with open_channels(s.nba.port, config.overload_connections) as stubs:
                    elapsed = await burst(stubs, s.requests, size, config.deadline, one)
                return elapsed, await probe(s.nba.port, s.requests[0])

            progress(f"  a burst of {size:,} calls ...")
            elapsed, call = asyncio.run(fire())
            after = settled(s.nba.metrics_url)
            codes = one.codes()
            got, made = codes.get("OK", 0), int(_decisions(after) - _decisions(before))
            all_codes.update(codes)
            returned += got
            recorded += made
            bursts.details[str(size)] = {
                "codes": codes,
                "seconds": elapsed,
                "recorded": made,
                "after_call": {"code": call.code, "seconds": call.seconds},
            }
            _no_failures(bursts, codes, f"burst of {size:,}")
            _excess(bursts, got, made, t.recorded_excess, f"burst of {size:,}", size, t.burst_excess_of_calls)
            _at_once(bursts, call, t.answer_at_once_seconds, f"a burst of {size:,}")
            if slowest_after is None or call.seconds > slowest_after.seconds:
                slowest_after = call
        bursts.codes = dict(all_codes)
        bursts.returned, bursts.recorded = returned, recorded
        bursts.recovery_seconds = None if slowest_after is None else slowest_after.seconds
        bursts.rss_after, bursts.fds_after = s.nba.stats().values()
    return [loop, bursts]


def _spawn_holders(s: Stack, count: int) -> list[tuple[subprocess.Popen[bytes], pathlib.Path, pathlib.Path]]:
    """Processes holding ``count`` idle connections between them, each within its fd limit."""
    from nba_service.tools.chaos.idle import max_per_process  # not at the top: the holders run it with -m

    per = max(1, max_per_process())
    processes = max(1, math.ceil(count / per))
    holders = []
    for k in range(processes):
        share = count // processes + (1 if k < count % processes else 0)
        ready, final = s.work / f"idle-{k}.json", s.work / f"idle-{k}.final.json"
        with (s.work / f"idle-{k}.log").open("wb") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nba_service.tools.chaos.idle",
                    "--port",
                    str(s.nba.port),
                    "--count",
                    str(share),
                    "--ready-file",
                    str(ready),
                    "--final-file",
                    str(final),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        holders.append((popen, ready, final))
        STARTED.append(popen.pid)
        s.pids[f"idle-{k}"] = popen.pid
    return holders


def idle_connections(config: ChaosConfig, progress: Progress) -> FaultResult:
    """``idle_connections`` HTTP/2 connections that never call, held by separate processes, then a
    new client: it should decide at once, and the server's descriptors should come back when the
    connections close."""
    t = config.targets
    n = config.idle_connections
    result = FaultResult(
        "idle_connections",
        f"{n:,} idle connections",
        load=f"{n:,} idle HTTP/2 connections",
        recovery="a new client's first call",
    )
    with stack(config, progress, "idle-connections") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        result.rss_before, result.fds_before = s.nba.stats().values()
        baseline = asyncio.run(probe(s.nba.port, s.requests[0]))
        holders = _spawn_holders(s, n)
        try:
            progress(f"  opening {n:,} idle connections from {len(holders)} process(es) ...")
            waited = poll(
                lambda: all(ready.exists() or popen.poll() is not None for popen, ready, _ in holders),
                IDLE_READY_SECONDS + n / 500,
                0.05,
            )
            if waited is None or not all(ready.exists() for _, ready, _ in holders):
                logs = "; ".join((s.work / f"idle-{k}.log").read_text()[-300:] for k in range(len(holders)))
                raise ChaosError(f"the idle-connection holders did not get ready: {logs}")
            opened = [json.loads(ready.read_text()) for _, ready, _ in holders]
            during = s.nba.stats()
            server_fds = fd_count(s.nba.pid)

            async def new_client() -> tuple[Call, Tally]:
                """A first call, then 19 more on the same connection (stopping after 3 failures)."""
                tally = Tally()
                async with open_channels(s.nba.port) as (stub,):
                    first = await decide(stub, s.requests[0], 5.0, tally)
                    for i in range(1, 20):
                        if sum(1 for c in tally.calls if c.code != "OK") >= 3:
                            break
                        await decide(stub, s.requests[i], 2.0, tally)
                return first, tally

            first, tally = asyncio.run(new_client())
        finally:
            for popen, _, _ in holders:
                if popen.poll() is None:
                    popen.terminate()
            for popen, _, _ in holders:
                try:
                    popen.wait(30)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
        finals = [json.loads(final.read_text()) for _, _, final in holders if final.exists()]
        base_fds = result.fds_before or 0
        back = poll(lambda: (fd_count(s.nba.pid) or 0) <= base_fds + 2, 15.0, 0.1)
        result.rss_after, result.fds_after = s.nba.stats().values()
        result.codes = tally.codes()
        result.recovery_seconds = first.seconds
        result.returned = result.codes.get("OK", 0)
        totals = {key: sum(int(o[key]) for o in opened) for key in ("connected", "handshaken", "closed_by_server")}
        errors: collections.Counter[str] = collections.Counter()
        for o in opened:
            errors.update(o["errors"])
        result.details.update(
            {
                "holders": len(holders),
                "opened": totals,
                "connect_errors": dict(errors),
                "open_at_end": sum(int(f["open"]) for f in finals),
                "closed_by_server": sum(int(f["closed_by_server"]) for f in finals),
                "server_fds_during": server_fds,
                "server_rss_during": during["rss"],
                "connect_seconds": max(float(o["connect_seconds"]) for o in opened),
                "baseline_first_call_seconds": baseline.seconds,
                "new_client_p50_seconds": quantile((c.seconds for c in tally.calls), 0.5),
                "fds_back_seconds": back,
            }
        )
        result.load += (
            f" ({totals['connected']:,} connected, {totals['handshaken']:,} answered by the server; "
            f"server {server_fds or 0:,} fds, {(during['rss'] or 0) / 2**20:,.0f} MB)"
        )
        result.check(
            f"a new client decides at once (first call under {t.answer_at_once_seconds:g} s)",
            first.code == "OK" and first.seconds <= t.answer_at_once_seconds,
            f"first call {first.code} in {first.seconds * 1000:,.0f} ms (without the idle connections "
            f"{baseline.seconds * 1000:,.0f} ms); 20 calls: {result.codes}",
        )
        result.check(
            "every call of the new client OK",
            set(result.codes) == {"OK"},
            f"{result.codes}",
        )
        result.check(
            "the server's descriptors come back once the connections close",
            back is not None,
            f"{result.fds_before} before, {server_fds} with the connections, {result.fds_after} after",
        )
    return result


READING_CLIENT = (("grpc.http2.bdp_probe", 0),)
"""Channel options of a client whose transport grants a stream more window only as its application reads, as
grpc-go, grpc-java and Node's clients do: the HTTP/2 flow control a stream's pace rests on. grpcio (gRPC
C-core) by default probes the bandwidth and grows its windows whether the application reads or not."""
PACED_RATE = 20.0
"""Decide calls per second of the caller whose latency is watched while the streams stall."""


@dataclasses.dataclass
class _Stall:
    """What one set of stalled streams cost the server over the measured window."""

    settle: float
    seconds: float
    cpu_share: float
    decided: int
    """Decisions recorded during the window."""
    written: int
    written_in_window: int
    read: int
    client_cpu_share: float
    rss_during: float
    decide_p50: float | None = None
    """Decide's p50 for a caller at :data:`PACED_RATE` calls/s during the window."""


async def _stalled(
    s: Stack, n: int, options: Sequence[tuple[str, Any]], settle: float, window: float, watch: bool
) -> _Stall:
    """``n`` DecideStreams (each over a connection of its own, with channel ``options``) that write requests
    as fast as they may and read only the first answer; once the server stops deciding (at most ``settle``
    seconds), its CPU and decisions over ``window`` seconds, and with ``watch`` the latency of a caller
    of Decide meanwhile. The streams are cancelled on the way out."""
    written = [0] * n
    read = [0] * n
    async with open_channels(s.nba.port, n, options) as stubs:
        calls = [stub.DecideStream() for stub in stubs]

        async def writer(k: int) -> None:
            call = calls[k]
            for i in range(STREAM_WRITES):
                await call.write(s.requests[(k * 7919 + i) % len(s.requests)])
                written[k] += 1
                if i == 0:
                    await asyncio.wait_for(call.read(), 5.0)  # the one answer read
                    read[k] += 1

        writers = [asyncio.create_task(writer(k)) for k in range(n)]
        try:
            # The streams fill what windows there are and the server answers what it read: until it
            # stops deciding (the clients read nothing more), at most `settle`.
            began = time.monotonic()
            last = -1.0
            while time.monotonic() - began < settle:
                await asyncio.sleep(0.25)  # two scrapes apart: is the server still deciding?
                now = _decisions(await asyncio.to_thread(scrape, s.nba.metrics_url))
                if now == last:
                    break
                last = now
            settled_after = time.monotonic() - began
            written_before = sum(written)
            decisions_start = _decisions(await asyncio.to_thread(scrape, s.nba.metrics_url))
            start, cpu_start, own_start = time.monotonic(), cpu_seconds(s.nba.pid), time.process_time()
            if watch:
                decide_p50 = await _decide_p50(s, start + window)
            else:
                decide_p50 = None
                await asyncio.sleep(window)  # the window the server's CPU is measured over
            end, cpu_end, own_end = time.monotonic(), cpu_seconds(s.nba.pid), time.process_time()
            decisions_end = _decisions(await asyncio.to_thread(scrape, s.nba.metrics_url))
            rss = float(s.nba.stats()["rss"] or 0)
        finally:
            for call in calls:
                call.cancel()
            for task in writers:
                task.cancel()
            await asyncio.gather(*writers, return_exceptions=True)
    seconds = end - start
    return _Stall(
        settled_after,
        seconds,
        (cpu_end - cpu_start) / seconds,
        int(decisions_end - decisions_start),
        sum(written),
        sum(written) - written_before,
        sum(read),
        (own_end - own_start) / seconds,
        rss,
        decide_p50,
    )


async def _decide_p50(s: Stack, until: float) -> float | None:
    """Decide's p50 for a caller at :data:`PACED_RATE` calls/s until ``until`` (monotonic)."""
    tally = Tally()
    async with open_channels(s.nba.port) as (stub,):
        await paced([stub], s.requests, PACED_RATE, until, 5.0, tally)
    return quantile([c.seconds for c in tally.calls if c.code == "OK"], 0.5)


def stalled_streams(config: ChaosConfig, progress: Progress) -> FaultResult:
    """``stalled_streams`` DecideStream calls that write requests as fast as they may and stop reading
    after the first answer, from a client whose transport respects flow control (:data:`READING_CLIENT`):
    the server should stop deciding for them and its CPU over ``stall_window`` stay near idle; a call right
    after should answer at once. Then the same from grpcio's default client, whose transport keeps reading
    for its application (measured: what the server spends, and a Decide caller's latency meanwhile)."""
    t = config.targets
    n = config.stalled_streams
    result = FaultResult(
        "stalled_streams",
        f"{n} DecideStreams that stop reading",
        load=f"{n} streams writing, not reading",
        recovery="a call right after",
    )
    with stack(config, progress, "stalled-streams") as s:
        asyncio.run(warm(s.nba.port, s.requests))
        result.rss_before, result.fds_before = s.nba.stats().values()
        idle_from, idle_cpu = time.monotonic(), cpu_seconds(s.nba.pid)
        time.sleep(1.0)  # the server's idle CPU over a second, the baseline
        idle_share = (cpu_seconds(s.nba.pid) - idle_cpu) / (time.monotonic() - idle_from)
        before = scrape(s.nba.metrics_url)

        async def stall() -> tuple[_Stall, Call]:
            got = await _stalled(s, n, READING_CLIENT, config.stall_settle, config.stall_window, watch=False)
            return got, await probe(s.nba.port, s.requests[0])

        progress(f"  {n} streams that stop reading; server CPU over {config.stall_window:g} s ...")
        stalled, after_call = asyncio.run(stall())
        after = settled(s.nba.metrics_url)
        base_fds = result.fds_before or 0
        poll(lambda: (fd_count(s.nba.pid) or 0) <= base_fds + 2, 10.0, 0.1)
        result.rss_after, result.fds_after = s.nba.stats().values()
        result.codes = {"OK (stream answers read)": stalled.read}
        result.returned = stalled.read
        result.recorded = int(_decisions(after) - _decisions(before))
        result.recovery_seconds = after_call.seconds
        share = stalled.cpu_share
        result.details.update(
            {
                "server_idle_cpu_share": idle_share,
                "reading_client": dataclasses.asdict(stalled),
                "after_call": {"code": after_call.code, "seconds": after_call.seconds},
            }
        )
        result.load += f" ({stalled.written:,} requests written, server CPU {share:.0%} of a core)"
        result.check(
            f"the stalled streams stop costing CPU (server under {t.stalled_cpu_share:.0%} of a core above idle)",
            share - idle_share <= t.stalled_cpu_share,
            f"{share:.1%} of a core over {stalled.seconds:.1f} s (idle {idle_share:.1%}); the clients wrote "
            f"{stalled.written_in_window:,} requests in the window, {stalled.written:,} in all; "
            f"{result.recorded:,} decisions recorded for {stalled.read} answers read",
        )
        result.check(
            "the stalled streams stop deciding (no decision recorded while nobody reads)",
            stalled.decided == 0,
            f"{stalled.decided:,} decisions recorded in the {stalled.seconds:.1f} s window while the clients read "
            f"nothing (stopped after {stalled.settle:.2f} s)",
        )
        _at_once(result, after_call, t.answer_at_once_seconds, "the streams are cancelled")

        progress(f"  the same from grpcio's default client (bandwidth probing), {config.stall_window:g} s ...")
        quiet_p50 = asyncio.run(_decide_p50(s, time.monotonic() + 1.0))
        probing = asyncio.run(_stalled(s, n, (), 1.0, config.stall_window, watch=True))
        result.details["probing_client"] = dataclasses.asdict(probing)
        result.details["decide_p50_quiet"] = quiet_p50
        result.note(
            "grpcio's default client (its transport reads for the application)",
            f"{probing.decided:,} decisions recorded in {probing.seconds:.1f} s for streams whose application "
            f"read nothing, server {probing.cpu_share:.0%} of a core; a Decide caller's p50 "
            f"{_ms(quiet_p50)} before, {_ms(probing.decide_p50)} meanwhile (stream messages go after Decide "
            "calls); set grpc.http2.bdp_probe=0 on a streaming client, or read (docs/reliability.md)",
        )
        if os.environ.get("NBA_CHAOS_DEBUG"):
            progress(f"  {result.details}")
    return result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"
