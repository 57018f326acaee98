"""A campaign run: scan the customers, keep the segment, decide and record each like a live decision, deliver.

One batch at a time (:meth:`CampaignRunner.run`):

1. **scan**: one ``SCAN MATCH nba:{*}:c:*:profile`` page per Redis node (each primary of a cluster), its
   cursor checkpointed after the batch;
2. **read**: every scanned customer's context (:meth:`StateStore.read_context`), all issued at once on the
   state store's pipelined script connection: one round trip for the batch;
3. **segment**: the campaign's rule over each context (the compiled rule language, no event fields);
4. **claim**: ``SET NX`` of the customer's claim key (:func:`nba_service.store.keys.campaign_claim`, TTL the
   campaign's ``repeat_after``, none without it), pipelined; a customer already claimed by another run (or by
   this one before a crash) is not decided again;
5. **decide**: the live engine, models and exploration (``DataPlane._decide``) on the campaign's plan
   (:mod:`nba_service.campaigns.plan`), one customer after the other so the run's per-channel volume limits
   are exact (a channel that reaches its limit leaves the plan);
6. **record**: :meth:`StateStore.write_decision`, the live write (decision, journey, contact, pending outcome,
   budget unit), all the batch's writes issued at once (pipelined); a write refused because a live decision
   contacted the customer meanwhile is read and decided again;
7. **deliver**: for each action, ``XADD`` to the channel's stream (:func:`nba_service.store.keys.deliveries`)
   and the claim's value set to ``<run>|<channel>|<offer>``; a claim whose decision took no action is
   deleted (the customer can be reached by a later run);
8. **checkpoint**: the run's hash (:func:`nba_service.store.keys.campaign_run`) gets the cursors and the
   counters in one ``HSET``.

Safe to stop and start: killed anywhere, ``resume`` starts from the last checkpoint. The batch in flight is
scanned again; its customers claimed by this run are counted from their claim (decided, and delivered on the
channel it names) and not decided again, so no customer gets two deliveries and the totals are those of an
uninterrupted run. The window: a process killed between a decision's write and its delivery's ``XADD`` leaves
the customer claimed without a delivery (at most once, never twice: the claim is what every later attempt
checks first); between the ``XADD`` and the claim's update, the delivery exists and the counters miss it.

``deliver_after`` is the later of now, the quiet-hours deferral the decision carries (a channel with
``on_quiet_hours: defer``) and the start of the campaign's ``send_window`` in the customer's time zone when
that time is outside it: a send outside the window is scheduled, not dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import pathlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.plan import CAMPAIGN_ORIGIN, campaign_event, campaign_snapshot
from nba_service.dataplane import CONTENTION_RETRIES, DataPlane
from nba_service.domain import CustomerContext, Decision, DecisionRequest, NoPolicyError, WriteResult
from nba_service.domain.localtime import local_time, next_local_time
from nba_service.policies.model import CampaignSpec
from nba_service.policies.scope import evaluation_globals
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.store import codec, keys
from nba_service.store.state import Budget, budget_key

__all__ = [
    "BATCH_SIZE",
    "CampaignRunner",
    "RunReport",
    "RunStateError",
    "RunStore",
    "deliver_after",
    "find_campaign",
]

BATCH_SIZE = 5000
"""Keys a SCAN page asks each node for (``COUNT``): a batch is the profiles among them."""
RUNNING, SUSPENDED, DONE = "running", "suspended", "done"
_GLOBALS = evaluation_globals()
_JOURNEY_NAMES = {"_f_count_events", "_f_days_since", "open_cart_value", "_f_request_attr"}
"""What a rule reads beyond the profile (the journey, open journeys, the request)."""

Progress = Callable[["RunReport"], None]
"""Called after each checkpointed batch with the run's figures (a progress line; raising stops the run)."""


class RunStateError(ValueError):
    """A run cannot start, resume or change state as asked (the message says why)."""


