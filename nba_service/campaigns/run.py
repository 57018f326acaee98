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
   contacted the customer meanwhile is read and decided again; a write Redis answers with an error fails
   that customer only (not delivered, the claim released, counted as ``write_failed``);
7. **deliver**: for each action, ``XADD`` to the channel's stream (:func:`nba_service.store.keys.deliveries`)
   and the claim's value set to ``<run>|<channel>|<offer>``; a claim whose decision took no action is
   deleted (the customer can be reached by a later run);
8. **checkpoint**: the run's hash (:func:`nba_service.store.keys.campaign_run`) gets the cursors and the
   counters in one ``HSET``.

Safe to stop and start: killed anywhere, ``resume`` starts from the last checkpoint. The batch in flight is
scanned again; its customers claimed by this run are counted from their claim (decided, and delivered on the
channel it names) and not decided again, so no customer gets two deliveries and the totals are those of an
uninterrupted run. Its actions per channel, written to the run's hash before its writes, are held against the
volume limits until their claims are read again: a rescan returns them in smaller pages when the node's table
grew meanwhile, on a cluster after other nodes' pages of new customers. The window: a process killed between
a decision's write and its delivery's ``XADD`` leaves the customer claimed without a delivery (at most once,
never twice: the claim is what every later attempt checks first); between the ``XADD`` and the claim's update,
the delivery exists and the counters miss it.

``deliver_after`` is the later of now, the quiet-hours deferral the decision carries (a channel with
``on_quiet_hours: defer``) and the start of the campaign's ``send_window`` in the customer's time zone when
that time is outside it: a send outside the window is scheduled, not dropped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from nba_service.campaigns.lease import LEASE_TTL_MS, RunLease
from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.plan import CAMPAIGN_ORIGIN, campaign_event, campaign_snapshot
from nba_service.campaigns.workers import (
    MAX_WORKERS,
    Allowance,
    MustWait,
    WorkersStopped,
    run_shares,
    share_names,
    share_of,
)
from nba_service.dataplane import CONTENTION_RETRIES, DataPlane
from nba_service.domain import (
    CustomerContext,
    Decision,
    DecisionRequest,
    NoPolicyError,
    RenderedContent,
    WriteResult,
)
from nba_service.domain.localtime import local_time, next_local_time
from nba_service.observability.ratelimit import RateLimitedLog
from nba_service.policies.model import CampaignSpec
from nba_service.policies.scope import evaluation_globals
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.store import codec, keys
from nba_service.store.connect import RedisTarget
from nba_service.store.state import Budget, DecisionWrite, budget_key

__all__ = [
    "BATCH_SIZE",
    "CampaignRunner",
    "LeaseLostError",
    "RunBusyError",
    "RunReport",
    "RunStateError",
    "RunStore",
    "UnknownCampaignError",
    "deliver_after",
    "find_campaign",
]

BATCH_SIZE = 5000
"""Keys a SCAN page asks each node for (``COUNT``): a batch is the profiles among them."""
RUNNING, SUSPENDED, DONE = "running", "suspended", "done"
log = logging.getLogger(__name__)
_GLOBALS = evaluation_globals()
_JOURNEY_NAMES = {"_f_count_events", "_f_days_since", "open_cart_value", "_f_cart_open", "_f_request_attr"}
"""What a rule reads beyond the profile (the journey, open journeys, the request)."""

Progress = Callable[["RunReport"], None]
"""Called after each checkpointed batch with the run's figures (a progress line; raising stops the run)."""


class RunStateError(ValueError):
    """A run cannot start, resume or change state as asked (the message says why)."""


class UnknownCampaignError(RunStateError):
    """The live policy has no campaign of that id."""


class RunBusyError(RunStateError):
    """Another process runs the campaign now (it holds the campaign's lease, :mod:`nba_service.campaigns.lease`)."""


