"""Why a decision came out the way it did: every candidate offer, what filtered
it, and P, V, L and B of every (offer, channel) arm.

:class:`~nba_service.engine.pipeline.DecisionEngine` returns the decision and
its ``reasons``; :func:`explain_decision` puts them next to the numbers the
engine ranked with, recomputed from the same snapshot, scorer and context:

    priority = P x V x L x B (x preferred_channel_boost on the preferred channel)
               (x the channel's defer_weight while it defers in its quiet hours)

Pure: no I/O, nothing recorded; the same inputs give the same explanation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nba_service.domain import CustomerContext, Decision, Event
from nba_service.domain.localtime import local_time
from nba_service.engine.contact_policy import channel_verdict, check_caps
from nba_service.engine.features import request_features
from nba_service.engine.pipeline import Scorer, arm_factors, priority_text
from nba_service.policies.scope import evaluation_globals
from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["ArmScore", "OfferExplanation", "explain_decision", "score_arms"]

_GLOBALS = evaluation_globals()
_FILTERED_BEFORE_SCORING = frozenset(
    {"not_live", "not_eligible", "rule_error", "frequency_cap", "already_held", "already_accepted"}
)


@dataclasses.dataclass(frozen=True, slots=True)
class ArmScore:
    """The arbitration numbers of one (offer, channel) arm for one moment."""

    offer_id: str
    channel: str
    p: float
    """Propensity: the model's probability of acceptance (the prior until outcomes are learned)."""
    v: float
    """The offer's value (computed for this moment if it is an expression) less the offer's and the
    channel's costs, as the engine multiplies it."""
    l: float  # noqa: E741 - the L of P x V x L x B
    """Levers: offer x category x global."""
    b: float
    """Business weight."""
    boost: float
    """``preferred_channel_boost`` on the customer's preferred channel, else 1."""
    vlb: float
    """V x L x B exactly as the engine multiplies it."""
    closed: str = ""
    """Why this channel cannot carry the offer now (empty when it can)."""
    deferred: str = ""
    """When it is open but in quiet hours that defer: when the action would be delivered, e.g. ``deliver
    after Thu 2026-06-11 08:00 local time`` (the decision's ``deferred`` reason says why)."""
    defer_weight: float = 1.0
    """The channel's ``defer_weight`` when it defers now (``deferred`` set), else 1."""

    @property
    def priority(self) -> float:
        return self.p * self.vlb * self.boost * self.defer_weight


@dataclasses.dataclass(frozen=True, slots=True)
class OfferExplanation:
    """One candidate offer of the moment and what became of it."""

    offer_id: str
    name: str
    status: str
    """``chosen``, ``ranked``, ``paused``, ``not_decided`` or the engine's reason code."""
    detail: str
    arms: tuple[ArmScore, ...] = ()
    """Its arms, best first; empty when rules or caps filtered the offer before scoring."""
    rank: int = 0
    """1 for the chosen offer, 2… for the ranked alternatives, 0 otherwise."""


def score_arms(snapshot: PolicySnapshot, scorer: Scorer, ctx: CustomerContext, event: Event) -> tuple[ArmScore, ...]:
    """P, V, L, B and channel status of every arm of the offers that answer ``event``."""
    plan = snapshot.plans.get(event.type)
    if plan is None or not len(plan.arms):
        return ()
    settings = snapshot.settings
    logit_mean, _, value = scorer.posterior(plan.arms, scorer.vectorize(request_features(ctx, event)))
    propensities = 1.0 / (1.0 + np.exp(-logit_mean))
    scope = snapshot.scope(ctx, event)
    caps = check_caps(snapshot, ctx.contacts, ctx.now)
    verdict = channel_verdict(
        snapshot, ctx.profile, ctx.send_at or ctx.now, _channel_rule_results(snapshot, scope), caps
    )
    factors = arm_factors(snapshot, plan, plan.arms, np.ones(len(plan.offers), dtype=bool), scope) * value
    out = []
    for arm, p, factor in zip(plan.arms, propensities, factors, strict=False):
        offer_id, channel = snapshot.arm_keys[arm]
        offer = snapshot.offers[snapshot.offer_index[offer_id]]
        levers = offer.lever * settings.category_levers.get(offer.category, 1.0) * settings.global_lever
        preferred = channel == ctx.profile.preferred_channel and channel in snapshot.channel_index
        closed = verdict.reasons[snapshot.channel_index[channel]][1]
        if not closed and int(arm) in caps.arms:
            closed = f"{channel}: {caps.arms[int(arm)]}"
        index = snapshot.channel_index[channel]
        deferral = verdict.deferred.get(index) if not closed else None
        out.append(
            ArmScore(
                offer_id=offer_id,
                channel=channel,
                p=float(p),
                v=float(factor) / (levers * offer.weight) if levers * offer.weight else 0.0,
                l=levers,
                b=offer.weight,
                boost=settings.preferred_channel_boost if preferred else 1.0,
                vlb=float(factor),
                closed=closed,
                deferred=_deferred(deferral[0], ctx.profile.timezone) if deferral else "",
                defer_weight=verdict.defer_weights.get(index, 1.0) if deferral else 1.0,
            )
        )
    return tuple(out)