@dataclasses.dataclass(slots=True)
class RunReport:
    """A run's state and figures: what ``nba campaign status`` shows and the run's hash holds."""

    campaign: str
    run_id: str
    status: str = RUNNING
    dry_run: bool = False
    started: float = 0.0
    updated: float = 0.0
    policy_version: str = ""
    cursors: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per Redis node, the SCAN cursor to continue from (-1: that node is scanned)."""
    scanned: int = 0
    in_segment: int = 0
    decided: int = 0
    """Decisions recorded (an action or none)."""
    delivered: Counter[str] = dataclasses.field(default_factory=Counter)
    """Deliveries per channel (in a dry run: what would be delivered)."""
    suppressed: Counter[str] = dataclasses.field(default_factory=Counter)
    """Customers of the segment not delivered to, by reason (``already_reached``, or the decision's no-action
    code: ``frequency_cap``, ``nothing_allowed``, ``below_threshold`` ...)."""
    by_offer: Counter[str] = dataclasses.field(default_factory=Counter)
    """Deliveries per ``offer|channel``."""
    ended: str = ""
    """Why a finished run ended early (``--limit``, ``max_total``), empty otherwise."""

    @property
    def total_delivered(self) -> int:
        return sum(self.delivered.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "run_id": self.run_id,
            "status": self.status,
            "dry_run": self.dry_run,
            "started": self.started,
            "updated": self.updated,
            "policy_version": self.policy_version,
            "scanned": self.scanned,
            "in_segment": self.in_segment,
            "decided": self.decided,
            "delivered": dict(sorted(self.delivered.items())),
            "delivered_total": self.total_delivered,
            "suppressed": dict(sorted(self.suppressed.items())),
            "by_offer": dict(sorted(self.by_offer.items())),
            "ended": self.ended,
        }

    def to_hash(self) -> dict[str, str]:
        fields = {
            "campaign": self.campaign,
            "run_id": self.run_id,
            "status": self.status,
            "started": f"{self.started:.3f}",
            "updated": f"{self.updated:.3f}",
            "policy_version": self.policy_version,
            "cursors": json.dumps(self.cursors, sort_keys=True),
            "ended": self.ended,
            "n:scanned": str(self.scanned),
            "n:in_segment": str(self.in_segment),
            "n:decided": str(self.decided),
        }
        for prefix, counts in (
            ("delivered", self.delivered),
            ("suppressed", self.suppressed),
            ("offer", self.by_offer),
        ):
            fields.update({f"n:{prefix}:{name}": str(n) for name, n in counts.items()})
        return fields

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> RunReport:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        report = cls(
            campaign=h.get("campaign", ""),
            run_id=h.get("run_id", ""),
            status=h.get("status", ""),
            started=float(h.get("started", 0) or 0),
            updated=float(h.get("updated", 0) or 0),
            policy_version=h.get("policy_version", ""),
            cursors={str(k): int(v) for k, v in json.loads(h.get("cursors", "{}")).items()},
            ended=h.get("ended", ""),
            scanned=int(h.get("n:scanned", 0)),
            in_segment=int(h.get("n:in_segment", 0)),
            decided=int(h.get("n:decided", 0)),
        )
        for field, value in h.items():
            kind, _, name = field.removeprefix("n:").partition(":")
            if not field.startswith("n:") or not name:
                continue
            target = {"delivered": report.delivered, "suppressed": report.suppressed, "offer": report.by_offer}.get(
                kind
            )
            if target is not None:
                target[name] = int(value)
        return report


class RunStore:
    """The runs of the campaigns in Redis (on the global slot): their hashes and each campaign's run ids."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis: Any = client  # bytes replies (no decode_responses); typed loosely as redis-py's stubs are

    def save(self, report: RunReport) -> None:
        """Write the whole state in one ``HSET`` (atomic: a checkpoint is all or nothing)."""
        report.updated = time.time()
        self._redis.hset(keys.campaign_run(report.campaign, report.run_id), mapping=report.to_hash())

    def add(self, report: RunReport) -> None:
        self.save(report)
        self._redis.zadd(keys.campaign_runs(report.campaign), {report.run_id: report.started})

    def load(self, campaign: str, run_id: str) -> RunReport | None:
        raw = self._redis.hgetall(keys.campaign_run(campaign, run_id))
        return RunReport.from_hash(raw) if raw else None

    def status(self, campaign: str, run_id: str) -> str:
        value = self._redis.hget(keys.campaign_run(campaign, run_id), "status")
        return value.decode() if value else ""

    def runs(self, campaign: str) -> list[RunReport]:
        """The campaign's runs, oldest first."""
        ids = [i.decode() for i in self._redis.zrange(keys.campaign_runs(campaign), 0, -1)]
        return [r for r in (self.load(campaign, i) for i in ids) if r is not None]

    def latest(self, campaign: str) -> RunReport | None:
        ids = self._redis.zrange(keys.campaign_runs(campaign), -1, -1)
        return self.load(campaign, ids[0].decode()) if ids else None

    def set_status(self, campaign: str, status: str, *, expect: Iterable[str]) -> RunReport:
        """Set the latest run's status (suspend: the running process stops after its batch)."""
        report = self.latest(campaign)
        if report is None:
            raise RunStateError(f"campaign {campaign} has no run")
        if report.status not in set(expect):
            raise RunStateError(f"run {report.run_id} of {campaign} is {report.status}")
        self._redis.hset(keys.campaign_run(campaign, report.run_id), "status", status)
        report.status = status
        return report


