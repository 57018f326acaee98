"""The decision pipeline: context -> candidates -> eligibility -> contact policy
-> scoring -> arbitration -> channel -> decision.

Pure Python and numpy over domain objects: no I/O, no gRPC, no Redis. The
caller reads the context, passes the policy snapshot, a scorer and an
exploration strategy, and records the decision it gets back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from nba_service.domain import Alternative, CustomerContext, Decision, Event, Reason, RenderedContent
from nba_service.engine.arbitration import Ranking, rank_offers
from nba_service.engine.contact_policy import NO_HITS, CapHits, ChannelVerdict, channel_verdict, check_caps
from nba_service.engine.features import request_features
from nba_service.engine.options import Options
from nba_service.policies.content import Template
from nba_service.policies.model import OfferSpec
from nba_service.policies.scope import evaluation_globals
from nba_service.policies.snapshot import EventPlan, PolicySnapshot

__all__ = [
    "LANGUAGE_ATTRIBUTE",
    "DecisionEngine",
    "Explorer",
    "Scorer",
    "arm_factors",
    "priority_text",
    "render",
    "render_content",
]

log = logging.getLogger(__name__)

_GLOBALS = evaluation_globals()
LANGUAGE_ATTRIBUTE = "language"
"""The profile attribute holding the customer's language (``es``, ``en-GB``): the content's language."""


class Scorer(Protocol):
    """The posterior of acceptance of arms of the bound policy snapshot."""

    version: str

    def vectorize(self, features: Mapping[str, float]) -> np.ndarray: ...

    def posterior(self, arms: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per arm: the logit's posterior mean and standard deviation, and the value multiplier."""
        ...


class Explorer(Protocol):
    """Picks one arm of the options and says with what probability it did."""

    def pick(self, options: Options) -> tuple[int, float]: ...

    def distribution(self, options: Options) -> np.ndarray:
        """The probability of every arm of the options (exact, or estimated as :meth:`pick`'s propensity is)."""
        ...


@dataclasses.dataclass(slots=True)
class _Candidates:
    """The working set of one decision: which candidates of the plan are still in, and why the others left."""

    plan: EventPlan
    offer_ok: np.ndarray
    """One bool per candidate of ``plan.offers``."""
    reasons: list[Reason]
    verdict: ChannelVerdict | None = None
    """What the contact policy said of each channel (set by the contact-policy stage)."""
    caps: CapHits = NO_HITS
    """What the contact history blocks (set by the contact-policy stage)."""

    def rule_out(self, positions: Iterable[int], reason: Callable[[int], Reason]) -> None:
        """Take the candidates at ``positions`` out, each with its reason."""
        for p in positions:
            self.offer_ok[p] = False
            self.reasons.append(reason(p))


@dataclasses.dataclass(frozen=True, slots=True)
class _Scored:
    """The allowed arms of a decision with their propensity, value factor and priority, in one order."""

    arms: np.ndarray
    """Arm indices of the snapshot."""
    propensities: np.ndarray
    """P(accept) at the posterior mean."""
    logit_mean: np.ndarray
    logit_sd: np.ndarray
    factors: np.ndarray
    """(V - costs) x L x B of each arm, times its learned value multiplier."""
    scale: np.ndarray
    """The factors times the preferred-channel boost and the defer weight: priority = P x scale."""
    priorities: np.ndarray
    """P x (V - costs) x L x B, times the preferred-channel boost and the defer weight."""
    defer_weights: np.ndarray | None = None
    """Per arm, its channel's ``defer_weight`` when the channel defers now (1 otherwise); None: no arm is
    weighted."""

    def defer_weight(self, position: int) -> float:
        """What the priority of the arm at ``position`` was multiplied by because its channel defers (1: not)."""
        return 1.0 if self.defer_weights is None else float(self.defer_weights[position])