class LeaseLostError(RunStateError):
    """The run's lease lapsed while it worked (Redis did not answer for its TTL): the run stopped, resumable."""


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
    """Customers of the segment not delivered to, by reason (``already_reached``, ``contention``, ``write_failed``,
    or the decision's no-action code: ``frequency_cap``, ``nothing_allowed``, ``below_threshold`` ...)."""
    by_offer: Counter[str] = dataclasses.field(default_factory=Counter)
    """Deliveries per ``offer|channel``."""
    ended: str = ""
    """Why a finished run ended early (``--limit``, ``max_total``), empty otherwise."""
    started_by: str = ""
    """Who started the run: ``cli``, ``scheduler`` (with the occurrence it is for) or ``grpc:<caller>``."""
    held: Counter[str] = dataclasses.field(default_factory=Counter)
    """Actions per channel of the batch being recorded when the run stopped, not in its checkpoint: counted
    against the volume limits on resume until the rescan reads their claims (on a cluster it may read some
    only after other nodes' pages: a page scanned again after the node's table grew holds fewer keys)."""

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
            "started_by": self.started_by,
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
            "started_by": self.started_by,
            "held": json.dumps({name: n for name, n in sorted(self.held.items()) if n > 0}),
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
            started_by=h.get("started_by", ""),
            held=Counter({str(k): int(v) for k, v in json.loads(h.get("held", "{}")).items()}),
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

    def save(self, report: RunReport, *, status: bool | None = None) -> None:
        """Write the whole state in one ``HSET`` (atomic: a checkpoint is all or nothing). The status is written
        when ``status`` says so; by default unless the run is running: a checkpoint of a running run leaves
        it, so a ``suspend`` written meanwhile (by another process) is not overwritten and the run sees it."""
        report.updated = time.time()
        fields = report.to_hash()
        if not (status if status is not None else report.status != RUNNING):
            del fields["status"]
        self._redis.hset(keys.campaign_run(report.campaign, report.run_id), mapping=fields)

    def hold(self, report: RunReport, actions: Counter[str]) -> None:
        """Before a batch's writes: its actions per channel, held against the limits if the run stops before
        its checkpoint (:attr:`RunReport.held`)."""
        self._redis.hset(
            keys.campaign_run(report.campaign, report.run_id), "held", json.dumps(dict(report.held + actions))
        )

    def add(self, report: RunReport) -> None:
        self.save(report, status=True)
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

    def set_status(self, campaign: str, status: str, *, expect: Iterable[str], run_id: str = "") -> RunReport:
        """Set the status of run ``run_id`` (default: the campaign's latest run) if it is one of ``expect``
        (suspend: the running process stops after its batch). The check and the write are one step in Redis
        (a script on the run's hash): a run that changed status meanwhile is left as it is."""
        report = self.load(campaign, run_id) if run_id else self.latest(campaign)
        if report is None:
            what = f"run {run_id} of {campaign} not found" if run_id else f"campaign {campaign} has no run"
            raise RunStateError(what)
        script: Any = self._redis.register_script(_SET_STATUS_SCRIPT)
        changed, current = script(keys=[keys.campaign_run(campaign, report.run_id)], args=[status, *expect])
        if not changed:
            now = current.decode() if isinstance(current, bytes) else str(current or "")
            raise RunStateError(f"run {report.run_id} of {campaign} is {now or 'gone'}")
        report.status = status
        return report


_SET_STATUS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
for i = 2, #ARGV do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
    return {1, current}
  end
end
return {0, current}
"""


def find_campaign(snapshot: PolicySnapshot | None, name: str) -> CampaignSpec:
    """The live policy's campaign of id ``name``."""
    if snapshot is None:
        raise NoPolicyError("no policy set is published yet: run `nba policy publish DIR`")
    for campaign in snapshot.policy.campaigns:
        if campaign.id == name:
            return campaign
    known = ", ".join(c.id for c in snapshot.policy.campaigns) or "none"
    raise UnknownCampaignError(f"no campaign {name!r} in live policy version {snapshot.version} (campaigns: {known})")


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


_RENDERED_FIELDS = tuple(f.name for f in dataclasses.fields(RenderedContent))


def _customer_id(key: bytes) -> str:
    text = key.decode()
    return text[text.index("}:c:") + 4 : -len(":profile")]


class _Picks(list["_Pick"]):
    """A batch's picks, with the actions per channel counted as they are added (the volume limits' pending)."""

    def __init__(self, picks: Iterable[_Pick] = ()) -> None:
        super().__init__()
        self.actions: Counter[str] = Counter()
        for pick in picks:
            self.append(pick)

    def append(self, pick: _Pick) -> None:
        super().append(pick)
        if pick.decision.offer_id:
            self.actions[pick.decision.channel] += 1


