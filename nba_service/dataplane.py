"""The data plane: what every API entry point calls.

It reads the context, runs the engine against the live policy snapshot and
the models, records the decision, joins outcomes and teaches the models. The
gRPC servicers convert messages and call it; nothing here knows about gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping

import numpy as np
import redis
import redis.asyncio as aioredis

from nba_service.domain import (
    Alternative,
    CustomerContext,
    CustomerProfile,
    CustomerView,
    Decision,
    DecisionRequest,
    Event,
    NoPolicyError,
    NotFoundError,
    OutcomeKind,
    OutcomeStatus,
    RecordedEvent,
    RecordedOutcome,
    ServingMode,
    StoreUnavailableError,
    ValidationError,
    WriteResult,
)
from nba_service.domain.journeys import opened_product
from nba_service.domain.profile_update import Erasure, ProfileMask
from nba_service.engine.agent_view import agent_scripts, likely_reasons
from nba_service.engine.fallback import fallback_decision
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy, Explorer, make_explorer
from nba_service.learning.guard import ChallengerGuard, trial_weights
from nba_service.learning.models import ModelBank
from nba_service.observability.metrics import Metrics
from nba_service.observability.ratelimit import RateLimitedLog
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.settings import Settings
from nba_service.store import keys
from nba_service.store.connect import script_connection_for
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore
from nba_service.store.state import Budget, StateStore, budget_key

__all__ = ["AbandonedError", "DataPlane", "RecordedDecision", "Wanted"]

log = logging.getLogger(__name__)

CONTENTION_RETRIES = 5
"""Times a decision is re-read and re-decided when other requests keep contacting the same customer."""

Wanted = Callable[[], bool]
"""Asked right before a decision is recorded: is its caller still waiting (not cancelled, deadline not too near)?"""


class AbandonedError(Exception):
    """The caller had gone when its decision was due to be recorded: nothing was written."""


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedDecision:
    """A decision as recorded: its id (for outcomes), the request's id, and the decision."""

    decision_id: str
    request_id: str
    decision: Decision
    degraded: bool = False
    """The state store was unavailable: the policy's fallback, not recorded (``decision_id`` is empty)."""


def _explorer(settings: Settings, stream: int = 0) -> Explorer:
    """The exploration strategy the settings name, with its own random generator (``stream``: which one)."""
    return make_explorer(
        settings.strategy,
        epsilon=settings.epsilon,
        temperature=settings.temperature,
        draws=settings.thompson_draws,
        thompson_scale=settings.thompson_scale,
        ucb_width=settings.ucb_width,
        seed=None if settings.seed is None else settings.seed + stream,
    )