class DecisionEngine:
    """Decides one customer moment against one policy snapshot.

    :meth:`decide` runs the pipeline, one method a stage: :meth:`_eligibility`,
    :meth:`_suppression`, :meth:`_holdings`, :meth:`_contact_policy`, :meth:`_score`,
    :meth:`_arbitrate`, :meth:`_pick`. Each stage narrows the candidates and
    says why it left an offer out; a stage that leaves nothing ends the
    decision with "no action" and its reason.
    """

    def __init__(self, scorer: Scorer, explorer: Explorer) -> None:
        self.scorer = scorer
        self.explorer = explorer

    def decide(
        self,
        snapshot: PolicySnapshot,
        ctx: CustomerContext,
        event: Event,
        *,
        top_k: int = 3,
        exhausted: frozenset[str] = frozenset(),
    ) -> Decision:
        """Decide one moment; ``exhausted`` offers have used up their global budget."""
        staged = self._stages(snapshot, ctx, event, exhausted)
        if isinstance(staged, Decision):
            return staged
        scored, ranking, options, candidates, scope, features = staged
        return self._pick(snapshot, scored, ranking, options, candidates, ctx, event, scope, features, top_k)

    def distribution(
        self, snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, exhausted: frozenset[str] = frozenset()
    ) -> tuple[np.ndarray, np.ndarray]:
        """The arms this engine could choose for the moment and the probability of each (its exploration's).

        Arms are indices into ``snapshot.arm_keys``; both arrays are empty when the engine would take no
        action.
        """
        staged = self._stages(snapshot, ctx, event, exhausted)
        if isinstance(staged, Decision):
            return np.empty(0, dtype=np.intp), np.empty(0)
        scored, ranking, options, *_ = staged
        candidates, choice = self._choice(snapshot, scored, ranking, options)
        return scored.arms[candidates], self.explorer.distribution(choice)

    def _stages(
        self, snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, exhausted: frozenset[str]
    ) -> Decision | tuple[_Scored, Ranking, np.ndarray, _Candidates, dict[str, Any], Mapping[str, float]]:
        """Every stage before the pick: a no-action decision, or what the pick chooses from."""
        features = request_features(ctx, event)
        plan = snapshot.plans.get(event.type)
        if plan is None:
            return self._no_action(snapshot, features, [], "no_candidates", f"no offer answers {event.type} events")
        scope = snapshot.scope(ctx, event)
        candidates = _Candidates(plan, plan.all_candidates.copy(), [])
        self._eligibility(candidates, ctx.now, scope)
        self._suppression(snapshot, candidates, ctx, exhausted)
        self._holdings(snapshot, candidates, ctx)
        caps = check_caps(snapshot, ctx.contacts, ctx.now)
        if caps.everything:
            return self._no_action(snapshot, features, candidates.reasons, "frequency_cap", caps.everything)
        allowed = self._contact_policy(snapshot, candidates, ctx, scope, caps)
        if not len(allowed):
            return self._no_action(
                snapshot,
                features,
                candidates.reasons,
                "nothing_allowed",
                "no offer passed eligibility and contact policy",
            )
        scored = self._score(snapshot, plan, allowed, features, ctx, scope, candidates)
        ranking, options = self._arbitrate(snapshot, scored, candidates.reasons)
        if not len(options):
            return self._no_action(
                snapshot, features, candidates.reasons, "below_threshold", "no offer is worth sending"
            )
        return scored, ranking, options, candidates, scope, features

    # --- the stages -------------------------------------------------------------------

    def _eligibility(self, candidates: _Candidates, now: float, scope: dict[str, Any]) -> None:
        """Validity windows, then every eligibility rule of the event type in one evaluation.

        A rule that raises fails its offer with a ``rule_error`` reason; a rule of an
        offer already out of its window is not reported.
        """
        plan = candidates.plan
        first_live, last_live = plan.live_between
        if not first_live <= now < last_live:  # usually every candidate is live: nothing to check
            live = (plan.valid_from <= now) & (now < plan.valid_until)
            candidates.rule_out((~live).nonzero()[0].tolist(), plan.not_live_reasons.__getitem__)
        if plan.rules_code is None:
            return
        results = self._evaluate(plan.rules_code, plan.rules, scope)
        offer_ok, reasons = candidates.offer_ok, candidates.reasons
        # a Python loop: a plan has tens of rules, fewer than it takes numpy to pay off
        for k, position in enumerate(plan.rule_positions.tolist()):
            result = results[k]
            if (result and not isinstance(result, Exception)) or not offer_ok[position]:
                continue  # passed, or already out of its window (not reported twice)
            offer_ok[position] = False
            if isinstance(result, Exception):
                reasons.append(Reason(plan.rule_reasons[k].offer_id, "rule_error", f"{plan.rules[k].source}: {result}"))
            else:
                reasons.append(plan.rule_reasons[k])

    def _suppression(
        self, snapshot: PolicySnapshot, candidates: _Candidates, ctx: CustomerContext, exhausted: frozenset[str]
    ) -> None:
        """Offers whose global budget is used up, and offers this customer keeps declining."""
        plan, offers, offer_ok = candidates.plan, snapshot.offers, candidates.offer_ok
        if exhausted:
            gone = [snapshot.offer_index[o] for o in exhausted if o in snapshot.offer_index]

            def spent(p: int) -> Reason:
                offer = offers[plan.offers[p]]
                return Reason(
                    offer.id,
                    "budget_exhausted",
                    f"at most {offer.budget.max} per {offer.budget.per}" if offer.budget else "budget used up",
                )

            candidates.rule_out((np.isin(plan.offers, gone) & offer_ok).nonzero()[0].tolist(), spent)
        if ctx.declines and len(plan.suppress_after):
            declined = _recent_declines(snapshot, ctx.declines, ctx.now)[plan.offers]

            def suppressed(p: int) -> Reason:
                offer = offers[plan.offers[p]]
                per = offer.suppress_after.per if offer.suppress_after else ""
                return Reason(offer.id, "suppressed", f"declined {declined[p]} times in {per}")

            candidates.rule_out((offer_ok & (declined >= plan.suppress_after)).nonzero()[0].tolist(), suppressed)

    def _holdings(self, snapshot: PolicySnapshot, candidates: _Candidates, ctx: CustomerContext) -> None:
        """Offers selling a product the customer holds (``already_held``), or accepted (an offer selling it)
        within the offer's ``accepted_window`` (``already_accepted``)."""
        plan = candidates.plan
        holdings = ctx.profile.holdings
        if not plan.products or not (holdings or ctx.accepted):
            return
        accepted: dict[str, tuple[float, str]] = {}  # product -> (latest acceptance, its offer)
        for ts, offer_id, product in ctx.accepted:
            for sold in {product, snapshot.products.get(offer_id, "")} - {""}:
                if sold not in accepted or ts > accepted[sold][0]:
                    accepted[sold] = (ts, offer_id)
        offer_ok, reasons = candidates.offer_ok, candidates.reasons
        for position, index in plan.products:
            if not offer_ok[position]:
                continue
            offer = snapshot.offers[index]
            product = offer.product
            if product in holdings:
                offer_ok[position] = False
                reasons.append(Reason(offer.id, "already_held", f"the customer holds {product}"))
                continue
            found = accepted.get(product)
            window = snapshot.offer_accepted_window[index]
            if found is not None and found[0] >= ctx.now - window:
                offer_ok[position] = False
                ago, within = _duration_text(max(0.0, ctx.now - found[0])), _duration_text(window)
                detail = f"{product} accepted {ago} ago (offer {found[1]}), within accepted_window {within}"
                reasons.append(Reason(offer.id, "already_accepted", detail))

    def _contact_policy(
        self,
        snapshot: PolicySnapshot,
        candidates: _Candidates,
        ctx: CustomerContext,
        scope: dict[str, Any],
        caps: CapHits,
    ) -> np.ndarray:
        """Caps over the contact history, then consent, reach, channel conditions and quiet hours.

        Returns the positions in ``plan.arms`` of the arms still allowed; an offer left
        with no allowed arm gets a ``no_channel`` reason naming each channel's refusal.
        """
        plan, offers, offer_ok = candidates.plan, snapshot.offers, candidates.offer_ok
        if caps.offers or caps.categories:
            capped_offers = np.zeros(len(offers), dtype=bool)
            capped_offers[list(caps.offers)] = True
            capped_categories = np.zeros(len(snapshot.category_index), dtype=bool)
            capped_categories[list(caps.categories)] = True
            capped = offer_ok & (capped_offers[plan.offers] | capped_categories[plan.offer_category])

            def cap_reason(p: int) -> Reason:
                index = plan.offers[p]
                return Reason(
                    offers[index].id,
                    "frequency_cap",
                    caps.offers.get(index) or caps.categories[snapshot.offer_category[index]],
                )

            candidates.rule_out(capped.nonzero()[0].tolist(), cap_reason)
        channel_results = (
            self._evaluate(snapshot.channel_rules_code, snapshot.channel_rules, scope)
            if snapshot.channel_rules_code is not None
            else None
        )
        verdict = channel_verdict(snapshot, ctx.profile, ctx.send_at or ctx.now, channel_results, caps)
        candidates.verdict, candidates.caps = verdict, caps
        arm_ok = offer_ok[plan.arm_position] & verdict.allowed[plan.arm_channel]
        if caps.arms:
            capped_arms = np.zeros(len(snapshot.arm_keys), dtype=bool)
            capped_arms[list(caps.arms)] = True
            arm_ok &= ~capped_arms[plan.arms]
        reachable = np.logical_or.reduceat(arm_ok, plan.arm_start)  # per offer: any of its arms allowed

        def no_channel(p: int) -> Reason:
            offer = offers[plan.offers[p]]
            why = "; ".join(
                verdict.reasons[snapshot.channel_index[c]][1]
                or f"{c}: {caps.arms.get(snapshot.arm_index[(offer.id, c)], 'not allowed')}"
                for c in offer.channels
            )
            return Reason(offer.id, "no_channel", why)

        candidates.rule_out((offer_ok & ~reachable).nonzero()[0].tolist(), no_channel)
        return arm_ok.nonzero()[0]

    def _score(
        self,
        snapshot: PolicySnapshot,
        plan: EventPlan,
        allowed: np.ndarray,
        features: Mapping[str, float],
        ctx: CustomerContext,
        scope: dict[str, Any],
        candidates: _Candidates,
    ) -> _Scored:
        """P (the model's propensity) x V x L x B of every allowed arm, with the preferred-channel boost and, on a
        channel that defers now (its quiet hours, ``on_quiet_hours: defer``), its ``defer_weight``."""
        arms = plan.arms[allowed]
        mean, sd, value = self.scorer.posterior(arms, self.scorer.vectorize(features))
        propensities = 1.0 / (1.0 + np.exp(-mean))
        factors = arm_factors(snapshot, plan, arms, candidates.offer_ok, scope) * value
        scale = factors.copy()
        preferred = snapshot.channel_index.get(ctx.profile.preferred_channel)
        if preferred is not None and snapshot.settings.preferred_channel_boost != 1.0:
            scale[plan.arm_channel[allowed] == preferred] *= snapshot.settings.preferred_channel_boost
        weights = None
        if candidates.verdict is not None and candidates.verdict.defer_weights:
            per_channel = np.ones(len(snapshot.channels))
            for channel, weight in candidates.verdict.defer_weights.items():
                per_channel[channel] = weight
            weights = per_channel[plan.arm_channel[allowed]]
            scale *= weights
        return _Scored(arms, propensities, mean, sd, factors, scale, propensities * scale, weights)

    def _arbitrate(
        self, snapshot: PolicySnapshot, scored: _Scored, reasons: list[Reason]
    ) -> tuple[Ranking, np.ndarray]:
        """Rank offers by their best arm; keep those worth sending (at or above the threshold, never at 0:
        a lever or weight of 0 pauses an offer). Returns the ranking and the positions in it of the options."""
        ranking = rank_offers(scored.priorities, snapshot.arm_offer[scored.arms])
        threshold = snapshot.settings.no_action_threshold
        above = (ranking.priorities >= threshold) & (ranking.priorities > 0)
        for r in (~above).nonzero()[0].tolist():
            position = int(ranking.arms[r])
            priority = priority_text(float(ranking.priorities[r]), scored.defer_weight(position))
            reasons.append(
                Reason(
                    snapshot.arm_keys[scored.arms[position]][0],
                    "below_threshold",
                    f"priority {priority} < {threshold:g}",
                )
            )
        return ranking, above.nonzero()[0]

    def _pick(
        self,
        snapshot: PolicySnapshot,
        scored: _Scored,
        ranking: Ranking,
        options: np.ndarray,
        candidates: _Candidates,
        ctx: CustomerContext,
        event: Event,
        scope: dict[str, Any],
        features: Mapping[str, float],
        top_k: int,
    ) -> Decision:
        """Exploration picks an arm of the options (logging the probability of the pick); the content is rendered.

        The reasons start with ``chosen``; then, when the chosen channel is in quiet hours that defer,
        ``deferred`` (on that channel: when the action is to be delivered); then why each other channel of the
        chosen offer was not used. An alternative on a channel that defers says when it would be delivered."""
        chosen, pick, propensity = self._explore(snapshot, scored, ranking, options)
        offer_id, channel = snapshot.arm_keys[scored.arms[chosen]]
        offer = snapshot.offers[snapshot.offer_index[offer_id]]
        best = snapshot.arm_keys[scored.arms[ranking.arms[options[0]]]]
        why = "best priority" if (offer_id, channel) == best else f"exploration (best was {best[0]} on {best[1]})"
        deferral = candidates.verdict.deferred.get(snapshot.channel_index[channel]) if candidates.verdict else None
        reasons = candidates.reasons
        reasons[0:0] = [
            Reason(
                offer_id,
                "chosen",
                f"{why}: P={float(scored.propensities[chosen]):.4f} x "
                f"VLB={float(scored.factors[chosen]):.4g}{_weight_text(scored.defer_weight(chosen))} on {channel}",
            ),
            *([Reason(offer_id, "deferred", deferral[1], channel)] if deferral else []),
            *_channel_reasons(snapshot, scored, chosen, offer.channels, candidates),
        ]
        content = render_content(offer, channel, snapshot.settings.default_language, scope, ctx, event)
        runners_up = [options[r] for r in range(min(len(options), top_k + 1)) if r != pick][:top_k]
        deferred = candidates.verdict.deferred if candidates.verdict else {}
        alternatives = []
        for r in runners_up:
            other, on = snapshot.arm_keys[int(scored.arms[ranking.arms[r]])]
            later = deferred.get(snapshot.channel_index[on])
            alternatives.append(
                Alternative(other, on, float(ranking.priorities[r]), deliver_after=later[0] if later else None)
            )
        return Decision(
            offer_id=offer_id,
            channel=channel,
            score=float(scored.priorities[chosen]),
            propensity=propensity,
            offer_name=offer.name,
            category=offer.category,
            content=content.body,
            rendered=content,
            alternatives=tuple(alternatives),
            reasons=tuple(reasons),
            policy_version=snapshot.version,
            model_version=self.scorer.version,
            features=features,
            deliver_after=deferral[0] if deferral else None,
        )

    def _explore(
        self, snapshot: PolicySnapshot, scored: _Scored, ranking: Ranking, options: np.ndarray
    ) -> tuple[int, int, float]:
        """The chosen arm (a position in ``scored``), the rank of its offer among the options, and its propensity."""
        candidates, choice = self._choice(snapshot, scored, ranking, options)
        picked, propensity = self.explorer.pick(choice)
        chosen = int(candidates[picked])
        offer_of_arm = snapshot.arm_offer[scored.arms]
        rank = int(np.flatnonzero(offer_of_arm[ranking.arms[options]] == offer_of_arm[chosen])[0])
        return chosen, rank, propensity

    @staticmethod
    def _choice(
        snapshot: PolicySnapshot, scored: _Scored, ranking: Ranking, options: np.ndarray
    ) -> tuple[np.ndarray, Options]:
        """What the strategy picks from (positions in ``scored``, and their :class:`Options`).

        The strategy sees every arm of the option offers that is itself worth sending (priority above the
        threshold), so it may pick another channel of an offer than its best one."""
        offer_of_arm = snapshot.arm_offer[scored.arms]
        option_offers = offer_of_arm[ranking.arms[options]]
        threshold = snapshot.settings.no_action_threshold
        is_option = np.zeros(len(snapshot.offers), dtype=bool)  # np.isin, without its cost on a few arms
        is_option[option_offers] = True
        candidates = np.flatnonzero(
            is_option[offer_of_arm] & (scored.priorities >= threshold) & (scored.priorities > 0)
        )
        position = {int(arm): i for i, arm in enumerate(candidates)}
        choice = Options(
            priorities=ranking.priorities[options],
            best=np.array([position[int(a)] for a in ranking.arms[options]], dtype=np.intp),
            logit_mean=scored.logit_mean[candidates],
            logit_sd=scored.logit_sd[candidates],
            scale=scored.scale[candidates],
        )
        return candidates, choice

    def _no_action(
        self, snapshot: PolicySnapshot, features: Mapping[str, float], reasons: list[Reason], code: str, detail: str
    ) -> Decision:
        return Decision(
            offer_id=None,
            channel="",
            score=0.0,
            propensity=1.0,
            reasons=(*reasons, Reason("", code, detail)),
            policy_version=snapshot.version,
            model_version=self.scorer.version,
            features=features,
        )

    @staticmethod
    def _evaluate(code: Any, rules: tuple[Any, ...], scope: dict[str, Any]) -> tuple[Any, ...] | list[Any]:
        """Every rule's result, in one evaluation: a tuple; a list (with the exceptions) when one failed."""
        if code is None:
            return ()
        try:
            return eval(code, _GLOBALS, scope)
        except Exception:  # one rule failed: find which, the others still count
            results = []
            for rule in rules:
                try:
                    results.append(eval(rule.code, _GLOBALS, scope))
                except Exception as exc:
                    results.append(exc)
            return results


