"""The decision pipeline: context -> candidates -> eligibility -> contact policy
-> scoring -> arbitration -> channel -> decision.

Pure Python and numpy over domain objects: no I/O, no gRPC, no Redis. The
caller reads the context, passes the policy snapshot, a scorer and an
exploration strategy, and records the decision it gets back.
"""

from __future__ import annotations

import logging
import math
import string
from collections.abc import Mapping
from itertools import compress
from typing import Any, Protocol

import numpy as np

from nba_service.engine.arbitration import rank_offers
from nba_service.engine.contact_policy import check_caps, check_channels
from nba_service.engine.domain import Alternative, CustomerContext, Decision, Event, Reason
from nba_service.engine.features import request_features, vectorize
from nba_service.policies.expressions import build_scope, evaluation_globals
from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["DecisionEngine", "Explorer", "Scorer", "arm_factors", "render"]

log = logging.getLogger(__name__)

_GLOBALS = evaluation_globals()
_FORMATTER = string.Formatter()


class Scorer(Protocol):
    """Propensity of acceptance for arms of the bound policy snapshot."""

    version: str

    def score(self, arms: np.ndarray, x: np.ndarray) -> np.ndarray: ...


class Explorer(Protocol):
    """Picks one of the ranked options and says with what probability it did."""

    def choose(self, priorities: np.ndarray) -> tuple[int, float]: ...


def _passed(result: Any) -> bool:
    """A rule passes when its result is true; an error fails it."""
    return not isinstance(result, Exception) and bool(result)