def explain_decision(
    snapshot: PolicySnapshot, scorer: Scorer, ctx: CustomerContext, event: Event, decision: Decision
) -> tuple[OfferExplanation, ...]:
    """Every offer that answers ``event`` (paused ones too), in the order the engine ranked them.

    ``decision`` is what the engine decided for exactly these inputs; ask it
    for enough alternatives (``top_k``) to rank every offer left.
    """
    arms: dict[str, list[ArmScore]] = {}
    for arm in score_arms(snapshot, scorer, ctx, event):
        arms.setdefault(arm.offer_id, []).append(arm)
    reasons = {r.offer_id: r for r in decision.reasons if r.offer_id and r.code != "chosen" and not r.channel}
    chosen = next((r.detail for r in decision.reasons if r.code == "chosen"), "")
    overall = next((r for r in decision.reasons if not r.offer_id), None)
    ranks = {a.offer_id: (i + 2, a) for i, a in enumerate(decision.alternatives)}
    plan = snapshot.plans.get(event.type)
    out = []
    for index in plan.offers if plan is not None else ():
        offer = snapshot.offers[index]
        these = tuple(sorted(arms.get(offer.id, ()), key=lambda a: (bool(a.closed), -a.priority)))
        if offer.id == decision.offer_id:
            out.append(OfferExplanation(offer.id, offer.name, "chosen", chosen, these, 1))
        elif offer.id in ranks:
            rank, alternative = ranks[offer.id]
            weight = next((a.defer_weight for a in these if a.channel == alternative.channel), 1.0)
            out.append(
                OfferExplanation(
                    offer.id,
                    offer.name,
                    "ranked",
                    f"priority {priority_text(alternative.score, weight)} on {alternative.channel}",
                    these,
                    rank,
                )
            )
        elif offer.id in reasons:
            reason = reasons[offer.id]
            shown = () if reason.code in _FILTERED_BEFORE_SCORING else these
            out.append(OfferExplanation(offer.id, offer.name, reason.code, reason.detail, shown))
        else:  # passed its own checks, but the decision stopped before ranking (an overall cap)
            why = f"{overall.code}: {overall.detail}" if overall else "not ranked"
            out.append(OfferExplanation(offer.id, offer.name, "not_decided", why, these))
    out.sort(key=lambda o: (o.rank == 0, o.rank, _ORDER.get(o.status, 9)))
    for offer in snapshot.policy.offers:
        if offer.paused and event.type in offer.events:
            out.append(OfferExplanation(offer.id, offer.name, "paused", "paused: true in the policy set"))
    return tuple(out)


def _deferred(deliver_after: float, timezone: str) -> str:
    return f"deliver after {local_time(deliver_after, timezone):%a %Y-%m-%d %H:%M} local time"


_ORDER = {
    "below_threshold": 0,
    "not_decided": 1,
    "no_channel": 2,
    "frequency_cap": 3,
    "rule_error": 4,
    "not_eligible": 5,
    "not_live": 6,
}


def _channel_rule_results(snapshot: PolicySnapshot, scope: dict[str, Any]) -> tuple[Any, ...] | None:
    """Each channel's ``available_when`` result, or the exception it raised (as the engine evaluates them)."""
    if snapshot.channel_rules_code is None:
        return None
    try:
        return tuple(eval(snapshot.channel_rules_code, _GLOBALS, scope))
    except Exception:  # one rule failed: find which, the others still count
        results: list[Any] = []
        for rule in snapshot.channel_rules:
            try:
                results.append(eval(rule.code, _GLOBALS, scope))
            except Exception as exc:
                results.append(exc)
        return tuple(results)