def _channel_reasons(
    snapshot: PolicySnapshot, scored: _Scored, chosen: int, channels: Iterable[str], candidates: _Candidates
) -> list[Reason]:
    """Why the chosen arm's offer is not sent on each of its other ``channels``.

    Only from what the stages already know: the contact policy's verdict of the channel (consent,
    reach, ``available_when``, channel cap, quiet hours), the offer's per-channel caps, else the
    arm's priority against the chosen one's.
    """
    offer_id, channel = snapshot.arm_keys[scored.arms[chosen]]
    verdict, arm_caps = candidates.verdict, candidates.caps.arms
    out = []
    arms: list[int] | None = None
    for other in channels:
        if other == channel:
            continue
        code, detail = verdict.reasons[snapshot.channel_index[other]] if verdict is not None else ("", "")
        arm = snapshot.arm_index[(offer_id, other)]
        if code:
            detail = detail.removeprefix(f"{other}: ")  # the channel has its own field
        elif arm in arm_caps:
            code, detail = "frequency_cap", arm_caps[arm]
        else:
            if arms is None:
                arms = scored.arms.tolist()
            code, detail = _ranked_lower(snapshot, scored, chosen, channel, arms.index(arm) if arm in arms else -1)
        out.append(Reason(offer_id, code, detail, other))
    return out