def find_campaign(snapshot: PolicySnapshot | None, name: str) -> CampaignSpec:
    """The live policy's campaign of id ``name``."""
    if snapshot is None:
        raise NoPolicyError("no policy set is published yet: run `nba policy publish DIR`")
    for campaign in snapshot.policy.campaigns:
        if campaign.id == name:
            return campaign
    known = ", ".join(c.id for c in snapshot.policy.campaigns) or "none"
    raise RunStateError(f"no campaign {name!r} in live policy version {snapshot.version} (campaigns: {known})")


def deliver_after(now: float, deferred: float | None, timezone: str, window: tuple[int, int] | None) -> float:
    """When to deliver: the later of ``now`` and a quiet-hours deferral, moved to the start of the send window
    (minutes of the customer's local day) when outside it.

    >>> import datetime
    >>> at = datetime.datetime(2026, 6, 10, 23, 10, tzinfo=datetime.UTC).timestamp()
    >>> datetime.datetime.fromtimestamp(deliver_after(at, None, "UTC", (540, 1200)), datetime.UTC).isoformat()
    '2026-06-11T09:00:00+00:00'
    """
    at = max(now, deferred or now)
    if window is None:
        return at
    local = local_time(at, timezone)
    minute = local.hour * 60 + local.minute
    start, end = window
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    return at if inside else next_local_time(at, timezone, start)


def _customer_id(key: bytes) -> str:
    text = key.decode()
    return text[text.index("}:c:") + 4 : -len(":profile")]


@dataclasses.dataclass(slots=True)
class _Pick:
    """A customer's decision in the batch, before its write."""

    ctx: CustomerContext
    decision: Decision
    shadow: dict[str, object] | None
    trial: str
    budget: Budget | None
    prior: float
    reward_on: str
    decision_id: str


