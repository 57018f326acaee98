"""The campaign scheduler (``nba scheduler``): starts the live policy's scheduled campaigns when they are due.

**One active instance.** Every instance competes for :data:`~nba_service.store.keys.SCHEDULER_LOCK`, the
learner's lock on another key, renewed from a thread (:class:`~nba_service.campaigns.lease.LockKeeper`); the
others wait as standbys and the first to find the lock lapsed (its holder died) takes over.

**What is due.** Each round (every ``poll_seconds``) the active instance loads the live policy version if it
changed (a newly published campaign is picked up, one removed is forgotten) and, for each campaign whose
``schedule`` is cron-like (``once`` campaigns have no start time and are started by hand), computes the next time
of its schedule, in its ``timezone``, after the last occurrence handled. That occurrence is kept in Redis
(:data:`~nba_service.store.keys.SCHEDULER_STATE`, per campaign: the schedule and the last occurrence), so a
scheduler that takes over or restarts continues where the last one stopped. A campaign seen for the first time
counts from the publication of the live policy version; one whose schedule or time zone changed, from now.

**Missed occurrences run once.** When the next occurrence is due, the run is for the latest occurrence at or
before now: however many passed while no scheduler ran, the campaign runs once. Claiming the occurrence is a
compare-and-set on its state, so two schedulers (one paused past its lock's TTL) never start it twice.

**Priority.** Campaigns due in the same round start in order of ``priority`` (highest first), then of their
occurrence, then of their id; runs work one at a time in the scheduler's process, with the campaign's lease
(:mod:`nba_service.campaigns.lease`): a campaign being run by hand is skipped for that occurrence
(``busy``), and so is one whose last run is not done (``previous_run_not_done``: suspended, or interrupted by
hand). A run the scheduler started and that was interrupted (its process died or stopped) is resumed by the
active scheduler. Each start is a run in the campaign's history (``nba campaign history``) with
``started_by: scheduler <occurrence>``, logged and counted
(``nba_campaign_scheduled_runs_total``, ``nba_campaign_schedule_skipped_total``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge

from nba_service.campaigns.cron import Cron
from nba_service.campaigns.lease import LEASE_TTL_MS, LockKeeper, new_owner
from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.run import (
    BATCH_SIZE,
    RUNNING,
    CampaignRunner,
    RunBusyError,
    RunReport,
    RunStateError,
    RunStore,
)
from nba_service.campaigns.session import campaign_session
from nba_service.observability.metrics import Metrics
from nba_service.policies.model import CampaignSpec
from nba_service.settings import Settings
from nba_service.store import keys
from nba_service.store.connect import RedisTarget
from nba_service.store.outcome_stream import LearnerLock
from nba_service.store.policy_store import PolicyStore

__all__ = ["LOCK_TTL_MS", "SCHEDULED_BY", "Scheduler", "SchedulerMetrics"]

log = logging.getLogger(__name__)

LOCK_TTL_MS = 10_000
"""A dead active scheduler's lock lapses after this long; a standby then takes over."""
SCHEDULED_BY = "scheduler"
"""The ``started_by`` of a run the scheduler started (followed by its occurrence)."""
_CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


class _Stopping(Exception):
    """The scheduler is stopping: the run it works stops after its batch (resumed by the next scheduler)."""


class SchedulerMetrics:
    """The scheduler's own metrics (beside the runs' :class:`CampaignMetrics` and the decisions' metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge(
            "nba_scheduler_active",
            "1 while this scheduler holds the lock (the active one), 0 on standby.",
            registry=registry,
        )
        self.started = Counter(
            "nba_campaign_scheduled_runs",
            "Runs the scheduler started (kind occurrence: for a due occurrence; resumed: an interrupted run of "
            "the scheduler's continued).",
            ["campaign", "kind"],
            registry=registry,
        )
        self.skipped = Counter(
            "nba_campaign_schedule_skipped",
            "Due occurrences not run, by reason: busy (another process runs the campaign), previous_run_not_done.",
            ["campaign", "reason"],
            registry=registry,
        )
        self.next_run = Gauge(
            "nba_campaign_next_run_timestamp_seconds",
            "When the campaign's next scheduled occurrence is due (Unix time).",
            ["campaign"],
            registry=registry,
        )


@dataclasses.dataclass(slots=True)
class _Due:
    campaign: CampaignSpec
    occurrence: float
    raw: str
    """The campaign's state as read (compare-and-set)."""
    state: dict[str, Any]


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")