def _ranked_lower(
    snapshot: PolicySnapshot, scored: _Scored, chosen: int, channel: str, position: int
) -> tuple[str, str]:
    """Why an open channel of the chosen offer (``position`` in ``scored``) did not carry it."""
    if position < 0:  # not scored: every stage let it through, so this does not happen
        return "not_allowed", "not allowed"
    priority, best = float(scored.priorities[position]), float(scored.priorities[chosen])
    digits = 4
    while digits < 12 and priority != best and f"{priority:.{digits}g}" == f"{best:.{digits}g}":
        digits += 1  # "1.99995 < 2", not "2 < 2"
    shown = priority_text(priority, scored.defer_weight(position), digits)
    shown_best = priority_text(best, scored.defer_weight(chosen), digits)
    threshold = snapshot.settings.no_action_threshold
    if priority < threshold or priority <= 0:
        return "below_threshold", f"priority {shown} < {threshold:g}" if priority < threshold else "priority 0"
    if priority > best:
        return "exploration", f"priority {shown}, but exploration chose {channel} ({shown_best})"
    if priority == best:
        return "lower_priority", f"priority {shown}, the same as on {channel} (ranked first)"
    return "lower_priority", f"priority {shown} < {shown_best} on {channel}"


def _weight_text(weight: float) -> str:
    """`` x deferred 0.5`` for an arm weighted by its channel's ``defer_weight``; empty for one that is not."""
    return "" if weight == 1.0 else f" x deferred {weight:g}"