class DecisionEngine:
    """Decides one customer moment against one policy snapshot."""

    def __init__(self, scorer: Scorer, explorer: Explorer) -> None:
        self.scorer = scorer
        self.explorer = explorer

    def decide(self, snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, top_k: int = 3,
               exhausted: frozenset[str] = frozenset()) -> Decision:
        """Decide one moment; ``exhausted`` offers have used up their global budget."""
        features = request_features(ctx, event)
        plan = snapshot.plans.get(event.type)
        if plan is None:
            return self._no_action(snapshot, features, (Reason("", "no_candidates", f"no offer answers {event.type} events"),))
        scope = build_scope(ctx, event, snapshot.places)
        reasons: list[Reason] = []
        offers = snapshot.offers
        now = ctx.now

        # eligibility: validity window, then every rule of the event type in one eval
        n = len(plan.offers)
        first_live, last_live = plan.live_between
        if first_live <= now < last_live:  # the usual case: every candidate is live
            offer_ok = plan.all_candidates.copy()
        else:
            offer_ok = (plan.valid_from <= now) & (now < plan.valid_until)
            reasons.extend(compress(plan.not_live_reasons, (~offer_ok).tolist()))
        if plan.rules_code is not None:
            results = self._evaluate(plan.rules_code, plan.rules, scope)
            passed = np.fromiter(map(bool, results) if type(results) is tuple else map(_passed, results),
                                 dtype=bool, count=len(results))
            failed = ~passed & offer_ok[plan.rule_positions]  # a rule out of its window is not reported
            failed_rules = failed.nonzero()[0]
            if len(failed_rules):
                offer_ok[plan.rule_positions[failed_rules]] = False
                for k in failed_rules.tolist():
                    result = results[k]
                    reasons.append(plan.rule_reasons[k] if not isinstance(result, Exception) else
                                   Reason(plan.rule_reasons[k].offer_id, "rule_error", f"{plan.rules[k].source}: {result}"))

        # budgets used up across all customers, and offers this customer keeps declining
        if exhausted:
            gone = [snapshot.offer_index[o] for o in exhausted if o in snapshot.offer_index]
            for p in (np.isin(plan.offers, gone) & offer_ok).nonzero()[0].tolist():
                offer = offers[plan.offers[p]]
                offer_ok[p] = False
                reasons.append(Reason(offer.id, "budget_exhausted", f"at most {offer.budget.max} per {offer.budget.per}"
                                      if offer.budget else "budget used up"))
        if ctx.declines and len(plan.suppress_after):
            declined = _recent_declines(snapshot, ctx.declines, now)[plan.offers]
            for p in (offer_ok & (declined >= plan.suppress_after)).nonzero()[0].tolist():
                offer = offers[plan.offers[p]]
                offer_ok[p] = False
                reasons.append(Reason(offer.id, "suppressed", f"declined {declined[p]} times in "
                                                               f"{offer.suppress_after.per}"))  # type: ignore[union-attr]

        # contact policy: caps over the history, then consent, reach, conditions, quiet hours
        caps = check_caps(snapshot, ctx.contacts, now)
        if caps.everything:
            return self._no_action(snapshot, features, (*reasons, Reason("", "frequency_cap", caps.everything)))
        if caps.offers or caps.categories:
            capped_offers = np.zeros(len(offers), dtype=bool)
            capped_offers[list(caps.offers)] = True
            capped_categories = np.zeros(len(snapshot.category_index), dtype=bool)
            capped_categories[list(caps.categories)] = True
            capped = offer_ok & (capped_offers[plan.offers] | capped_categories[plan.offer_category])
            for p in capped.nonzero()[0].tolist():
                index = plan.offers[p]
                offer_ok[p] = False
                reasons.append(Reason(offers[index].id, "frequency_cap",
                                      caps.offers.get(index) or caps.categories[snapshot.offer_category[index]]))
        channel_results = (self._evaluate(snapshot.channel_rules_code, snapshot.channel_rules, scope)
                           if snapshot.channel_rules_code is not None else None)
        verdict = check_channels(snapshot, ctx.profile, ctx.now, channel_results, caps)
        arms = plan.arms
        arm_ok = offer_ok[plan.arm_position] & verdict.allowed[plan.arm_channel]
        if caps.arms:
            capped_arms = np.zeros(len(snapshot.arm_keys), dtype=bool)
            capped_arms[list(caps.arms)] = True
            arm_ok &= ~capped_arms[arms]
        reachable = np.logical_or.reduceat(arm_ok, plan.arm_start)  # per offer: any of its arms allowed
        for p in (offer_ok & ~reachable).nonzero()[0].tolist():
            offer = offers[plan.offers[p]]
            why = "; ".join(
                verdict.reasons[snapshot.channel_index[c]][1]
                or f"{c}: {caps.arms.get(snapshot.arm_index[(offer.id, c)], 'not allowed')}"
                for c in offer.channels
            )
            reasons.append(Reason(offer.id, "no_channel", why))
        allowed = arm_ok.nonzero()[0]
        if not len(allowed):
            return self._no_action(snapshot, features, (*reasons, Reason("", "nothing_allowed", "no offer passed eligibility and contact policy")))

        # scoring and arbitration: P x V x L x B (x preferred-channel boost)
        chosen_arms = arms[allowed]
        x = vectorize(features)
        propensities = self.scorer.score(chosen_arms, x)
        factors = arm_factors(snapshot, plan, chosen_arms, offer_ok, scope)
        priorities = propensities * factors
        preferred = snapshot.channel_index.get(ctx.profile.preferred_channel)
        if preferred is not None and snapshot.settings.preferred_channel_boost != 1.0:
            priorities[plan.arm_channel[allowed] == preferred] *= snapshot.settings.preferred_channel_boost
        ranking = rank_offers(priorities, plan.arm_position[allowed])
        # worth sending: at or above the threshold, and never a zero priority (a lever or weight of 0 pauses)
        above = (ranking.priorities >= snapshot.settings.no_action_threshold) & (ranking.priorities > 0)
        for r in (~above).nonzero()[0].tolist():
            arm = chosen_arms[ranking.arms[r]]
            reasons.append(Reason(snapshot.arm_keys[arm][0], "below_threshold",
                                  f"priority {ranking.priorities[r]:.4g} < {snapshot.settings.no_action_threshold:g}"))
        options = ranking.arms[above]
        if not len(options):
            return self._no_action(snapshot, features, (*reasons, Reason("", "below_threshold", "no offer is worth sending")))

        # exploration: pick among the options, logging the probability of the pick
        pick, propensity = self.explorer.choose(ranking.priorities[above])
        winner_arm = chosen_arms[options[pick]]
        offer_id, channel = snapshot.arm_keys[winner_arm]
        offer = offers[snapshot.offer_index[offer_id]]
        score = float(ranking.priorities[pick])
        p_model = float(propensities[options[pick]])
        why = "best priority" if pick == 0 else f"exploration (best was {snapshot.arm_keys[chosen_arms[options[0]]][0]})"
        vlb = float(factors[options[pick]])
        reasons.insert(0, Reason(offer_id, "chosen", f"{why}: P={p_model:.4f} x VLB={vlb:.4g} on {channel}"))
        runners_up = [r for r in range(min(len(options), top_k + 1)) if r != pick][:top_k]
        alternatives = tuple(Alternative(*snapshot.arm_keys[chosen_arms[options[r]]], float(ranking.priorities[r]))
                             for r in runners_up)
        return Decision(
            offer_id=offer_id,
            channel=channel,
            score=score,
            propensity=propensity,
            offer_name=offer.name,
            category=offer.category,
            content=render(offer.template_for(channel), offer.variables, scope, ctx, event),
            alternatives=alternatives,
            reasons=tuple(reasons),
            policy_version=snapshot.version,
            model_version=self.scorer.version,
            features=features,
        )

    def _no_action(self, snapshot: PolicySnapshot, features: Mapping[str, float], reasons: tuple[Reason, ...]) -> Decision:
        return Decision(offer_id=None, channel="", score=0.0, propensity=1.0, reasons=reasons,
                        policy_version=snapshot.version, model_version=self.scorer.version, features=features)

    @staticmethod
    def _evaluate(code: Any, rules: tuple[Any, ...], scope: dict[str, Any]) -> tuple[Any, ...] | list[Any]:
        """Every rule's result, in one evaluation: a tuple; a list (with the exceptions) when one failed."""
        if code is None:
            return ()
        try:
            return eval(code, _GLOBALS, scope)  # noqa: S307 - a whitelisted, precompiled expression
        except Exception:  # one rule failed: find which, the others still count
            results = []
            for rule in rules:
                try:
                    results.append(eval(rule.code, _GLOBALS, scope))  # noqa: S307
                except Exception as exc:  # noqa: BLE001 - reported as the rule's reason
                    results.append(exc)
            return results


