"""Admission control on its own: turns, the order they go in, refusals before any work."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from nba_service.api import admission as admission_module
from nba_service.api.admission import Admission, Draining, Overloaded, TooLate
from nba_service.observability.metrics import Metrics


def no_deadline() -> None:
    return None


def run(coroutine):
    return asyncio.run(coroutine)


def test_at_once_run_the_rest_wait_and_one_more_is_refused_with_a_hint():
    async def scenario():
        metrics = Metrics(CollectorRegistry())
        admission = Admission(limit=3, at_once=1, metrics=metrics)
        await admission.acquire(no_deadline)  # runs
        waiting = [asyncio.create_task(admission.acquire(no_deadline)) for _ in range(2)]
        await asyncio.sleep(0)
        assert admission.in_progress == 3 and admission.queued == 2 and not any(t.done() for t in waiting)
        with pytest.raises(Overloaded) as refused:
            await admission.acquire(no_deadline)
        assert refused.value.retry_after > 0
        assert metrics.registry.get_sample_value("nba_decisions_refused_total", {"reason": "overloaded"}) == 1
        assert metrics.registry.get_sample_value("nba_decisions_in_progress") == 3
        admission.release(0.01)  # the turn goes to a waiting one
        await asyncio.sleep(0)
        assert sum(t.done() for t in waiting) == 1 and admission.running == 1
        admission.release(0.01)
        await asyncio.gather(*waiting)
        admission.release(0.01)
        assert (admission.in_progress, admission.running, admission.queued) == (0, 0, 0)

    run(scenario())


def test_turns_go_in_arrival_order_while_the_queue_is_short_and_newest_first_once_it_is_long():
    async def order(service: float) -> list[int]:
        admission = Admission(limit=10, at_once=1)
        admission.service = service
        await admission.acquire(no_deadline)
        served: list[int] = []

        async def waiter(k: int) -> None:
            await admission.acquire(no_deadline)
            served.append(k)
            admission.release(service)

        tasks = []
        for k in range(4):
            tasks.append(asyncio.create_task(waiter(k)))
            await asyncio.sleep(0)
        admission.release(service)
        await asyncio.gather(*tasks)
        return served

    assert run(order(0.001)) == [0, 1, 2, 3]  # 4 ms of work waiting: first come, first served
    assert run(order(1.0))[0] == 3  # more work waiting than callers allow: the newest first


def test_a_deadline_shorter_than_the_expected_time_is_refused_before_taking_a_turn():
    async def scenario():
        admission = Admission(limit=10, at_once=1)
        admission.service = 0.2
        with pytest.raises(TooLate):
            await admission.acquire(lambda: 0.1)
        assert admission.in_progress == 0
        await admission.acquire(lambda: 0.5)
        admission.release(0.2)

    run(scenario())


def test_a_waiting_decision_whose_caller_leaves_gives_up_its_place():
    async def scenario():
        admission = Admission(limit=10, at_once=1)
        await admission.acquire(no_deadline)
        leaving = asyncio.create_task(admission.acquire(no_deadline))
        staying = asyncio.create_task(admission.acquire(no_deadline))
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        assert admission.in_progress == 2 and admission.queued == 1
        admission.release(0.01)
        await staying
        admission.release(0.01)
        assert (admission.in_progress, admission.running, admission.queued) == (0, 0, 0)

    run(scenario())


def test_a_decision_without_a_deadline_waits_at_most_max_wait(monkeypatch):
    async def scenario():
        monkeypatch.setattr(admission_module, "MAX_WAIT_SECONDS", 0.05)
        admission = Admission(limit=10, at_once=1)
        await admission.acquire(no_deadline)
        stale = asyncio.create_task(admission.acquire(no_deadline))
        await asyncio.sleep(0.1)  # longer than MAX_WAIT_SECONDS: a wait on the clock is what is tested
        fresh = asyncio.create_task(admission.acquire(no_deadline))
        await asyncio.sleep(0)
        admission.release(0.01)  # the stale one is refused, the turn goes on
        with pytest.raises(Overloaded):
            await stale
        await fresh
        admission.release(0.01)
        assert (admission.in_progress, admission.running, admission.queued) == (0, 0, 0)

    run(scenario())


def test_draining_refuses_new_decisions():
    async def scenario():
        admission = Admission(limit=10, at_once=1)
        admission.draining = True
        with pytest.raises(Draining):
            await admission.acquire(no_deadline)

    run(scenario())


def test_a_streams_decision_waits_behind_every_call():
    async def scenario():
        admission = Admission(limit=10, at_once=1)
        await admission.acquire(no_deadline)
        served: list[str] = []

        async def waiter(name: str, later: bool) -> None:
            await admission.acquire(no_deadline, later=later)
            served.append(name)
            admission.release(0.001)

        stream = asyncio.create_task(waiter("stream", True))
        await asyncio.sleep(0)
        call = asyncio.create_task(waiter("call", False))
        await asyncio.sleep(0)
        admission.release(0.001)
        await asyncio.gather(stream, call)
        assert served == ["call", "stream"]

    run(scenario())


def test_streams_hold_at_most_half_the_turns_so_a_call_finds_one_free():
    async def scenario():
        admission = Admission(limit=10, at_once=2)
        await admission.acquire(no_deadline, later=True)  # a stream's decision runs
        second = asyncio.create_task(admission.acquire(no_deadline, later=True))
        await asyncio.sleep(0)
        assert not second.done() and admission.running == 1  # its share is taken: it waits
        await admission.acquire(no_deadline)  # a call takes the free turn at once
        assert admission.running == 2
        admission.release(0.001, later=True)
        await second  # the stream's share is free again
        admission.release(0.001)
        admission.release(0.001, later=True)
        assert (admission.in_progress, admission.running, admission.running_later) == (0, 0, 0)
        assert (admission.queued, admission.deferred) == (0, 0)

    run(scenario())
