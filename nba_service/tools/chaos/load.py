"""The load the faults drive: grpc.aio clients in this process, every call with a deadline.

Each call is kept as a :class:`Call` (when it started and ended, its status code, the
decision id it returned), so a fault can split what it saw by phase afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc

from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc

__all__ = ["Call", "Tally", "burst", "closed_loop", "open_channels", "paced", "probe", "quantile"]

Stub = pb_grpc.DecisionServiceStub


@dataclasses.dataclass(slots=True)
class Call:
    """One call as the client saw it (``time.monotonic()`` seconds)."""

    start: float
    end: float
    code: str
    decision_id: str = ""

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclasses.dataclass
class Tally:
    """Every Decide and ReportOutcome call of a load, and the outcomes the server acknowledged."""

    calls: list[Call] = dataclasses.field(default_factory=list)
    outcomes: list[Call] = dataclasses.field(default_factory=list)
    acknowledged: list[str] = dataclasses.field(default_factory=list)
    """Decision ids whose outcome the server answered OK with ``learned`` set: it promised to learn them."""
    in_flight: int = 0
    """Decide calls started and not yet answered."""

    def codes(self, since: float = float("-inf"), until: float = float("inf")) -> dict[str, int]:
        """Status codes of the Decide calls started in [since, until)."""
        counts = collections.Counter(c.code for c in self.calls if since <= c.start < until)
        return dict(counts)

    def all_codes(self) -> dict[str, int]:
        """Status codes of every call, Decide and ReportOutcome."""
        return dict(collections.Counter(c.code for c in (*self.calls, *self.outcomes)))

    def returned(self) -> list[str]:
        """Decision ids returned to the client."""
        return [c.decision_id for c in self.calls if c.code == "OK"]


def quantile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0-1, nearest rank) of ``values``; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextlib.asynccontextmanager
async def open_channels(
    port: int, count: int = 1, options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[list[Stub]]:
    """``count`` stubs to 127.0.0.1:``port``, each over a connection of its own (with channel ``options``);
    closed on the way out."""
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1), *options])
        for _ in range(count)
    ]
    try:
        yield [pb_grpc.DecisionServiceStub(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()


async def _outcome(stub: Stub, decision_id: str, deadline: float, tally: Tally) -> None:
    started = time.monotonic()
    request = pb.OutcomeRequest(decision_id=decision_id, outcome=pb.OUTCOME_KIND_ACCEPTED, value=10.0)
    try:
        response = await stub.ReportOutcome(request, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        tally.outcomes.append(Call(started, time.monotonic(), exc.code().name, decision_id))
        return
    tally.outcomes.append(Call(started, time.monotonic(), "OK", decision_id))
    if response.learned:
        tally.acknowledged.append(decision_id)


async def decide(
    stub: Stub,
    request: pb.DecideRequest,
    deadline: float,
    tally: Tally,
    outcome_share: float = 0.0,
    rng: random.Random | None = None,
) -> Call:
    """One Decide; with ``outcome_share``, that share of the decisions with an action get an outcome."""
    started = time.monotonic()
    tally.in_flight += 1
    try:
        response = await stub.Decide(request, timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        call = Call(started, time.monotonic(), exc.code().name)
        tally.calls.append(call)
        return call
    finally:
        tally.in_flight -= 1
    call = Call(started, time.monotonic(), "OK", response.decision_id)
    tally.calls.append(call)
    if outcome_share and not response.no_action and (rng or random).random() < outcome_share:
        await _outcome(stub, response.decision_id, deadline, tally)
    return call


async def paced(
    stubs: Sequence[Stub],
    requests: Sequence[pb.DecideRequest],
    rate: float,
    until: float,
    deadline: float,
    tally: Tally,
    outcome_share: float = 0.0,
    seed: int = 1,
    stop: asyncio.Event | None = None,
) -> None:
    """Start a Decide every ``1 / rate`` seconds until ``until`` (monotonic) or ``stop``, whatever the
    answers; then wait for the last ones (each ends by its deadline)."""
    rng = random.Random(seed)
    pending: set[asyncio.Task[Call]] = set()
    interval = 1.0 / rate
    next_at = time.monotonic()
    i = 0
    while next_at < until and not (stop is not None and stop.is_set()):
        now = time.monotonic()
        if now < next_at:
            await asyncio.sleep(next_at - now)  # pacing the load
        task = asyncio.create_task(
            decide(stubs[i % len(stubs)], requests[i % len(requests)], deadline, tally, outcome_share, rng)
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        next_at += interval
    if pending:
        await asyncio.wait(pending, timeout=2 * deadline + 5)


async def closed_loop(
    stubs: Sequence[Stub],
    requests: Sequence[pb.DecideRequest],
    callers: int,
    seconds: float,
    deadline: float,
    tally: Tally,
    *,
    stop: asyncio.Event | None = None,
    outcome_share: float = 0.0,
    backoff: float = 0.0,
    seed: int = 1,
) -> float:
    """``callers`` callers each calling Decide in a loop for ``seconds`` (or until ``stop``), each
    waiting ``backoff`` after a failed call; the seconds it took until the last one ended."""
    until = time.monotonic() + seconds
    started = time.monotonic()
    rng = random.Random(seed)

    async def caller(k: int) -> None:
        i = k
        stub = stubs[k % len(stubs)]
        while time.monotonic() < until and not (stop is not None and stop.is_set()):
            call = await decide(stub, requests[i % len(requests)], deadline, tally, outcome_share, rng)
            i += callers
            if backoff and call.code != "OK":
                await asyncio.sleep(backoff)  # a client's pause before it tries again

    await asyncio.gather(*(caller(k) for k in range(callers)))
    return time.monotonic() - started


async def burst(
    stubs: Sequence[Stub], requests: Sequence[pb.DecideRequest], count: int, deadline: float, tally: Tally
) -> float:
    """``count`` Decide calls started at once; the seconds until the last one ended."""
    started = time.monotonic()
    await asyncio.gather(
        *(decide(stubs[i % len(stubs)], requests[i % len(requests)], deadline, tally) for i in range(count))
    )
    return time.monotonic() - started


async def probe(port: int, request: pb.DecideRequest, deadline: float = 5.0) -> Call:
    """One Decide from a new client (a connection of its own): what a caller arriving now sees."""
    async with open_channels(port) as (stub,):
        return await decide(stub, request, deadline, Tally())


async def warm(port: int, requests: Sequence[pb.DecideRequest], count: int = 50, deadline: float = 5.0) -> Tally:
    """``count`` sequential calls, so the server has compiled, connected and cached what it needs."""
    tally = Tally()
    async with open_channels(port) as (stub,):
        for i in range(count):
            await decide(stub, requests[-1 - i % len(requests)], deadline, tally)
    return tally