def arm_factors(snapshot: PolicySnapshot, plan: Any, arms: np.ndarray, offer_ok: np.ndarray,
                scope: dict[str, Any]) -> np.ndarray:
    """(V - costs) x L x B of each of ``arms``; value expressions are computed for this request.

    A value expression that fails or is not a finite number gives the offer a value of 0.
    """
    values = snapshot.offer_value
    if plan.value_expressions:
        values = values.copy()
        computed = _values_at_once(plan, scope)
        if computed is not None:
            values[plan.value_offers] = computed
        else:  # one failed or is not a number: each on its own, for the offers still in play
            for position, index, expression in plan.value_expressions:
                if offer_ok[position]:
                    try:
                        value = float(eval(expression.code, _GLOBALS, scope))  # noqa: S307
                    except Exception as exc:  # noqa: BLE001
                        log.warning("value of %s (%s) failed: %s", snapshot.offers[index].id, expression.source, exc)
                        value = 0.0
                    values[index] = value if math.isfinite(value) else 0.0
    offers = snapshot.arm_offer[arms]
    return np.maximum(values[offers] - snapshot.arm_cost[arms], 0.0) * snapshot.offer_levers[offers]


def _values_at_once(plan: Any, scope: dict[str, Any]) -> np.ndarray | None:
    """Every value expression of the plan in one evaluation; None when one fails or is not a number."""
    try:
        # float() of each, as the one-by-one path: a list or a text that is no number fails
        computed = np.fromiter(map(float, eval(plan.value_code, _GLOBALS, scope)),  # noqa: S307
                               dtype=float, count=len(plan.value_offers))
    except Exception:  # noqa: BLE001 - evaluated again one by one, and the failure logged
        return None
    computed[~np.isfinite(computed)] = 0.0
    return computed


def _recent_declines(snapshot: PolicySnapshot, declines: tuple[tuple[float, str], ...], now: float) -> np.ndarray:
    """Per offer of the snapshot, the customer's declines within its ``suppress_after`` window."""
    index = snapshot.offer_index
    offers = np.fromiter((index.get(offer_id, -1) for _, offer_id in declines), dtype=np.intp, count=len(declines))
    times = np.fromiter((ts for ts, _ in declines), dtype=float, count=len(declines))
    known = offers >= 0  # declines of offers no longer in the policy
    offers, times = offers[known], times[known]
    recent = times >= now - snapshot.offer_suppress_seconds[offers]
    return np.bincount(offers[recent], minlength=len(snapshot.offers))


def render(template: str, variables: Mapping[str, Any], scope: dict[str, Any], ctx: CustomerContext,
           event: Event) -> str:
    """Fill a content template from the profile, the event and the offer's variables."""
    values: dict[str, Any] = {"first_name": ctx.profile.first_name, "segment": ctx.profile.segment}
    values.update(event.fields)
    for name, expression in variables.items():
        try:
            value = eval(expression.code, _GLOBALS, scope)  # noqa: S307
        except Exception as exc:  # noqa: BLE001
            log.warning("variable %s (%s) failed: %s", name, expression.source, exc)
            value = ""
        values[name] = "" if value is None else value
    return template.format_map(_Formatted(values))


class _Formatted(dict[str, Any]):
    """Numbers shown the way people write them: 100 not 100.0, 12.50 not 12.5."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key) if key in self else ""
        if value is None:
            return ""
        if isinstance(value, float) and not isinstance(value, bool):
            if math.isfinite(value) and value == int(value):
                return str(int(value))
            return f"{value:.2f}"
        return value
