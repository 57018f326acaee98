"""What-if preview: a candidate policy set and the live one, decided side by side
over the same moments by the same engine.

Nothing is sent and nothing is written. Each customer's stored state is read
once (through the ``stored`` callable: Redis, or unknown-customer defaults);
from then on the preview keeps it in memory and changes it as the server's
record step would: every moment joins the customer's journey (an abandoned
cart opens, a purchase closes it), and every action is counted as a contact,
separately for each side, so the caps of each policy set bite on its own
decisions. Exploration is the caller's choice (off for a preview: the engines
should exploit, so a difference is the policy's, not chance).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from nba_service.domain import (
    ContactRecord,
    CustomerContext,
    CustomerProfile,
    Decision,
    DecisionRequest,
    Event,
    JourneyEntry,
    OpenJourney,
    TimedRequest,
)
from nba_service.domain.journeys import journey_fields, open_journey_change
from nba_service.engine.contact_policy import check_caps
from nba_service.engine.pipeline import DecisionEngine
from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["ChangedDecision", "PolicyRun", "PreviewReport", "SideReport", "run_preview"]

NO_ACTION = ("", "")
_FILTERED_BY_RULES = frozenset({"not_live", "not_eligible", "rule_error"})
_JOURNEY_EVENTS = 50

StoredContext = Callable[[str, float, float], CustomerContext]
"""(customer id, now, contact window) -> the customer's stored context."""
StoredContexts = Callable[[Sequence[tuple[str, float]], float], Mapping[str, CustomerContext]]
"""([(customer id, now)], contact window) -> each customer's stored context, read together."""


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyRun:
    """One side of the preview: a compiled policy set and the engine that decides with it."""

    label: str
    snapshot: PolicySnapshot
    engine: DecisionEngine


@dataclasses.dataclass(slots=True)
class SideReport:
    """What one policy set decided over the moments."""

    label: str
    decisions: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    """(offer id, channel) -> decisions; ``("", "")`` counts "no action"."""
    no_action_reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    eligible: set[str] = dataclasses.field(default_factory=set)
    """Offers that passed their validity window and rule at least once."""
    capped: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    """Limit reached -> customers who reached it at a moment of the file."""

    @property
    def total(self) -> int:
        return sum(self.decisions.values())

    @property
    def no_action(self) -> int:
        return self.decisions[NO_ACTION]

    @property
    def chosen(self) -> set[str]:
        return {offer for offer, _ in self.decisions if offer}

    @property
    def reached(self) -> set[str]:
        """Offers chosen or at least eligible once."""
        return self.chosen | self.eligible

    @property
    def capped_customers(self) -> set[str]:
        return set().union(*self.capped.values()) if self.capped else set()


@dataclasses.dataclass(frozen=True, slots=True)
class ChangedDecision:
    moment: TimedRequest
    live: Decision
    candidate: Decision
    live_why_not: str
    """Why live did not pick the candidate's choice."""
    candidate_why_not: str
    """Why the candidate did not pick live's choice."""