def _actions(picks: list[_Pick]) -> Counter[str]:
    """The actions per channel among ``picks``."""
    if isinstance(picks, _Picks):
        return picks.actions
    return Counter(p.decision.channel for p in picks if p.decision.offer_id)


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
        lease_ttl_ms: int = LEASE_TTL_MS,
        workers: int = 1,
        target: RedisTarget | None = None,
    ) -> None:
        self.dataplane = dataplane
        self._redis: Any = client  # bytes replies; a RedisCluster on a cluster
        self.campaign = campaign
        self.batch_size = batch_size
        self.progress = progress
        self.export_dir = pathlib.Path(export_dir) if export_dir else None
        self.store = RunStore(client)
        self.metrics = metrics
        self.lease_ttl_ms = lease_ttl_ms
        """How long the run's lease outlives this process if it dies (renewed every third of it)."""
        self._lease: RunLease | None = None
        self._begun: RunReport | None = None
        self._event = campaign_event(campaign)
        self._exhausted: set[str] = set()
        self._exhausted_now: frozenset[str] = frozenset()
        """:attr:`_exhausted` as the engine takes it (changed only when a write finds a budget used up)."""
        self._when: dict[tuple[float, float | None, str], float] = {}
        self._local: dict[tuple[float, str], str] = {}
        self._limited_log: RateLimitedLog | None = None
        """Failed writes, one line per interval (created on first use)."""
        names = set(campaign.segment.code.co_names) if campaign.segment is not None else set()
        self._profile_only = not names & _JOURNEY_NAMES
        if not 1 <= workers <= MAX_WORKERS:
            raise RunStateError(f"workers: {workers} is not in 1..{MAX_WORKERS}")
        self.workers = workers if target is not None else 1
        """Processes a new run uses (``--workers``): each scans a share of the buckets (see workers.py)."""
        self.target = target
        """The Redis of the run, for the worker processes' own connections."""
        self._match = keys.PROFILE_PATTERN
        """What this process scans (a worker: its share's profiles)."""
        self._allow: Allowance | None = None
        """A worker's units of the run's volume limits (None in a one-process run)."""
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
            cursors, found = scan(cursor=cursor, match=self._match, count=self.batch_size, target_nodes=target)
            return int(cursors[node]), list(found)
        next_cursor, found = self._redis.scan(cursor=cursor, match=self._match, count=self.batch_size)
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
            cursors=dict.fromkeys(
                share_names(self._nodes(), self.workers) if self.workers > 1 and not dry_run else self._nodes(), 0
            ),
        )

    def resumable(self) -> RunReport:
        """The latest run, to resume (running after a crash, or suspended)."""
        latest = self.store.latest(self.campaign.id)
        if latest is None or latest.status == DONE:
            raise RunStateError(f"campaign {self.campaign.id} has no run to resume: `nba campaign run` starts one")
        return latest

    def begin(self, report: RunReport | None = None, *, dry_run: bool = False, started_by: str = "") -> RunReport:
        """What :meth:`run` does first: take the campaign's lease (:class:`RunLease`; refused with
        :class:`RunBusyError`, naming the run and the process holding it, while another process runs the
        campaign), then create the run (or, given a report from :meth:`resumable`, mark it running again from
        its stored checkpoint). A dry run takes no lease and stores nothing. The server calls it to answer with
        the run's id before the run works."""
        snapshot = self.dataplane.snapshot
        if snapshot is None:
            raise NoPolicyError("no policy set is published yet: run `nba policy publish DIR`")
        if report is None and dry_run:
            report = self.new_run(dry_run=True)
            report.policy_version, report.started_by = snapshot.version, started_by
            self._begun = report
            return report
        campaign = self.campaign.id
        lease = RunLease(self._redis, campaign, self.lease_ttl_ms)
        holder = lease.take()
        if holder is not None:
            latest = self.store.latest(campaign)
            what = f"run {latest.run_id} of {campaign}" if latest is not None else f"campaign {campaign}"
            raise RunBusyError(
                f"{what} is running in process {holder}: wait for it to end, or `nba campaign suspend {campaign}` "
                "stops it after its batch"
            )
        try:
            if report is None:
                report = self.new_run()
                report.policy_version, report.started_by = snapshot.version, started_by
                self.store.add(report)
            else:  # the stored checkpoint: another process may have moved the run on since it was read
                stored = self.store.load(campaign, report.run_id)
                if stored is None or stored.status == DONE:
                    raise RunStateError(f"campaign {campaign} has no run to resume: `nba campaign run` starts one")
                report = stored
                report.status = RUNNING
                self.store.save(report, status=True)
        except BaseException:
            lease.release()
            raise
        self._lease, self._begun = lease, report
        return report

    async def run(
        self, report: RunReport | None = None, *, dry_run: bool = False, limit: int | None = None
    ) -> RunReport:
        """Run (or, given a report from :meth:`resumable`, resume) the campaign; returns its figures.

        ``limit``: decide at most this many customers, then end the run. A dry run writes nothing
        (no run state, claims, decisions or deliveries) and counts what would be delivered. The campaign's
        lease is held until the run stops (:meth:`begin`, unless called already with this report); a run
        whose lease lapses stops after its batch with :class:`LeaseLostError`.
        """
        if report is None or report is not self._begun:
            report = self.begin(report, dry_run=dry_run)
        snapshot = self.dataplane.snapshot
        assert snapshot is not None
        lease, progress = self._lease, self.progress

        def guarded(figures: RunReport) -> None:
            if lease is not None and lease.lost:
                raise LeaseLostError(
                    f"run {figures.run_id} of {figures.campaign} lost its lease (Redis did not answer for "
                    f"{self.lease_ttl_ms / 1000:g} s, or another process took it): stopped after its batch; "
                    f"`nba campaign resume {figures.campaign}` continues it"
                )
            if progress is not None:
                progress(figures)

        self.progress = guarded
        if self.metrics is not None:
            self.metrics.start(report)
        try:
            return await self._run(snapshot, report, limit)
        finally:
            self.progress = progress
            self._begun = None
            if self.metrics is not None:
                self.metrics.stop(report)
            if lease is not None:
                self._lease = None
                lease.release()

    async def _run(self, snapshot: PolicySnapshot, report: RunReport, limit: int | None) -> RunReport:
        if any(share_of(name) is not None for name in report.cursors):  # a run over several workers
            return await run_shares(self, snapshot, report, limit)
        dry_run = report.dry_run
        limits = self.campaign.max_per_channel
        closed = {ch for ch, most in limits.items() if report.delivered[ch] + report.held[ch] >= most}
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
        customers = [_customer_id(k) for k in found]
        if self._profile_only:  # the profiles first (one MGET: per slot on a cluster); the segment's contexts only
            profiles = [
                CustomerContext(codec.decode_profile(c, raw), now, CAMPAIGN_ORIGIN)
                for c, raw in zip(customers, self._get_many(found), strict=True)
                if raw is not None
            ]
            customers = [ctx.profile.customer_id for ctx in profiles if self._in_segment(snapshot, ctx, report)]
        contexts = await self._read_contexts(snapshot, customers, now)
        if self._profile_only:
            members = [ctx for ctx in contexts if ctx.profile.known]  # erased meanwhile: left out
        else:
            members = [ctx for ctx in contexts if self._in_segment(snapshot, ctx, report)]
        report.in_segment += len(members)
        claimed = await self._claim(members, report)
        picks = _Picks()
        stop = False
        released: list[str] = []
        decided = index = 0
        allow = self._allow
        while index < len(claimed):
            ctx = claimed[index]
            try:
                ended = self._ended(report, picks, budget, len(claimed) - index)
                if ended:
                    report.ended = ended
                    released += [c.profile.customer_id for c in claimed[index:]]
                    stop = True
                    break
                pick, plan = self._decide(snapshot, plan, ctx, report, picks)
            except MustWait as wait:  # a worker: record what it decided (it then holds no unit), then wait
                assert allow is not None
                decided += len(picks)
                await self._record(snapshot, plan, picks, report)
                picks = _Picks()
                try:
                    await allow.wait(wait.name)
                except WorkersStopped:  # the run stops: the customers not decided are left for its resume
                    await self._release([c.profile.customer_id for c in claimed[index:]])
                    raise
                continue  # this customer again
            if pick is None:  # no channel left in the plan
                released += [c.profile.customer_id for c in claimed[index:]]
                break
            picks.append(pick)
            index += 1
        if not report.dry_run:
            await self._release(released)
            limited = self.campaign.max_per_channel or self.campaign.max_total is not None
            if picks and limited and self._allow is None:  # (a worker's units are counted in Redis: workers.py)
                self.store.hold(report, _actions(picks))
            await self._record(snapshot, plan, picks, report)
        else:
            for pick in picks:
                self._count(pick.decision, report)
        return plan, decided + len(picks), stop

    def _ended(self, report: RunReport, picks: list[_Pick], budget: int | None, left: int) -> str:
        """Why the run ends before the next customer ("" if it goes on): ``--limit`` or ``max_total`` reached.
        A worker takes a unit of each first (:class:`~nba_service.campaigns.workers.Allowance`)."""
        allow = self._allow
        if allow is None:
            if budget is not None and len(picks) >= budget:
                return "--limit"
            return "max_total" if self._total_reached(report, picks) else ""
        if not allow.take("*limit", left):
            return "--limit"
        if not allow.take("*total", left):
            allow.untake("*limit")
            return "max_total"
        return ""

    def _get_many(self, found: list[bytes]) -> list[bytes | None]:
        """The values of ``found`` keys: one ``MGET`` (a cluster's client splits it by slot)."""
        if isinstance(self._redis, redis.RedisCluster):
            return list(self._redis.mget_nonatomic(found))
        return list(self._redis.mget(found))

    def _in_segment(self, snapshot: PolicySnapshot, ctx: CustomerContext, report: RunReport) -> bool:
        segment = self.campaign.segment
        if segment is None:
            return True
        try:
            return bool(eval(segment.code, _GLOBALS, snapshot.scope(ctx, self._event)))
        except Exception:  # a rule that fails on this customer leaves them out, counted
            report.suppressed["segment_error"] += 1
            return False

    async def _commands(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Plain commands sent together, their replies in order: on one Redis through the state store's
        pipelined connection (one write, no per-command objects), on a cluster through its client's pipeline."""
        if not commands:
            return []
        state = self.dataplane.state
        if state.one_node:
            return await state.command_many(commands)
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())

    async def _claim(self, members: list[CustomerContext], report: RunReport) -> list[CustomerContext]:
        """The members this run may decide: claimed now (``SET NX``; a dry run only checks), and not reached
        by another run; those this run claimed before a crash are counted from their claim."""
        if not members:
            return []
        claims = [keys.campaign_claim(ctx.profile.customer_id, self.campaign.id) for ctx in members]
        ttl = self.campaign.repeat_after_seconds
        expiry = ("EX", max(1, int(ttl))) if ttl else ()
        if report.dry_run:
            previous = await self._commands([("GET", key) for key in claims])
        else:
            run_id = report.run_id
            previous = await self._commands([("SET", key, run_id, "NX", *expiry) for key in claims])
            # SET NX GET needs Redis 7: the claims taken already are read in a second trip
            taken = [i for i, ok in enumerate(previous) if not ok]
            previous = [None] * len(members)
            if taken:
                for i, value in zip(taken, await self._commands([("GET", claims[i]) for i in taken]), strict=True):
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
                if report.held[channel] > 0:  # held since the stop: now counted
                    report.held[channel] -= 1
        return out

    async def _release(self, customers: list[str]) -> None:
        """Delete the claims of customers this run claimed and will not decide."""
        await self._commands([("DEL", keys.campaign_claim(customer, self.campaign.id)) for customer in customers])

    def _total_reached(self, report: RunReport, picks: list[_Pick]) -> bool:
        most = self.campaign.max_total
        return most is not None and report.total_delivered + report.held.total() + _actions(picks).total() >= most

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
            send_at = self._deliver_after(ctx.now, None, ctx.profile.timezone)
            ctx = dataclasses.replace(ctx, send_at=send_at if send_at > ctx.now else None)
        current: PolicySnapshot | None = plan
        allow = self._allow
        while current is not None:
            decision, shadow, trial = self.dataplane._decide(current, ctx, self._event, 0, self._exhausted_now)
            channel = decision.channel
            if decision.offer_id and channel in limits:
                if allow is not None:  # a worker: a unit of the channel, or the channel is closed for every worker
                    if not allow.take(channel, 2 * len(picks) + 16):
                        current = campaign_snapshot(snapshot, self.campaign, allow.closed)
                        continue
                    return self._pick(current, ctx, decision, shadow, trial), current
                pending = _actions(picks)
                held = report.held
                if report.delivered[channel] + held[channel] + pending[channel] >= limits[channel]:
                    closed = {c for c, most in limits.items() if report.delivered[c] + held[c] + pending[c] >= most}
                    current = campaign_snapshot(snapshot, self.campaign, closed)
                    continue
            return self._pick(current, ctx, decision, shadow, trial), current
        return None, None

    def _deliver_after(self, now: float, deferred: float | None, timezone: str) -> float:
        """:func:`deliver_after` in the campaign's send window, remembered (a batch shares ``now``; a few time
        zones)."""
        key = (now, deferred, timezone)
        when = self._when.get(key)
        if when is None:
            if len(self._when) > 4096:
                self._when.clear()
            when = self._when[key] = deliver_after(now, deferred, timezone, self.campaign.send_window)
        return when

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
        """Write the batch's decisions (all at once); a refused one is read, decided and written again. A write
        Redis answered with an error is not delivered: its claim is released (a later run, or the resume,
        reaches the customer) and it is counted as ``write_failed``; the batch's other writes go on."""
        done: list[_Pick] = []
        waited: list[str] = []
        failed: list[str] = []
        first_error: redis.ResponseError | None = None
        decided = len(picks)
        for _ in range(CONTENTION_RETRIES):
            if not picks:
                break
            results = await self._write(snapshot, picks)
            retry = []
            for pick, result in zip(picks, results, strict=True):
                if result is WriteResult.WRITTEN:
                    done.append(pick)
                    continue
                if isinstance(result, redis.ResponseError):  # this customer's write only: not tried again
                    failed.append(pick.ctx.profile.customer_id)
                    first_error = first_error or result
                    continue
                if result is WriteResult.BUDGET_USED_UP and pick.decision.offer_id:
                    self._exhausted.add(pick.decision.offer_id)
                    self._exhausted_now = frozenset(self._exhausted)
                retry.append(pick.ctx.profile.customer_id)
            picks = []
            if retry and plan is not None:
                for ctx in await self._read_contexts(snapshot, retry, time.time()):
                    try:
                        again, plan = self._decide(snapshot, plan, ctx, report, _Picks([*done, *picks]))
                    except MustWait:  # a worker with no unit of the channel now: left for a later run
                        waited.append(ctx.profile.customer_id)
                        continue
                    if again is not None:
                        picks.append(again)
        unrecorded = [p.ctx.profile.customer_id for p in picks] + waited
        if unrecorded:
            report.suppressed["contention"] += len(unrecorded)
        if failed:
            report.suppressed["write_failed"] += len(failed)
            self._write_failed(report, failed, first_error)
        used = dict(_actions(done))
        used["*total"], used["*limit"] = sum(used.values()), decided
        await self._deliver(done, report, unrecorded + failed, used)
        if self._allow is not None:  # the units used; the others given back
            self._allow.settle(used)

    async def _read_contexts(self, snapshot: PolicySnapshot, customers: list[str], now: float) -> list[CustomerContext]:
        """The customers' contexts as a live decision reads them, the reads sent together."""
        try:
            return await self.dataplane.state.read_contexts(
                customers,
                now,
                origin_channel=CAMPAIGN_ORIGIN,
                contact_window=snapshot.max_limit_window,
                suppression_window=snapshot.max_suppression_window,
                accepted_window=snapshot.max_accepted_window,
            )
        except redis.RedisError as exc:
            raise self.dataplane._unavailable("read_context", exc) from exc

    def _write_failed(self, report: RunReport, failed: list[str], error: redis.ResponseError | None) -> None:
        """Counted as Redis errors of ``write_decision``; one log line for the batch (rate-limited)."""
        self.dataplane.metrics.redis_errors.labels("write_decision").inc(len(failed))
        if self._limited_log is None:
            self._limited_log = RateLimitedLog(log, self.dataplane.settings.log_interval_seconds)
        self._limited_log.warning(
            ("write_failed", report.campaign),
            "campaign %s run %s: Redis failed %d write(s) of a batch (customer %s first: %s); not delivered, "
            "their claims released for a later run",
            report.campaign,
            report.run_id,
            len(failed),
            failed[0],
            error,
        )

    async def _write(self, snapshot: PolicySnapshot, picks: list[_Pick]) -> list[WriteResult | redis.ResponseError]:
        """The live write of each pick (:meth:`StateStore.write_decisions`: the scripts sent together; a write
        Redis answered with an error has it as its result)."""
        dataplane = self.dataplane
        attribution = dataplane.settings.attribution_seconds
        writes = [
            DecisionWrite(
                pick.decision_id,
                f"campaign:{self.campaign.id}:{pick.decision_id}",
                pick.ctx,
                self._event,
                pick.decision,
                prior=pick.prior,
                attribution_seconds=attribution,
                shadow=pick.shadow,
                budget=pick.budget,
                reward_on=pick.reward_on,
                trial=pick.trial,
            )
            for pick in picks
        ]
        try:
            return await dataplane.state.write_decisions(writes, contact_window=snapshot.max_limit_window)
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

    async def _deliver(
        self, done: list[_Pick], report: RunReport, unrecorded: list[str], used: Mapping[str, int]
    ) -> None:
        """Deliveries to the channels' streams (and the export files), the claims updated or released; a
        worker's units ``used`` counted in the same write (see workers.py)."""
        commands: list[tuple[Any, ...]] = []
        exports: dict[str, list[str]] = {}
        for pick in done:
            decision, customer = pick.decision, pick.ctx.profile.customer_id
            self.dataplane._observe(
                DecisionRequest(customer, self._event, CAMPAIGN_ORIGIN), started_at=None, decision=decision
            )
            self._count(decision, report)
            claim = keys.campaign_claim(customer, self.campaign.id)
            if not decision.offer_id:
                commands.append(("DEL", claim))
                continue
            entry = self._delivery(pick, report)
            fields = [x for k, v in entry.items() for x in (k, v if isinstance(v, str) else json.dumps(v))]
            commands.append(("XADD", keys.deliveries(decision.channel), "*", *fields))
            commands.append(("SET", claim, f"{report.run_id}|{decision.channel}|{decision.offer_id}", "XX", "KEEPTTL"))
            if self.export_dir is not None:
                exports.setdefault(decision.channel, []).append(json.dumps(entry, ensure_ascii=False))
        commands += [("DEL", keys.campaign_claim(customer, self.campaign.id)) for customer in unrecorded]
        if self._allow is not None:
            commands += self._allow.used_commands(used)
        await self._commands(commands)
        if self.export_dir is not None:
            self.export_dir.mkdir(parents=True, exist_ok=True)
            for channel, lines in exports.items():  # one write, appended whole (workers share the files)
                with (self.export_dir / f"{channel}.jsonl").open("ab", buffering=0) as out:
                    data = ("\n".join(lines) + "\n").encode()
                    while data:
                        data = data[out.write(data) or 0 :]

    def _delivery(self, pick: _Pick, report: RunReport) -> dict[str, Any]:
        decision, ctx = pick.decision, pick.ctx
        timezone = ctx.profile.timezone
        when = self._deliver_after(ctx.now, decision.deliver_after, timezone)
        local = self._local.get((when, timezone))
        if local is None:
            if len(self._local) > 4096:
                self._local.clear()
            local = self._local[when, timezone] = local_time(when, timezone).isoformat(timespec="minutes")
        content = decision.rendered
        rendered = (
            {f: getattr(content, f) for f in _RENDERED_FIELDS} if content is not None else {"body": decision.content}
        )
        return {
            "decision_id": pick.decision_id,
            "customer_id": ctx.profile.customer_id,
            "offer_id": decision.offer_id or "",
            "channel": decision.channel,
            "content": {k: v for k, v in rendered.items() if v},
            "deliver_after": round(when, 3),
            "deliver_after_local": local,
            "campaign": self.campaign.id,
            "run_id": report.run_id,
            "policy_version": decision.policy_version,
        }