class DataPlane:
    """Decisions, outcomes and customer views over Redis state and the live policy."""

    _limited_log: RateLimitedLog | None = None
    """Warnings of the request path, rate-limited (created on first use)."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        sync_client: redis.Redis,
        metrics: Metrics,
        redis_url: str = "",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = StateStore(
            client,
            decision_ttl_seconds=settings.decision_ttl_seconds,
            journey_max_events=settings.journey_max_events,
            url=redis_url or settings.redis_url,
            # the scripts' connection reports its redirects and errors per Redis node to the metrics
            scripts=script_connection_for(client, redis_url or settings.redis_url, on_event=metrics.count_redis_event),
        )
        self._redis = client
        self._policies = PolicyStore(sync_client)
        self._model_store = ModelStore(sync_client)
        self.models = ModelBank()
        self.challenger: ModelBank | None = None
        """The learner's challenger models, when it trains some (mode ``learned+challenger``)."""
        self.rules = ModelBank()
        """No learned models: every arm scores its offer's prior (what the rules alone would do)."""
        self.engine = DecisionEngine(self.models, _explorer(settings))
        self.preview_engine = DecisionEngine(self.models, EpsilonGreedy(0.0))
        self.rules_engine = DecisionEngine(self.rules, _explorer(settings))
        self.rules_preview_engine = DecisionEngine(self.rules, EpsilonGreedy(0.0))
        self.challenger_engine = DecisionEngine(self.rules, _explorer(settings, stream=1))
        """The challenger's models (once loaded) with the champion's exploration strategy."""
        self.guard = ChallengerGuard()
        """The challenger's guard as the learner last published it."""
        self._split = np.random.default_rng(None if settings.seed is None else settings.seed + 2)
        """Draws which of champion and challenger serves a decision."""
        self.snapshot: PolicySnapshot | None = None
        self._refused_version: int | None = None
        self._refused_model: int | None = None
        self._exhausted: dict[str, float] = {}
        """Offer id -> end of the budget window in which this replica saw its budget used up."""

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Load the live policy version and the live model version."""
        await self.refresh_policy()
        await self.refresh_models()

    async def stop(self) -> None:
        """Nothing to flush (decisions and outcomes are written before each call returns): close connections."""
        await self.state.aclose()

    async def refresh_models(self) -> bool:
        """Load the live model version if it differs from the one served; True when swapped."""
        live = await asyncio.to_thread(self._model_store.live)
        if live is None or live == self.models.published_version or live == self._refused_model:
            return False
        try:
            data = await asyncio.to_thread(self._model_store.load_version, live)
            models = await asyncio.to_thread(ModelBank.from_bytes, data)
        except redis.RedisError:
            raise
        except Exception as exc:
            self._refused_model = live  # reported once; tried again only when the live pointer moves
            self.metrics.model_reloads.labels("failed").inc()
            log.error("model version %s unreadable, still serving %s: %s", live, self.models.version, exc)
            return False
        models.published_version = live
        if self.snapshot is not None:
            models.bind(self.snapshot)
        if self.settings.mode is ServingMode.LEARNED_CHALLENGER:
            challenger_data = await asyncio.to_thread(self._model_store.load_challenger)
            if challenger_data:
                try:
                    challenger = await asyncio.to_thread(ModelBank.from_bytes, challenger_data)
                    challenger.published_version = live
                    if self.snapshot is not None:
                        challenger.bind(self.snapshot)
                    self.challenger = challenger
                    self.challenger_engine.scorer = challenger
                    self._load_guard(ChallengerGuard.from_json(await asyncio.to_thread(self._model_store.load_guard)))
                except Exception as exc:
                    log.error("challenger models of version %s unreadable: %s", live, exc)
        self.models = self.engine.scorer = self.preview_engine.scorer = models
        self.metrics.model_version.set(live)
        self.metrics.model_reloads.labels("loaded").inc()
        log.info("serving model version %s (%d outcomes learned)", live, models.updates)
        return True

    def _load_guard(self, guard: ChallengerGuard) -> None:
        if guard.suspended and not self.guard.suspended:
            log.warning(
                "challenger suspended by its guard: %s outcomes, challenger minus champion %.4g "
                "(99%% CI high %.4g < 0); it is still logged and evaluated",
                guard.rows,
                *guard.difference()[0::2],
            )
        elif self.guard.suspended and not guard.suspended:
            log.info(
                "challenger's guard lifted: it serves %.0f%% of decisions again",
                100 * self.settings.challenger_share,
            )
        self.guard = guard
        self.metrics.challenger_share.set(self.challenger_share)

    @property
    def challenger_share(self) -> float:
        """The share of decisions the challenger serves now (0 before it exists or while suspended)."""
        if self.challenger is None or self.guard.suspended:
            return 0.0
        return self.settings.challenger_share

    async def refresh_policy(self) -> bool:
        """Load the live policy version if it differs from the one served; True when swapped.

        A version that fails to compile is reported and the last good one kept.
        """
        live = await asyncio.to_thread(self._policies.live)
        if (
            live is None
            or live == self._refused_version
            or (self.snapshot is not None and self.snapshot.version == str(live))
        ):
            return False
        try:
            published = await asyncio.to_thread(self._policies.load, live)
            snapshot = await asyncio.to_thread(_compile, published.files, str(live))
        except (PolicyValidationError, KeyError, ValueError) as exc:
            self._refused_version = live  # reported once; tried again only when the live pointer moves
            self.metrics.policy_reloads.labels("failed").inc()
            log.error(
                "policy version %s refused, still serving %s: %s",
                live,
                self.snapshot.version if self.snapshot else "nothing",
                exc,
            )
            return False
        self.models.bind(snapshot)
        self.rules.bind(snapshot)
        if self.challenger is not None:
            self.challenger.bind(snapshot)
        self.snapshot = snapshot
        self.metrics.policy_version.set(live)
        self.metrics.policy_reloads.labels("loaded").inc()
        log.info(
            "serving policy version %s (%d offers, %d channels)", live, len(snapshot.offers), len(snapshot.channels)
        )
        return True

    # --- requests -------------------------------------------------------------------

    def _live(self) -> PolicySnapshot:
        if self.snapshot is None:
            raise NoPolicyError("no policy set is published yet: run `nba policy publish DIR`")
        return self.snapshot

    async def decide(self, request: DecisionRequest, wanted: Wanted | None = None) -> RecordedDecision:
        """Read the customer's context, decide, record: the whole decision path of one request.

        ``wanted`` is asked right before the decision is recorded; when the caller is no longer
        waiting nothing is written (:class:`AbandonedError`): a decision nobody receives would use
        caps and budgets and teach the models a reward of 0.
        """
        started = time.perf_counter()
        snapshot = self._live()
        request_id = request.request_id or os.urandom(16).hex()
        now = time.time()
        for _ in range(CONTENTION_RETRIES):
            try:
                ctx = await self._read_context(
                    snapshot, request.customer_id, now, request.origin_channel, request.attributes
                )
                result, decision_id, decision = await self._decide_and_record(
                    snapshot, ctx, request, request_id, wanted
                )
            except StoreUnavailableError as exc:
                if not isinstance(exc.__cause__, redis.RedisError):
                    raise
                fallback = fallback_decision(snapshot, request, "the state store is unavailable")
                if fallback is None:
                    raise
                # degraded: the policy's safe action, not recorded (the store is down), not learned from
                self.metrics.decisions_degraded.labels(request.event.type).inc()
                return RecordedDecision("", request_id, fallback, degraded=True)
            if result is WriteResult.WRITTEN:
                break
            now = time.time()  # CONTACTS_CHANGED: another request reached this customer first; read again
        else:
            self.metrics.redis_errors.labels("contention").inc()
            raise StoreUnavailableError(
                "too many simultaneous decisions for this customer; nothing was recorded, retry"
            )
        product = opened_product(request.event)
        if product is not None:  # a decided product_opened moment: the holding, after the decision (see journeys)
            await self._add_holding(request.customer_id, product)
        self._observe(request, started, decision)
        return RecordedDecision(decision_id, request_id, decision)

    async def _add_holding(self, customer_id: str, product: str) -> None:
        """Add the holding of a decided ``product_opened`` moment. The decision is recorded already: a failure
        is logged and counted, not raised (a retry would record the decision twice); the next profile update
        or ``RecordEvent`` of the product adds it."""
        try:
            await self.state.add_holding(customer_id, product)
        except redis.RedisError as exc:
            self._unavailable("add_holding", exc)  # logged and counted
        except (StoreUnavailableError, ValidationError) as exc:
            log.warning("holding %r not added after a decided product_opened event: %s", product, exc)

    def _observe(self, request: DecisionRequest, started_at: float | None, decision: Decision) -> None:
        """Count a recorded decision (and time it, ``started_at`` given)."""
        self.metrics.observe_decision(
            request.event.type,
            None if started_at is None else time.perf_counter() - started_at,
            decision.offer_id or "none",
            decision.channel or "none",
            [r.code for r in decision.reasons if r.offer_id and r.code != "chosen" and not r.channel],
            next((r.code for r in reversed(decision.reasons) if not r.offer_id), "") if decision.no_action else "",
        )

    async def _read_context(
        self, snapshot: PolicySnapshot, customer_id: str, now: float, origin_channel: str, attributes: Mapping[str, str]
    ) -> CustomerContext:
        try:
            return await self.state.read_context(
                customer_id,
                now,
                origin_channel=origin_channel,
                request_attributes=attributes,
                contact_window=snapshot.max_limit_window,
                suppression_window=snapshot.max_suppression_window,
                accepted_window=snapshot.max_accepted_window,
            )
        except redis.RedisError as exc:
            raise self._unavailable("read_context", exc) from exc

    async def _decide_and_record(
        self,
        snapshot: PolicySnapshot,
        ctx: CustomerContext,
        request: DecisionRequest,
        request_id: str,
        wanted: Wanted | None = None,
    ) -> tuple[WriteResult, str, Decision]:
        """Decide and record atomically; an offer whose budget is gone is ruled out and the moment decided again.

        The write is issued only if ``wanted()`` says the caller still waits. A write the caller cancels
        while it is in flight still lands (the script runs whole): it is counted as a decision, and as
        unreturned.
        """
        exhausted = self._exhausted_budgets(ctx.now)
        for _ in range(len(snapshot.offers) + 1):  # each retry rules one more offer out: bounded
            decision, shadow, trial = self._decide(snapshot, ctx, request.event, request.top_k, exhausted)
            decision_id = keys.new_decision_id(ctx.profile.customer_id)  # its bucket, then 120 random bits
            offer = snapshot.offers[snapshot.offer_index[decision.offer_id]] if decision.offer_id else None
            budget = None
            if offer is not None and offer.budget is not None:
                budget = Budget(
                    budget_key(offer.id, offer.budget.per_seconds, ctx.now),
                    offer.budget.max,
                    int(offer.budget.per_seconds) + 60,
                )
            if wanted is not None and not wanted():
                self.metrics.decisions_abandoned.inc()
                raise AbandonedError(
                    "the caller's deadline is too near to record and answer a decision; nothing was recorded"
                )
            try:
                result = await self.state.write_decision(
                    decision_id,
                    request_id,
                    ctx,
                    request.event,
                    decision,
                    contact_window=snapshot.max_limit_window,
                    prior=offer.prior if offer else 0.0,
                    attribution_seconds=self.settings.attribution_seconds,
                    shadow=shadow,
                    budget=budget,
                    reward_on=offer.reward if offer else "accepted",
                    trial=trial,
                )
            except redis.RedisError as exc:
                raise self._unavailable("write_decision", exc) from exc
            except asyncio.CancelledError:
                self._observe(request, started_at=None, decision=decision)
                self.metrics.decisions_unreturned.labels("cancelled_in_write").inc()
                raise
            if result is not WriteResult.BUDGET_USED_UP or offer is None or offer.budget is None:
                return result, decision_id, decision
            # another request (on any replica) took the budget's last unit: decide again without it
            self._exhausted[offer.id] = (int(ctx.now // offer.budget.per_seconds) + 1) * offer.budget.per_seconds
            exhausted = exhausted | {offer.id}
        raise AssertionError("unreachable: every budgeted offer was ruled out")

    def _decide(
        self, snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, top_k: int, exhausted: frozenset[str]
    ) -> tuple[Decision, dict[str, object] | None, str]:
        """The served decision, what the mode's other policy would have chosen (None: not logged) and the
        champion/challenger trial weights ("" outside a trial)."""
        mode = self.settings.mode
        if mode is ServingMode.APPRENTICE:
            decision = self.rules_engine.decide(snapshot, ctx, event, top_k=top_k, exhausted=exhausted)
            return decision, self._shadow(self.preview_engine, "learned", snapshot, ctx, event, decision, exhausted), ""
        if mode is ServingMode.LEARNED_CHALLENGER and self.challenger is not None:  # nothing to try before the first
            return self._trial(snapshot, ctx, event, top_k, exhausted)
        decision = self.engine.decide(snapshot, ctx, event, top_k=top_k, exhausted=exhausted)
        if mode is ServingMode.LEARNED_SHADOW:
            shadow = self._shadow(self.rules_preview_engine, "rules", snapshot, ctx, event, decision, exhausted)
            return decision, shadow, ""
        return decision, None, ""

    def _trial(
        self, snapshot: PolicySnapshot, ctx: CustomerContext, event: Event, top_k: int, exhausted: frozenset[str]
    ) -> tuple[Decision, dict[str, object] | None, str]:
        """Champion or challenger serves (the challenger with probability :attr:`challenger_share`).

        The logged propensity is the mixture's, ``(1 - share) pi_champion + share pi_challenger`` of the
        served arm, so either policy's value can be estimated from every row; both probabilities are
        logged, and their weights go with the outcome to the learner's guard.
        """
        share = self.challenger_share
        by_challenger = share > 0.0 and bool(self._split.random() < share)
        serving, other = (self.challenger_engine, self.engine)
        if not by_challenger:
            serving, other = other, serving
        decision = serving.decide(snapshot, ctx, event, top_k=top_k, exhausted=exhausted)
        if decision.offer_id is None:
            return decision, None, ""
        arms, probabilities = other.distribution(snapshot, ctx, event, exhausted)
        p_other = float(probabilities[arms == snapshot.arm_index[(decision.offer_id, decision.channel)]].sum())
        pi_champion, pi_challenger = (p_other, decision.propensity) if by_challenger else (decision.propensity, p_other)
        mixture = (1.0 - share) * pi_champion + share * pi_challenger
        shadow: dict[str, object] = {
            "policy": "challenger",
            "served": "challenger" if by_challenger else "learned",
            "share": share,
            "pi_champion": pi_champion,
            "pi_challenger": pi_challenger,
        }
        weights = trial_weights(pi_champion / mixture, pi_challenger / mixture)
        return dataclasses.replace(decision, propensity=mixture), shadow, weights

    def _exhausted_budgets(self, now: float) -> frozenset[str]:
        """Offers whose budget this replica saw used up in the current window (no Redis call)."""
        if not self._exhausted:
            return frozenset()
        for offer_id in [o for o, until in self._exhausted.items() if until <= now]:
            del self._exhausted[offer_id]
        return frozenset(self._exhausted)

    def _shadow(
        self,
        engine: DecisionEngine,
        policy: str,
        snapshot: PolicySnapshot,
        ctx: CustomerContext,
        event: Event,
        served: Decision,
        exhausted: frozenset[str],
    ) -> dict[str, object]:
        """What the ``policy`` engine would have chosen (greedily), logged for off-policy evaluation.

        Also the learned models' P(accept) of the served and of the shadow action, the reward
        model a doubly-robust estimate needs.
        """
        other = engine.decide(snapshot, ctx, event, top_k=0, exhausted=exhausted)  # the served choice's budgets
        x = self.models.vectorize(served.features)
        return {
            "policy": policy,
            "served": "rules" if self.settings.mode is ServingMode.APPRENTICE else "learned",
            "offer_id": other.offer_id or "",
            "channel": other.channel,
            "p_served": self._learned_propensity(snapshot, served, x),
            "p_shadow": self._learned_propensity(snapshot, other, x),
        }

    def _learned_propensity(self, snapshot: PolicySnapshot, decision: Decision, x: np.ndarray) -> float:
        """The learned models' P(accept) of a decision's arm; 0 for no action."""
        arm = snapshot.arm_index.get((decision.offer_id, decision.channel)) if decision.offer_id else None
        return 0.0 if arm is None else float(self.models.score(np.array([arm]), x)[0])

    async def record_event(self, customer_id: str, origin_channel: str, event: Event) -> RecordedEvent:
        """Record a moment without deciding: the journey entry and its open-journey change (a purchase
        closes the cart), in one atomic script. No decision, contact, budget or learning; no policy needed."""
        try:
            recorded = await self.state.record_event(customer_id, origin_channel, event, time.time())
        except redis.RedisError as exc:
            raise self._unavailable("record_event", exc) from exc
        self.metrics.count_event(event.type)
        return recorded

    async def report_outcome(self, decision_id: str, outcome: OutcomeKind, value: float) -> RecordedOutcome:
        try:
            products = self.snapshot.products if self.snapshot else None  # what an acceptance records
            recorded = await self.state.record_outcome(
                decision_id, outcome.value, value, time.time(), products=products
            )
        except redis.RedisError as exc:
            raise self._unavailable("record_outcome", exc) from exc
        if recorded.status is OutcomeStatus.NOT_FOUND:
            self.metrics.outcomes_unmatched.labels("not_found").inc()
            raise NotFoundError(f"decision {decision_id!r} is unknown or has expired")
        if recorded.status is OutcomeStatus.DUPLICATE:
            self.metrics.outcomes_unmatched.labels("duplicate").inc()
            return recorded
        self.metrics.count_outcome(outcome.value, recorded.offer_id, recorded.channel)
        return recorded

    async def customer_context(
        self,
        customer_id: str,
        max_events: int,
        include_best_actions: bool,
        top_k: int = 3,
        agent_language: str = "",
        *,
        sensitive_shown: bool = True,
    ) -> tuple[CustomerView, tuple[Alternative, ...], str]:
        """What the agent desktop shows: the customer's view with its likely reasons (in ``agent_language``, else
        the policy's default language), the best actions with their agent scripts (``include_best_actions``), and
        the policy version. Nothing is recorded.

        Without ``sensitive_shown`` (a caller without the ``pii`` role), the policy's sensitive attributes are
        left out of the profile returned and of every text rendered for the agent: reasons and scripts read them
        as missing. The best actions are still decided on the whole profile (the same offers as with ``pii``)."""
        try:
            view = await self.state.customer_view(customer_id, max_events)
        except redis.RedisError as exc:
            raise self._unavailable("customer_view", exc) from exc
        snapshot = self.snapshot
        hidden = frozenset(snapshot.policy.settings.sensitive) if snapshot and not sensitive_shown else frozenset()
        best: tuple[Alternative, ...] = ()
        if snapshot is not None and (include_best_actions or snapshot.policy.reasons):
            ctx = await self._read_context(snapshot, customer_id, time.time(), "agent_desktop", {})
            shown = ctx
            if hidden & ctx.profile.attributes.keys():
                shown = dataclasses.replace(ctx, profile=ctx.profile.without_attributes(hidden))
            if snapshot.policy.reasons:
                view = dataclasses.replace(view, likely_reasons=likely_reasons(snapshot, shown, agent_language))
            if include_best_actions:
                best = self._preview_best(snapshot, ctx, shown, top_k, agent_language)
        if hidden & view.profile.attributes.keys():
            view = dataclasses.replace(view, profile=view.profile.without_attributes(hidden))
        return view, best, snapshot.version if snapshot else ""

    def _preview_best(
        self, snapshot: PolicySnapshot, ctx: CustomerContext, shown: CustomerContext, top_k: int, agent_language: str
    ) -> tuple[Alternative, ...]:
        """The best actions for an agent contact now, decided on ``ctx`` without recording anything, each with its
        offer's agent script rendered from ``shown`` (the context the agent may see)."""
        event = Event("agent_contact", {"agent_id": "", "reason": ""})
        decision = self.preview_engine.decide(snapshot, ctx, event, top_k=top_k)
        if decision.no_action:
            return ()
        chosen = Alternative(
            decision.offer_id or "", decision.channel, decision.score, deliver_after=decision.deliver_after
        )
        best = (chosen, *decision.alternatives)[:top_k]
        scripts = agent_scripts(snapshot, shown, event, (a.offer_id for a in best), agent_language)
        return tuple(
            dataclasses.replace(a, agent_script=scripts[a.offer_id][0], agent_script_language=scripts[a.offer_id][1])
            if a.offer_id in scripts
            else a
            for a in best
        )

    async def upsert_customer(
        self, profile: CustomerProfile, mask: ProfileMask | None = None, *, caller: str = "", request_id: str = ""
    ) -> bool:
        """Store the fields of ``profile`` that ``mask`` names (no mask: all but the consents not listed);
        consent changes are audited with ``caller`` and ``request_id``. True when the customer is new."""
        try:
            return await self.state.upsert_profile(profile, mask, caller=caller, request_id=request_id, now=time.time())
        except redis.RedisError as exc:
            raise self._unavailable("upsert_customer", exc) from exc

    async def delete_customer(self, customer_id: str, caller: str, request_id: str = "") -> Erasure:
        """Erase everything stored about the customer; the erasure is audited (under a pseudonym)."""
        try:
            erasure = await self.state.erase_customer(
                customer_id, caller=caller, request_id=request_id, now=time.time()
            )
        except redis.RedisError as exc:
            raise self._unavailable("delete_customer", exc) from exc
        log.info(
            "customer erasure by %s (request %r): %s, %d decisions deleted",
            caller,
            request_id,
            "erased" if erasure.erased else "nothing was stored",
            erasure.decisions,
        )
        return erasure

    def _unavailable(self, operation: str, exc: Exception) -> StoreUnavailableError:
        self.metrics.redis_errors.labels(operation).inc()
        if self._limited_log is None:  # one line per operation per interval: an outage fails every call
            self._limited_log = RateLimitedLog(log, self.settings.log_interval_seconds)
        self._limited_log.warning(("redis", operation), "redis %s failed: %s", operation, exc)
        return StoreUnavailableError(f"state store unavailable during {operation}; nothing was recorded, retry")


def _compile(files: Mapping[str, str], version: str) -> PolicySnapshot:
    return PolicySnapshot.compile(parse_policy_files(files), version)