@dataclasses.dataclass(slots=True)
class PreviewReport:
    live: SideReport
    candidate: SideReport
    customers: int = 0
    known_customers: int = 0
    changed: int = 0
    samples: list[ChangedDecision] = dataclasses.field(default_factory=list)

    @property
    def events(self) -> int:
        return self.live.total

    @property
    def unreachable(self) -> list[str]:
        """Offers live chose or found eligible that the candidate never chose nor found eligible."""
        return sorted(self.live.reached - self.candidate.reached)

    @property
    def newly_reachable(self) -> list[str]:
        return sorted(self.candidate.reached - self.live.reached)

    def render(self, max_rows: int = 20) -> list[str]:
        """The report as text, live and candidate side by side.

        The two long tables list every row that changed, biggest change first,
        then the busiest unchanged rows up to ``max_rows`` in all.
        """
        live, cand = self.live, self.candidate
        rows: list[str | tuple[str, object, object, str]] = [
            ("", live.label, cand.label, "change"),
            ("decisions", live.total, cand.total, ""),
            (
                "with an action",
                live.total - live.no_action,
                cand.total - cand.no_action,
                _delta(live.total - live.no_action, cand.total - cand.no_action),
            ),
            (
                "no action",
                _share(live.no_action, live.total),
                _share(cand.no_action, cand.total),
                _points(live.no_action, cand.no_action, live.total),
            ),
            (
                "customers hitting a cap",
                len(live.capped_customers),
                len(cand.capped_customers),
                _delta(len(live.capped_customers), len(cand.capped_customers)),
            ),
        ]

        rows += ["", ("decisions per offer and channel", live.label, cand.label, "change")]
        counts = {
            key: (live.decisions[key], cand.decisions[key])
            for key in set(live.decisions) | set(cand.decisions)
            if key != NO_ACTION
        }
        rows += _changed_first({f"{offer} on {channel}": n for (offer, channel), n in counts.items()}, max_rows)
        rows.append(("  (no action)", live.no_action, cand.no_action, _delta(live.no_action, cand.no_action)))
        reasons = sorted(set(live.no_action_reasons) | set(cand.no_action_reasons))
        if reasons:
            rows += ["", ("no action, by reason", live.label, cand.label, "change")]
            for code in reasons:
                rows.append(
                    (
                        f"  {code}",
                        live.no_action_reasons[code],
                        cand.no_action_reasons[code],
                        _delta(live.no_action_reasons[code], cand.no_action_reasons[code]),
                    )
                )

        rows += ["", "offers that became unreachable (never chosen nor eligible under the candidate):"]
        rows += [f"  {offer}" for offer in self.unreachable] or ["  none"]
        if self.newly_reachable:
            rows += ["offers that became reachable (chosen or eligible only under the candidate):"]
            rows += [f"  {offer}" for offer in self.newly_reachable]

        capped = {
            limit: (len(live.capped.get(limit, ())), len(cand.capped.get(limit, ())))
            for limit in set(live.capped) | set(cand.capped)
        }
        if capped:
            rows += ["", ("customers hitting a cap, by limit", live.label, cand.label, "change")]
            rows += _changed_first(capped, max_rows)

        rows += [
            "",
            f"changed decisions: {self.changed} of {self.events}"
            f" ({100 * self.changed / max(self.events, 1):.1f}%)" + (", for example:" if self.samples else ""),
        ]
        for change in self.samples:
            m = change.moment
            where = f" (line {m.line})" if m.line else ""
            rows.append(f"  {m.request.customer_id} {m.request.event.type}{where}")
            rows.append(f"    {live.label}: {_decision(change.live)}")
            if change.live_why_not:
                rows.append(f"      {change.live_why_not}")
            rows.append(f"    {cand.label}: {_decision(change.candidate)}")
            if change.candidate_why_not:
                rows.append(f"      {change.candidate_why_not}")
        return _table(rows)