class CampaignRunner:
    """Runs one campaign of the live policy over the customers in Redis (``dataplane`` started)."""

    def __init__(
        self,
        dataplane: DataPlane,
        client: redis.Redis,
        campaign: CampaignSpec,
        *,
        batch_size: int = BATCH_SIZE,
        progress: Progress | None = None,
        export_dir: str | os.PathLike[str] | None = None,
        metrics: CampaignMetrics | None = None,
    ) -> None:
        self.dataplane = dataplane
        self._redis: Any = client  # bytes replies; a RedisCluster on a cluster
        self.campaign = campaign
        self.batch_size = batch_size
        self.progress = progress
        self.export_dir = pathlib.Path(export_dir) if export_dir else None
        self.store = RunStore(client)
        self.metrics = metrics
        self._event = campaign_event(campaign)
        self._exhausted: set[str] = set()
        names = set(campaign.segment.code.co_names) if campaign.segment is not None else set()
        self._profile_only = not names & _JOURNEY_NAMES
        """The segment reads the profile only: it is evaluated before the contexts are read."""

    # --- the run ----------------------------------------------------------------------

    def _nodes(self) -> list[str]:
        if isinstance(self._redis, redis.RedisCluster):
            return sorted(node.name for node in self._redis.get_primaries())
        return ["redis"]

    def _scan(self, node: str, cursor: int) -> tuple[int, list[bytes]]:
        client = self._redis
        if isinstance(client, redis.RedisCluster):
            target = client.get_node(node_name=node)
            if target is None:
                raise RunStateError(f"Redis node {node} of this run is gone (resharded?): start a new run")
            scan: Any = client.scan  # redis-py types a cluster's SCAN as a standalone one's
            cursors, found = scan(cursor=cursor, match=keys.PROFILE_PATTERN, count=self.batch_size, target_nodes=target)
            return int(cursors[node]), list(found)
        next_cursor, found = self._redis.scan(cursor=cursor, match=keys.PROFILE_PATTERN, count=self.batch_size)
        return int(next_cursor), list(found)

    def new_run(self, *, dry_run: bool = False) -> RunReport:
        """A new run of the campaign (refused while its latest run is not done)."""
        latest = self.store.latest(self.campaign.id)
        if latest is not None and latest.status != DONE and not dry_run:
            raise RunStateError(
                f"run {latest.run_id} of {self.campaign.id} is {latest.status}: "
                f"`nba campaign resume {self.campaign.id}` continues it"
            )
        now = time.time()
        stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%S")
        return RunReport(
            campaign=self.campaign.id,
            run_id=f"{stamp}-{os.urandom(3).hex()}",
            dry_run=dry_run,
            started=now,
            cursors=dict.fromkeys(self._nodes(), 0),
        )

    def resumable(self) -> RunReport:
        """The latest run, to resume (running after a crash, or suspended)."""
        latest = self.store.latest(self.campaign.id)
        if latest is None or latest.status == DONE:
            raise RunStateError(f"campaign {self.campaign.id} has no run to resume: `nba campaign run` starts one")
        return latest

    async def run(
        self, report: RunReport | None = None, *, dry_run: bool = False, limit: int | None = None
    ) -> RunReport:
        """Run (or, given a report from :meth:`resumable`, resume) the campaign; returns its figures.

        ``limit``: decide at most this many customers, then end the run. A dry run writes nothing
        (no run state, claims, decisions or deliveries) and counts what would be delivered.
        """
        snapshot = self.dataplane.snapshot
        if snapshot is None:
            raise NoPolicyError("no policy set is published yet: run `nba policy publish DIR`")
        if report is None:
            report = self.new_run(dry_run=dry_run)
            report.policy_version = snapshot.version
            if not dry_run:
                self.store.add(report)
        else:
            report.status = RUNNING
            self.store.save(report)
        if self.metrics is not None:
            self.metrics.start(report)
        try:
            return await self._run(snapshot, report, limit)
        finally:
            if self.metrics is not None:
                self.metrics.stop(report)

    async def _run(self, snapshot: PolicySnapshot, report: RunReport, limit: int | None) -> RunReport:
        dry_run = report.dry_run
        limits = self.campaign.max_per_channel
        closed = {ch for ch, most in limits.items() if report.delivered[ch] >= most}
        plan = campaign_snapshot(snapshot, self.campaign, closed)
        decided_here = 0
        while plan is not None and any(cursor >= 0 for cursor in report.cursors.values()):
            for node in [n for n, c in report.cursors.items() if c >= 0]:
                next_cursor, found = self._scan(node, report.cursors[node])
                budget = None if limit is None else limit - decided_here
                plan, decided, stop = await self._batch(snapshot, plan, report, found, budget)
                decided_here += decided
                report.cursors[node] = -1 if next_cursor == 0 else next_cursor
                if stop:
                    report.cursors = dict.fromkeys(report.cursors, -1)
                if not dry_run:
                    self.store.save(report)
                if self.metrics is not None:
                    self.metrics.observe(report)
                if self.progress is not None:
                    self.progress(report)
                if stop or plan is None:
                    break
            if not dry_run and self.store.status(self.campaign.id, report.run_id) == SUSPENDED:
                report.status = SUSPENDED
                return report
        if plan is None and not report.ended:
            report.ended = "every channel reached its limit"
        report.status = DONE
        if not dry_run:
            self.store.save(report)
        return report

    async def _batch(
        self,
        snapshot: PolicySnapshot,
        plan: PolicySnapshot | None,
        report: RunReport,
        found: list[bytes],
        budget: int | None,
    ) -> tuple[PolicySnapshot | None, int, bool]:
        """One batch: returns the plan (a channel may have closed), the customers decided and whether the run
        ends (its limit or ``max_total`` reached)."""
        report.scanned += len(found)
        if not found or plan is None:
            return plan, 0, False
        now = time.time()
        dataplane = self.dataplane
        customers = [_customer_id(k) for k in found]
        if self._profile_only:  # the profiles first (one pipelined GET each); the contexts of the segment only
            pipe = self._redis.pipeline(transaction=False)
            for key in found:
                pipe.get(key)
            profiles = [
                CustomerContext(codec.decode_profile(c, raw), now, CAMPAIGN_ORIGIN)
                for c, raw in zip(customers, pipe.execute(), strict=True)
                if raw is not None
            ]
            customers = [ctx.profile.customer_id for ctx in profiles if self._in_segment(snapshot, ctx, report)]
        contexts = await asyncio.gather(
            *(dataplane._read_context(snapshot, c, now, CAMPAIGN_ORIGIN, {}) for c in customers)
        )
        if self._profile_only:
            members = [ctx for ctx in contexts if ctx.profile.known]  # erased meanwhile: left out
        else:
            members = [ctx for ctx in contexts if self._in_segment(snapshot, ctx, report)]
        report.in_segment += len(members)
        claimed = self._claim(members, report)
        picks: list[_Pick] = []
        stop = False
        released: list[str] = []
        for index, ctx in enumerate(claimed):
            if (budget is not None and len(picks) >= budget) or self._total_reached(report, picks):
                report.ended = "--limit" if budget is not None and len(picks) >= budget else "max_total"
                released += [c.profile.customer_id for c in claimed[index:]]
                stop = True
                break
            pick, plan = self._decide(snapshot, plan, ctx, report, picks)
            if pick is None:  # no channel left in the plan
                released += [c.profile.customer_id for c in claimed[index:]]
                break
            picks.append(pick)
        if not report.dry_run:
            self._release(released)
            await self._record(snapshot, plan, picks, report)
        else:
            for pick in picks:
                self._count(pick.decision, report)
        return plan, len(picks), stop

    def _in_segment(self, snapshot: PolicySnapshot, ctx: CustomerContext, report: RunReport) -> bool:
        segment = self.campaign.segment
        if segment is None:
            return True
        try:
            return bool(eval(segment.code, _GLOBALS, snapshot.scope(ctx, self._event)))
        except Exception:  # a rule that fails on this customer leaves them out, counted
            report.suppressed["segment_error"] += 1
            return False

    def _claim(self, members: list[CustomerContext], report: RunReport) -> list[CustomerContext]:
        """The members this run may decide: claimed now (``SET NX``; a dry run only checks), and not reached
        by another run; those this run claimed before a crash are counted from their claim."""
        if not members:
            return []
        claims = [keys.campaign_claim(ctx.profile.customer_id, self.campaign.id) for ctx in members]
        pipe = self._redis.pipeline(transaction=False)
        ttl = self.campaign.repeat_after_seconds
        for key in claims:
            if report.dry_run:
                pipe.get(key)
            else:
                pipe.set(key, report.run_id, nx=True, ex=max(1, int(ttl)) if ttl else None)
        previous = pipe.execute()
        if not report.dry_run:  # SET NX GET needs Redis 7: the claims taken already are read in a second trip
            taken = [i for i, ok in enumerate(previous) if not ok]
            previous = [None] * len(members)
            if taken:
                pipe = self._redis.pipeline(transaction=False)
                for i in taken:
                    pipe.get(claims[i])
                for i, value in zip(taken, pipe.execute(), strict=True):
                    previous[i] = value if value is not None else b"-"  # expired meanwhile: left for a later run
        out = []
        for ctx, value in zip(members, previous, strict=True):
            if value is None:
                out.append(ctx)
                continue
            run_id, _, rest = value.decode().partition("|")
            if run_id != report.run_id:
                report.suppressed["already_reached"] += 1
                continue
            report.decided += 1  # decided by this run before it stopped: counted once more, not decided again
            channel, _, offer = rest.partition("|")
            if channel:
                report.delivered[channel] += 1
                report.by_offer[f"{offer}|{channel}"] += 1
        return out

    def _release(self, customers: list[str]) -> None:
        """Delete the claims of customers this run claimed and will not decide."""
        if not customers:
            return
        pipe = self._redis.pipeline(transaction=False)
        for customer in customers:
            pipe.delete(keys.campaign_claim(customer, self.campaign.id))
        pipe.execute()

    def _total_reached(self, report: RunReport, picks: list[_Pick]) -> bool:
        most = self.campaign.max_total
        return most is not None and report.total_delivered + sum(1 for p in picks if p.decision.offer_id) >= most

    def _decide(
        self,
        snapshot: PolicySnapshot,
        plan: PolicySnapshot | None,
        ctx: CustomerContext,
        report: RunReport,
        picks: list[_Pick],
    ) -> tuple[_Pick | None, PolicySnapshot | None]:
        """Decide one customer on ``plan``; a channel that would go over its volume limit is closed (the plan
        without it) and the customer decided again."""
        limits = self.campaign.max_per_channel
        if self.campaign.send_window is not None:  # quiet hours judged when the send window lets it go
            send_at = deliver_after(ctx.now, None, ctx.profile.timezone, self.campaign.send_window)
            ctx = dataclasses.replace(ctx, send_at=send_at if send_at > ctx.now else None)
        current: PolicySnapshot | None = plan
        while current is not None:
            decision, shadow, trial = self.dataplane._decide(current, ctx, self._event, 0, frozenset(self._exhausted))
            channel = decision.channel
            if decision.offer_id and channel in limits:
                pending = sum(1 for p in picks if p.decision.channel == channel and p.decision.offer_id)
                if report.delivered[channel] + pending >= limits[channel]:
                    closed = {c for c, most in limits.items() if report.delivered[c] + self._pending(picks, c) >= most}
                    current = campaign_snapshot(snapshot, self.campaign, closed)
                    continue
            return self._pick(current, ctx, decision, shadow, trial), current
        return None, None

    @staticmethod
    def _pending(picks: list[_Pick], channel: str) -> int:
        return sum(1 for p in picks if p.decision.channel == channel and p.decision.offer_id)

    def _pick(
        self,
        plan: PolicySnapshot,
        ctx: CustomerContext,
        decision: Decision,
        shadow: dict[str, object] | None,
        trial: str,
    ) -> _Pick:
        offer = plan.offers[plan.offer_index[decision.offer_id]] if decision.offer_id else None
        budget = None
        if offer is not None and offer.budget is not None:
            budget = Budget(
                budget_key(offer.id, offer.budget.per_seconds, ctx.now),
                offer.budget.max,
                int(offer.budget.per_seconds) + 60,
            )
        return _Pick(
            ctx,
            decision,
            shadow,
            trial,
            budget,
            offer.prior if offer else 0.0,
            offer.reward if offer else "accepted",
            keys.new_decision_id(ctx.profile.customer_id),
        )

    async def _record(
        self, snapshot: PolicySnapshot, plan: PolicySnapshot | None, picks: list[_Pick], report: RunReport
    ) -> None:
        """Write the batch's decisions (all at once); a refused one is read, decided and written again."""
        done: list[_Pick] = []
        for _ in range(CONTENTION_RETRIES):
            if not picks:
                break
            results = await asyncio.gather(*(self._write(snapshot, p) for p in picks))
            retry = []
            for pick, result in zip(picks, results, strict=True):
                if result is WriteResult.WRITTEN:
                    done.append(pick)
                    continue
                if result is WriteResult.BUDGET_USED_UP and pick.decision.offer_id:
                    self._exhausted.add(pick.decision.offer_id)
                retry.append(pick.ctx.profile.customer_id)
            picks = []
            if retry and plan is not None:
                now = time.time()
                for customer in retry:
                    ctx = await self.dataplane._read_context(snapshot, customer, now, CAMPAIGN_ORIGIN, {})
                    again, plan = self._decide(snapshot, plan, ctx, report, done + picks)
                    if again is not None:
                        picks.append(again)
        unrecorded = [p.ctx.profile.customer_id for p in picks]
        if unrecorded:
            report.suppressed["contention"] += len(unrecorded)
        self._deliver(done, report, unrecorded)

    async def _write(self, snapshot: PolicySnapshot, pick: _Pick) -> WriteResult:
        dataplane = self.dataplane
        try:
            return await dataplane.state.write_decision(
                pick.decision_id,
                f"campaign:{self.campaign.id}:{pick.decision_id}",
                pick.ctx,
                self._event,
                pick.decision,
                contact_window=snapshot.max_limit_window,
                prior=pick.prior,
                attribution_seconds=dataplane.settings.attribution_seconds,
                shadow=pick.shadow,
                budget=pick.budget,
                reward_on=pick.reward_on,
                trial=pick.trial,
            )
        except redis.RedisError as exc:
            raise dataplane._unavailable("write_decision", exc) from exc

    def _count(self, decision: Decision, report: RunReport) -> None:
        report.decided += 1
        if decision.offer_id:
            report.delivered[decision.channel] += 1
            report.by_offer[f"{decision.offer_id}|{decision.channel}"] += 1
        else:
            code = decision.reasons[-1].code if decision.reasons else "no_action"
            report.suppressed[code] += 1

    def _deliver(self, done: list[_Pick], report: RunReport, unrecorded: list[str]) -> None:
        """Deliveries to the channels' streams (and the export files), the claims updated or released."""
        pipe = self._redis.pipeline(transaction=False)
        exports: dict[str, list[str]] = {}
        for pick in done:
            decision, customer = pick.decision, pick.ctx.profile.customer_id
            self.dataplane._observe(
                DecisionRequest(customer, self._event, CAMPAIGN_ORIGIN), started_at=None, decision=decision
            )
            self._count(decision, report)
            claim = keys.campaign_claim(customer, self.campaign.id)
            if not decision.offer_id:
                pipe.delete(claim)
                continue
            entry = self._delivery(pick, report)
            pipe.xadd(
                keys.deliveries(decision.channel),
                {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()},
            )
            pipe.set(claim, f"{report.run_id}|{decision.channel}|{decision.offer_id}", xx=True, keepttl=True)
            if self.export_dir is not None:
                exports.setdefault(decision.channel, []).append(json.dumps(entry, ensure_ascii=False))
        for customer in unrecorded:
            pipe.delete(keys.campaign_claim(customer, self.campaign.id))
        pipe.execute()
        if self.export_dir is not None:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            for channel, lines in exports.items():
                with (self.export_dir / f"{channel}.jsonl").open("a", encoding="utf-8") as out:
                    out.write("\n".join(lines) + "\n")

    def _delivery(self, pick: _Pick, report: RunReport) -> dict[str, Any]:
        decision, ctx = pick.decision, pick.ctx
        when = deliver_after(ctx.now, decision.deliver_after, ctx.profile.timezone, self.campaign.send_window)
        rendered = (
            dataclasses.asdict(decision.rendered) if decision.rendered is not None else {"body": decision.content}
        )
        return {
            "decision_id": pick.decision_id,
            "customer_id": ctx.profile.customer_id,
            "offer_id": decision.offer_id or "",
            "channel": decision.channel,
            "content": {k: v for k, v in rendered.items() if v},
            "deliver_after": round(when, 3),
            "deliver_after_local": local_time(when, ctx.profile.timezone).isoformat(timespec="minutes"),
            "campaign": self.campaign.id,
            "run_id": report.run_id,
            "policy_version": decision.policy_version,
        }