def priority_text(priority: float, weight: float, digits: int = 4) -> str:
    """A priority as reasons show it (``digits`` significant digits): ``1.2``, or ``1.2 (2.4 x deferred 0.5)``
    when its channel's ``defer_weight`` weighted it.

    >>> priority_text(2.0, 1.0), priority_text(1.2, 0.5), priority_text(1.99995, 1.0, 6)
    ('2', '1.2 (2.4 x deferred 0.5)', '1.99995')
    """
    if weight == 1.0:
        return f"{priority:.{digits}g}"
    return f"{priority:.{digits}g} ({priority / weight:.{digits}g}{_weight_text(weight)})"


def arm_factors(
    snapshot: PolicySnapshot, plan: EventPlan, arms: np.ndarray, offer_ok: np.ndarray, scope: dict[str, Any]
) -> np.ndarray:
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
                        value = float(eval(expression.code, _GLOBALS, scope))
                    except Exception as exc:
                        log.warning(  # the exception's type only: its message may quote a customer's attribute
                            "value of %s (%s) failed: %s",
                            snapshot.offers[index].id,
                            expression.source,
                            type(exc).__name__,
                        )
                        value = 0.0
                    values[index] = value if math.isfinite(value) else 0.0
    offers = snapshot.arm_offer[arms]
    return np.maximum(values[offers] - snapshot.arm_cost[arms], 0.0) * snapshot.offer_levers[offers]


