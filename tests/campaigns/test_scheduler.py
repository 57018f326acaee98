"""The campaign scheduler over a real Redis: one active instance of two, due runs by priority, missed occurrences
run once, hot reload of the policy set, failover to the standby (nba_service/campaigns/scheduler.py).

The two schedulers run in threads of this process and share a clock the test moves: the schedules are
weekly, so the test never waits for a real occurrence."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from nba_service.campaigns.cron import Cron
from nba_service.campaigns.run import RunStore
from nba_service.campaigns.scheduler import Scheduler
from nba_service.cli import main
from nba_service.policies.parser import read_policy_dir
from nba_service.store import keys
from nba_service.store.policy_store import PolicyStore
from tests.campaigns.test_campaign_run import SEGMENT, settings, target
from tests.conftest import SAMPLE_POLICIES, wait_until

WEEKLY = "0 9 * * 1"  # Mondays 09:00


def scheduled(campaign_id: str, schedule: str, priority: int, timezone: str = "UTC") -> str:
    return f"""  - id: {campaign_id}
    segment: "{SEGMENT}"
    offers: [overdraft_protection]
    event: atm_decline
    event_fields: {{balance: 0, currency: EUR}}
    schedule: "{schedule}"
    timezone: {timezone}
    priority: {priority}
"""


def publish(client: redis.Redis, *campaigns: str) -> float:
    """Publish the sample set with these campaigns; returns when (the scheduler counts new campaigns from then)."""
    files = read_policy_dir(SAMPLE_POLICIES)
    files["zz_scheduled.yaml"] = "campaigns:\n" + "".join(campaigns)
    store = PolicyStore(client)
    version = store.publish(files, author="tests", message="scheduled campaigns")
    return store.load(version).published_at


class Instance:
    """A scheduler in a thread of its own, on the shared clock."""

    def __init__(self, redis_url: str, name: str, clock: list[float]) -> None:
        self.scheduler = Scheduler(
            settings(redis_url),
            target(redis_url),
            name=name,
            clock=lambda: clock[0],
            poll_seconds=0.05,
            lock_ttl_ms=1000,
            batch_size=100,
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"scheduler-{name}")
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.scheduler.run(self.stop))
        except BaseException as exc:
            self.error = exc

    def die(self) -> None:
        """Stop as a killed process would: the lock is not released and lapses after its TTL."""
        self.scheduler.release_on_stop = False
        self.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert self.error is None, self.error

    def rounds_later(self, n: int = 3) -> None:
        """Wait until this (active) scheduler has done ``n`` more rounds."""
        seen = self.scheduler.rounds
        wait_until(lambda: self.scheduler.rounds >= seen + n, 30, f"{n} rounds of {self.scheduler.name}")


@pytest.fixture
def demo(redis_client: Any, redis_url: str) -> str:
    assert main(["policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url]) == 0
    assert main(["customers", "load", str(SAMPLE_POLICIES / "customers.jsonl"), "--redis-url", redis_url]) == 0
    return redis_url


@pytest.fixture
def instances(demo: str) -> Iterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for instance in started:
        if not instance.stop.is_set():
            instance.close()


def runs(client: redis.Redis, campaign: str) -> list[Any]:
    return RunStore(client).runs(campaign)


def test_one_active_scheduler_runs_due_campaigns_by_priority_once_per_missed_span_and_fails_over(
    demo, redis_client, instances
):
    campaigns = (scheduled("weekly_low", WEEKLY, 1, "Europe/Madrid"), scheduled("weekly_high", WEEKLY, 50))
    published = publish(redis_client, *campaigns)
    madrid = Cron.parse(WEEKLY).next_after(published, "Europe/Madrid")
    utc = Cron.parse(WEEKLY).next_after(published, "UTC")
    assert madrid is not None and utc is not None and madrid < utc  # 09:00 in Madrid comes before 09:00 UTC
    clock = [published + 1]
    instances += [Instance(demo, "first", clock), Instance(demo, "second", clock)]
    wait_until(lambda: any(i.scheduler.active.is_set() for i in instances), 30, "an active scheduler")
    active, standby = sorted(instances, key=lambda i: not i.scheduler.active.is_set())
    active.rounds_later()
    assert not standby.scheduler.active.is_set() and standby.scheduler.rounds == 0
    assert runs(redis_client, "weekly_low") == runs(redis_client, "weekly_high") == []  # nothing due yet

    clock[0] = utc + 60  # both due: the higher priority starts first, though its occurrence is the later one
    wait_until(lambda: len(runs(redis_client, "weekly_low")) == 1, 120, "the first scheduled runs")
    wait_until(lambda: runs(redis_client, "weekly_low")[0].status == "done", 120, "the low-priority run to end")
    [high], [low] = runs(redis_client, "weekly_high"), runs(redis_client, "weekly_low")
    assert high.status == low.status == "done" and high.started < low.started
    assert high.decided == low.decided == 147
    stamp = datetime.datetime.fromtimestamp(madrid, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")
    assert low.started_by == f"scheduler {stamp}"
    assert runs(redis_client, "overdraft_cross_sell") == []  # the sample's `once` campaign is started by hand

    clock[0] = utc + 3 * 7 * 86400 + 60  # three occurrences passed while no round ran: one run, for the latest
    wait_until(lambda: len(runs(redis_client, "weekly_low")) == 2, 60, "the runs of the missed occurrences")
    wait_until(lambda: runs(redis_client, "weekly_low")[1].status == "done", 120, "the second low-priority run")
    active.rounds_later()
    assert len(runs(redis_client, "weekly_low")) == len(runs(redis_client, "weekly_high")) == 2
    latest = datetime.datetime.fromtimestamp(madrid + 3 * 7 * 86400, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")
    assert runs(redis_client, "weekly_low")[1].started_by == f"scheduler {latest}"

    # hot reload: a campaign published now is picked up by the running scheduler (its occurrences since the
    # publication have passed on the test's clock: it runs once)
    publish(redis_client, *campaigns, scheduled("daily", "30 6 * * *", 5))
    wait_until(lambda: len(runs(redis_client, "daily")) == 1, 60, "the newly published campaign's run")

    # the active scheduler dies: the standby takes over when its lock lapses, from the state it left
    active.die()
    wait_until(standby.scheduler.active.is_set, 30, "the standby to take over")
    standby.rounds_later()
    assert len(runs(redis_client, "weekly_low")) == 2 and len(runs(redis_client, "daily")) == 1  # nothing again
    clock[0] += 7 * 86400
    wait_until(lambda: len(runs(redis_client, "weekly_low")) == 3, 120, "the next occurrence, run by the standby")
    state = redis_client.hgetall(keys.SCHEDULER_STATE)
    assert set(state) == {b"weekly_low", b"weekly_high", b"daily"}
    assert redis_client.get(keys.SCHEDULER_LOCK) == standby.scheduler.name.encode()
    counted = standby.scheduler.registry.get_sample_value
    assert counted("nba_campaign_scheduled_runs_total", {"campaign": "weekly_low", "kind": "occurrence"}) == 1
    assert counted("nba_scheduler_active") == 1