class Scheduler:
    """Run with :meth:`run` until ``stop`` is set; ``clock`` gives the time (epoch seconds)."""

    def __init__(
        self,
        settings: Settings,
        target: RedisTarget,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 1.0,
        lock_ttl_ms: int = LOCK_TTL_MS,
        lease_ttl_ms: int = LEASE_TTL_MS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.settings = settings
        self.target = target
        self.name = name or new_owner()
        self.registry = registry or CollectorRegistry()
        self.metrics = SchedulerMetrics(self.registry)
        self.campaign_metrics = CampaignMetrics(self.registry)
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.lock_ttl_ms = lock_ttl_ms
        self.lease_ttl_ms = lease_ttl_ms
        self.batch_size = batch_size
        self.active = threading.Event()
        """Set while this instance holds the lock."""
        self.rounds = 0
        """Rounds done as the active instance (tests wait on it)."""
        self.release_on_stop = True
        """False: stop as if the process died (the lock lapses after its TTL; tests)."""
        self._crons: dict[str, Cron | None] = {}
        self._stop: threading.Event | None = None

    # --- the loop -------------------------------------------------------------------

    async def run(self, stop: threading.Event) -> None:
        """Hold or wait for the lock; while active, start what is due every ``poll_seconds``."""
        self._stop = stop
        async with campaign_session(self.settings, self.target, Metrics(self.registry)) as (dataplane, client):
            lock = LearnerLock(client, self.name, self.lock_ttl_ms, key=keys.SCHEDULER_LOCK)
            keeper = LockKeeper(lock, standby=True, on_change=self._on_lock)
            keeper.start()
            try:
                while not stop.is_set():
                    if keeper.held:
                        try:
                            await self.round(dataplane, client)
                            self.rounds += 1
                        except _Stopping:
                            break
                        except redis.RedisError as exc:
                            log.warning("scheduler %s: %s; retrying", self.name, exc)
                        except Exception:  # a run that failed (Redis lost mid-run, ...): the next round goes on
                            log.exception("scheduler %s: a round failed; the next one starts as usual", self.name)
                    await asyncio.to_thread(stop.wait, self.poll_seconds)
            finally:
                keeper.stop(release=self.release_on_stop)
                self._on_lock(False)

    def _on_lock(self, held: bool) -> None:
        if held == self.active.is_set():
            return
        self.metrics.active.set(1 if held else 0)
        if held:
            self.active.set()
            log.info("scheduler %s active (the others wait as standbys)", self.name)
        else:
            self.active.clear()
            log.info("scheduler %s no longer active", self.name)

    async def round(self, dataplane: Any, client: redis.Redis) -> None:
        """Reload the live policy if it changed; resume the scheduler's interrupted runs; start what is due."""
        await dataplane.refresh_policy()
        await dataplane.refresh_models()
        snapshot = dataplane.snapshot
        if snapshot is None:
            return
        scheduled = [c for c in snapshot.policy.campaigns if c.schedule != "once" and self._cron(c) is not None]
        store = RunStore(client)
        for campaign in scheduled:
            latest = await asyncio.to_thread(store.latest, campaign.id)
            if latest is not None and latest.status == RUNNING and latest.started_by.startswith(SCHEDULED_BY):
                await self._start(dataplane, client, campaign, latest, "resumed")
        due = []
        now = self.clock()
        for campaign in scheduled:
            item = await asyncio.to_thread(self._due, client, campaign, now)
            if item is not None:
                due.append(item)
        due.sort(key=lambda d: (-d.campaign.priority, d.occurrence, d.campaign.id))
        for item in due:
            await self._start_due(dataplane, client, item)

    def _cron(self, campaign: CampaignSpec) -> Cron | None:
        if campaign.schedule not in self._crons:
            try:
                self._crons[campaign.schedule] = Cron.parse(campaign.schedule)
            except ValueError as exc:  # the policy set was validated: only an older or foreign one
                log.error("campaign %s: schedule %r: %s; not scheduled", campaign.id, campaign.schedule, exc)
                self._crons[campaign.schedule] = None
        return self._crons[campaign.schedule]

    def _due(self, client: redis.Redis, campaign: CampaignSpec, now: float) -> _Due | None:
        """The campaign's due occurrence (the latest at or before ``now``), or None; its state is created or
        reset first when the campaign is new or its schedule changed."""
        cron = self._cron(campaign)
        assert cron is not None
        raw_bytes = client.hget(keys.SCHEDULER_STATE, campaign.id)
        raw = raw_bytes.decode() if isinstance(raw_bytes, bytes) else ""
        state = json.loads(raw) if raw else {}
        if state.get("schedule") != campaign.schedule or state.get("timezone") != campaign.timezone:
            since = now if state else _published_at(client, now)
            fresh = {"schedule": campaign.schedule, "timezone": campaign.timezone, "last": since, "run_id": ""}
            if not self._swap(client, campaign.id, raw, fresh):
                return None  # another scheduler wrote it meanwhile: next round
            log.info(
                "campaign %s scheduled (%s, %s): occurrences after %s",
                campaign.id,
                campaign.schedule,
                campaign.timezone,
                _when(since),
            )
            raw, state = json.dumps(fresh, sort_keys=True), fresh
        upcoming = cron.next_after(float(state["last"]), campaign.timezone)
        if upcoming is None:
            return None
        if upcoming > now:
            self.metrics.next_run.labels(campaign.id).set(upcoming)
            return None
        occurrence = cron.last_at_or_before(now, campaign.timezone) or upcoming
        return _Due(campaign, occurrence, raw, state)

    def _swap(self, client: redis.Redis, campaign_id: str, expected: str, state: dict[str, Any]) -> bool:
        script: Any = client.register_script(_CAS_SCRIPT)
        done = script(keys=[keys.SCHEDULER_STATE], args=[campaign_id, expected, json.dumps(state, sort_keys=True)])
        return bool(done)

    async def _start_due(self, dataplane: Any, client: redis.Redis, item: _Due) -> None:
        campaign = item.campaign
        claimed = dict(item.state, last=item.occurrence, run_id="")
        if not await asyncio.to_thread(self._swap, client, campaign.id, item.raw, claimed):
            log.info("campaign %s: occurrence %s claimed by another scheduler", campaign.id, _when(item.occurrence))
            return
        passed = item.occurrence != _first_after(self._cron(campaign), item.state, campaign)
        if passed:
            log.warning(
                "campaign %s: occurrences since %s were missed (no scheduler ran); running once for %s",
                campaign.id,
                _when(float(item.state["last"])),
                _when(item.occurrence),
            )
        await self._start(dataplane, client, campaign, None, "occurrence", item.occurrence)

    async def _start(
        self,
        dataplane: Any,
        client: redis.Redis,
        campaign: CampaignSpec,
        report: RunReport | None,
        kind: str,
        occurrence: float | None = None,
    ) -> None:
        stop = self._stop

        def check(_: RunReport) -> None:
            if stop is not None and stop.is_set():
                raise _Stopping

        runner = CampaignRunner(
            dataplane,
            client,
            campaign,
            batch_size=self.batch_size,
            progress=check,
            metrics=self.campaign_metrics,
            lease_ttl_ms=self.lease_ttl_ms,
        )
        started_by = f"{SCHEDULED_BY} {_when(occurrence)}" if occurrence is not None else ""
        try:
            report = await asyncio.to_thread(runner.begin, report, started_by=started_by)
        except RunBusyError as exc:
            if kind == "occurrence":
                self.metrics.skipped.labels(campaign.id, "busy").inc()
                log.warning("campaign %s: occurrence %s skipped: %s", campaign.id, _when(occurrence or 0), exc)
            return
        except RunStateError as exc:
            if kind == "occurrence":
                self.metrics.skipped.labels(campaign.id, "previous_run_not_done").inc()
                log.warning("campaign %s: occurrence %s skipped: %s", campaign.id, _when(occurrence or 0), exc)
            return
        self.metrics.started.labels(campaign.id, kind).inc()
        log.info(
            "campaign %s: %s run %s (priority %g, policy version %s)",
            campaign.id,
            "started scheduled" if kind == "occurrence" else "resumed the interrupted",
            report.run_id,
            campaign.priority,
            report.policy_version,
        )
        try:
            report = await runner.run(report)
        except _Stopping:
            log.info(
                "campaign %s: run %s stopped with the scheduler; the next one resumes it", campaign.id, report.run_id
            )
            raise
        except RunStateError as exc:
            log.warning("campaign %s: run %s stopped: %s", campaign.id, report.run_id, exc)
            return
        log.info(
            "campaign %s: run %s %s: scanned %d, in segment %d, decided %d, delivered %d",
            campaign.id,
            report.run_id,
            report.status,
            report.scanned,
            report.in_segment,
            report.decided,
            report.total_delivered,
        )


def _first_after(cron: Cron | None, state: dict[str, Any], campaign: CampaignSpec) -> float | None:
    """The first occurrence after the state's last one."""
    return cron.next_after(float(state["last"]), campaign.timezone) if cron is not None else None


def _published_at(client: redis.Redis, default: float) -> float:
    """When the live policy version was published (a campaign seen for the first time counts from then)."""
    store = PolicyStore(client)
    live = store.live()
    if live is None:
        return default
    return store.load(live).published_at or default