def _values_at_once(plan: EventPlan, scope: dict[str, Any]) -> np.ndarray | None:
    """Every value expression of the plan in one evaluation; None when one fails or is not a number."""
    if plan.value_code is None:
        return None
    try:
        # float() of each, as the one-by-one path: a list or a text that is no number fails
        computed = np.fromiter(
            map(float, eval(plan.value_code, _GLOBALS, scope)), dtype=np.float64, count=len(plan.value_offers)
        )
    except Exception:
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


def _duration_text(seconds: float) -> str:
    """A duration as policies write it, rounded down: ``90d``, ``5h``, ``12m``, ``30s``.

    >>> _duration_text(90 * 86400), _duration_text(750), _duration_text(3)
    ('90d', '12m', '3s')
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def render(
    template: str, variables: Mapping[str, Any], scope: dict[str, Any], ctx: CustomerContext, event: Event
) -> str:
    """Fill a content template from the profile, the event and the offer's variables (no bounds)."""
    return Template.compile(template).render(template_values(variables, scope, ctx, event))


def render_content(
    offer: OfferSpec,
    channel: str,
    default_language: str,
    scope: dict[str, Any],
    ctx: CustomerContext,
    event: Event,
    language: str | None = None,
) -> RenderedContent:
    """The offer's content for ``channel``, in ``language`` (by default the customer's ``language``
    attribute; then the set's ``default_language``, then the first written), every field rendered."""
    channel_content = offer.channel_content.get(channel)
    if channel_content is None:  # an offer built without the parser (a test, a tool): its text alone
        return RenderedContent(body=render(offer.template_for(channel), offer.variables, scope, ctx, event))
    wanted = ctx.profile.attributes.get(LANGUAGE_ATTRIBUTE, "") if language is None else language
    variant = channel_content.pick(wanted, default_language)
    fields = variant.render(template_values(offer.variables, scope, ctx, event))
    return RenderedContent(
        body=fields.get("body", ""),
        title=fields.get("title", ""),
        subject=fields.get("subject", ""),
        html=fields.get("html", ""),
        deep_link=fields.get("deep_link", ""),
        image_url=fields.get("image_url", ""),
        cta_label=fields.get("cta.label", ""),
        cta_action=fields.get("cta.action", ""),
        language=variant.language,
    )


def template_values(
    variables: Mapping[str, Any], scope: dict[str, Any], ctx: CustomerContext, event: Event
) -> dict[str, Any]:
    """What content templates read: the profile's first name and segment, the event's fields and the offer's
    variables (computed once; one that fails is empty)."""
    values: dict[str, Any] = {"first_name": ctx.profile.first_name, "segment": ctx.profile.segment}
    values.update(event.fields)
    for name, expression in variables.items():
        try:
            value = eval(expression.code, _GLOBALS, scope)
        except Exception as exc:
            log.warning("variable %s (%s) failed: %s", name, expression.source, type(exc).__name__)
            value = ""
        values[name] = "" if value is None else value
    return values