def run_preview(
    moments: Iterable[TimedRequest],
    live: PolicyRun,
    candidate: PolicyRun,
    stored: StoredContext,
    *,
    now: float,
    sample_size: int = 10,
    stored_many: StoredContexts | None = None,
    decided: Callable[[TimedRequest, Decision, Decision], None] | None = None,
) -> PreviewReport:
    """Decide every moment with both policy sets; ``now`` is the time of moments without a timestamp.

    ``stored_many`` given, every customer's context is read with it before the first decision, all at
    once (one round trip), at the time of the customer's first moment, as ``stored`` would read it then:
    the report is the same. ``decided`` is called with each moment and the live and candidate decisions."""
    report = PreviewReport(SideReport(live.label), SideReport(candidate.label))
    window = max(live.snapshot.max_limit_window, candidate.snapshot.max_limit_window)
    if stored_many is not None:
        moments = list(moments)
        first: dict[str, float] = {}
        for moment in moments:
            first.setdefault(moment.request.customer_id, moment.timestamp if moment.timestamp is not None else now)
        read = stored_many(list(first.items()), window)
        stored = lambda customer_id, at, _window: read[customer_id]  # noqa: E731
    customers: dict[str, _CustomerState] = {}
    for moment in moments:
        at = moment.timestamp if moment.timestamp is not None else now
        request = moment.request
        state = customers.get(request.customer_id)
        if state is None:
            state = customers[request.customer_id] = _CustomerState.start(stored(request.customer_id, at, window))
            report.known_customers += state.profile.known
        decisions = []
        for key, side, run in (("live", report.live, live), ("candidate", report.candidate, candidate)):
            ctx = state.context(key, at, request)
            decision = run.engine.decide(run.snapshot, ctx, request.event, top_k=len(run.snapshot.offers))
            _tally(side, run.snapshot, ctx, request.event, decision)
            state.record_contact(key, at, decision, window)
            decisions.append(decision)
        state.record_event(at, request)
        old, new = decisions
        if decided is not None:
            decided(moment, old, new)
        if (old.offer_id, old.channel) != (new.offer_id, new.channel):
            report.changed += 1
            if len(report.samples) < sample_size:
                report.samples.append(
                    ChangedDecision(
                        moment,
                        old,
                        new,
                        live_why_not=_why_not(old, new.offer_id, live.snapshot),
                        candidate_why_not=_why_not(new, old.offer_id, candidate.snapshot),
                    )
                )
    report.customers = len(customers)
    return report


# --- customer state kept in memory ----------------------------------------------------


@dataclasses.dataclass(slots=True)
class _CustomerState:
    """One customer's state as the preview changes it: the server's record step, in memory.

    The journey and open journeys change with every request (the same rule as the
    store's write script, :func:`nba_service.domain.journeys.open_journey_change`);
    contacts are kept per side. Stored declines are kept as read, so an offer's
    ``suppress_after`` applies exactly as it does in the server.
    """

    profile: CustomerProfile
    journey: list[JourneyEntry]
    """Newest first."""
    open_journeys: dict[tuple[str, str], OpenJourney]
    stored_contacts: tuple[ContactRecord, ...]
    declines: tuple[tuple[float, str], ...]
    contacts: dict[str, list[ContactRecord]]

    @classmethod
    def start(cls, ctx: CustomerContext) -> _CustomerState:
        return cls(
            ctx.profile,
            list(ctx.journey),
            {(j.kind, j.id): j for j in ctx.open_journeys},
            ctx.contacts,
            ctx.declines,
            {},
        )

    def context(self, side: str, now: float, request: DecisionRequest) -> CustomerContext:
        contacts = self.contacts.setdefault(side, list(self.stored_contacts))
        return CustomerContext(
            profile=self.profile,
            now=now,
            origin_channel=request.origin_channel,
            journey=tuple(self.journey[:_JOURNEY_EVENTS]),
            contacts=tuple(contacts),
            open_journeys=tuple(self.open_journeys.values()),
            request_attributes=request.attributes,
            declines=self.declines,
        )

    def record_contact(self, side: str, now: float, decision: Decision, window: float) -> None:
        if decision.offer_id is None:
            return
        contacts = self.contacts[side]
        contacts.append(ContactRecord(now, decision.offer_id, decision.channel, decision.category))
        contacts[:] = [c for c in contacts if now - c.timestamp < window]

    def record_event(self, now: float, request: DecisionRequest) -> None:
        """The journey and open-journey changes the server's record step makes."""
        event = request.event
        fields = journey_fields(event)
        self.journey.insert(0, JourneyEntry(now, event.type, request.origin_channel, json.dumps(fields)))
        del self.journey[_JOURNEY_EVENTS:]
        change = open_journey_change(event)
        if change is None:
            return
        if change.op == "set":
            self.open_journeys[change.key] = OpenJourney(*change.key, now, fields)
        elif change.op == "del":
            self.open_journeys.pop(change.key, None)
        else:
            self.open_journeys = {k: v for k, v in self.open_journeys.items() if k[0] != change.key[0]}


# --- tallies and text -----------------------------------------------------------------


def _tally(side: SideReport, snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, decision: Decision) -> None:
    side.decisions[(decision.offer_id or "", decision.channel)] += 1
    if decision.no_action:
        overall = next((r.code for r in decision.reasons if not r.offer_id), "no_action")
        side.no_action_reasons[overall] += 1
    plan = snapshot.plans.get(event.type)
    if plan is not None:
        filtered = {r.offer_id for r in decision.reasons if r.code in _FILTERED_BY_RULES}
        side.eligible.update(snapshot.offers[i].id for i in plan.offers if snapshot.offers[i].id not in filtered)
    caps = check_caps(snapshot, ctx.contacts, ctx.now)
    table = snapshot.limits
    # every limit reached, once: a settings limit by its description, an offer's prefixed with the offer
    hits = [f"{table.owners[i]}: {table.rows[i][-1]}" if table.owners[i] else table.rows[i][-1] for i in caps.reached]
    for text in hits:
        side.capped.setdefault(text, set()).add(ctx.profile.customer_id)


def _why_not(decision: Decision, offer_id: str | None, snapshot: PolicySnapshot) -> str:
    """Why ``decision`` did not pick ``offer_id`` (the other side's choice)."""
    if offer_id is None:
        return ""
    if offer_id == decision.offer_id:
        return ""  # same offer, another channel: the decision line shows it
    if offer_id not in snapshot.offer_index:
        return f"{offer_id}: not in this set (paused or removed)"
    for reason in decision.reasons:
        if reason.offer_id == offer_id:
            return f"{offer_id}: {reason.code}: {reason.detail}"
    for alternative in decision.alternatives:
        if alternative.offer_id == offer_id:
            later = " (deferred by quiet hours)" if alternative.deliver_after is not None else ""
            return f"{offer_id}: ranked lower, priority {alternative.score:.4g} on {alternative.channel}{later}"
    if decision.no_action:
        return ""  # stopped before ranking (an overall cap): the decision line says why
    return f"{offer_id}: does not answer this event"


def _decision(decision: Decision) -> str:
    if decision.no_action:
        overall = next((r for r in decision.reasons if not r.offer_id), None)
        return "no action" + (f" ({overall.code}: {overall.detail})" if overall else "")
    return f"{decision.offer_id} on {decision.channel}, score {decision.score:.4g}"


def _changed_first(counts: dict[str, tuple[int, int]], max_rows: int) -> list[tuple[str, object, object, str]]:
    order = sorted(
        counts, key=lambda k: (counts[k][0] == counts[k][1], -abs(counts[k][1] - counts[k][0]), -max(counts[k]), k)
    )
    shown = [k for i, k in enumerate(order) if counts[k][0] != counts[k][1] or i < max_rows]
    rows: list = [(f"  {k}", counts[k][0], counts[k][1], _delta(*counts[k])) for k in shown]
    if len(shown) < len(order):
        rows.append(f"  ... and {len(order) - len(shown)} more, unchanged")
    return rows


def _table(rows: list[str | tuple[str, object, object, str]]) -> list[str]:
    """Lines as they are, rows as aligned columns: label, live, candidate, change."""
    cells = [r for r in rows if isinstance(r, tuple)]
    label = max(len(r[0]) for r in cells)
    value = max(len(str(v)) for r in cells for v in r[1:3])
    change = max(len(r[3]) for r in cells)
    return [
        r if isinstance(r, str) else f"{r[0]:<{label}}  {r[1]!s:>{value}}  {r[2]!s:>{value}}  {r[3]:>{change}}".rstrip()
        for r in rows
    ]


def _delta(a: int, b: int) -> str:
    return "" if a == b else f"{b - a:+d}"


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / max(total, 1):.1f}%)"


def _points(a: int, b: int, total: int) -> str:
    if a == b or not total:
        return ""
    return f"{100 * (b - a) / total:+.1f} pt"
