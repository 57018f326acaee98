"""A policy set compiled for the request path.

Built once per published version, off the request path, then shared by every
request until the next version: offers and channels are numbered, every
(offer, channel) pair is an *arm* with its own model, the eligibility rules of
the offers of one event type are compiled into one code object, and values,
levers, weights and contact limits are numpy arrays so the engine filters and
ranks all candidates at once.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from types import CodeType
from typing import Any

import numpy as np

from nba_service.domain import EVENT_FIELDS, CustomerContext, Event, LimitBlocks, Reason
from nba_service.policies.compiler import CompiledExpression, compile_batch
from nba_service.policies.holiday_calendar import HolidayCalendar
from nba_service.policies.model import ChannelSpec, GlobalSettings, Limit, OfferSpec, PolicySet
from nba_service.policies.scope import build_scope

__all__ = ["EventPlan", "LimitRow", "LimitTable", "PolicySnapshot"]

_NO = -1
_NEVER = 2**62
"""A number of declines no customer reaches."""


@dataclasses.dataclass(frozen=True, slots=True)
class EventPlan:
    """What one event type needs: its candidate offers, their rules and arms."""

    offers: np.ndarray
    """Indices of the candidate offers (live or not; validity is checked per request)."""
    rule_positions: np.ndarray
    """Positions in ``offers`` of the offers that have an eligibility rule, in ``rules`` order."""
    rules: tuple[CompiledExpression, ...]
    rules_code: CodeType | None
    """All of ``rules`` as one code object returning a tuple of results."""
    arms: np.ndarray
    """Indices of the candidates' arms, grouped by offer."""
    arm_position: np.ndarray
    """For each of ``arms``, the position of its offer in ``offers``."""
    value_expressions: tuple[tuple[int, int, CompiledExpression], ...] = ()
    """(position in ``offers``, offer index, expression) of the offers whose value is computed per request."""
    rule_reasons: tuple[Reason, ...] = ()
    """The "not_eligible" reason of each rule, built once."""
    live_between: tuple[float, float] = (float("-inf"), float("inf"))
    """Every candidate is inside its validity window from the first to the second time."""
    valid_from: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    valid_until: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    """The candidates' validity windows, in ``offers`` order."""
    not_live_reasons: tuple[Reason, ...] = ()
    """The "not_live" reason of each candidate, built once."""
    suppress_after: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Per candidate, the declines within its window that suppress it (a number never reached when it
    has no ``suppress_after``); empty when no candidate has one."""
    value_code: CodeType | None = None
    """All of ``value_expressions`` as one code object returning a tuple of values."""
    value_offers: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.intp))
    """The offer index of each of ``value_expressions``."""
    offer_category: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.intp))
    """The category index of each candidate."""
    all_candidates: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=bool))
    """True for every candidate: copied as the start of each request's mask."""
    arm_channel: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.intp))
    """The channel index of each of ``arms``."""
    arm_start: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.intp))
    """Where each candidate's arms start in ``arms`` (every offer has at least one channel)."""
    products: tuple[tuple[int, int], ...] = ()
    """(position in ``offers``, offer index) of the candidates that sell a product (checked against the
    customer's holdings and accepted offers)."""


LimitRow = tuple[float, int, str | None, frozenset[str], tuple[tuple[LimitBlocks, int], ...], str]
"""One contact limit for the per-request loop: (window seconds, max, the channel it narrows to or None, the
channels whose contacts it does not count (those of the other direction), what a hit blocks: (kind, index of
the arm, offer, channel or category) pairs, its description)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LimitTable:
    """Contact limits, indexed by what a contact can match, each with its per-request row."""

    limits: tuple[Limit, ...]
    rows: tuple[LimitRow, ...]
    """Per limit, as plain Python values for the per-request loop (see :data:`LimitRow`)."""
    by_offer: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    """Limits that count a contact of this offer (offer limits, with or without a channel)."""
    by_channel: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    """Settings limits narrowed to this channel."""
    by_category: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    """Settings limits narrowed to this category."""
    overall: tuple[int, ...] = ()
    """Settings limits that count every contact."""
    closed: tuple[int, ...] = ()
    """Limits with ``max: 0``: reached without any contact."""
    owners: tuple[str, ...] = ()
    """Per limit, the id of the offer it belongs to ("" for a settings limit)."""

    def __len__(self) -> int:
        return len(self.limits)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySnapshot:
    version: str
    policy: PolicySet
    settings: GlobalSettings
    offers: tuple[OfferSpec, ...]
    channels: tuple[ChannelSpec, ...]
    offer_index: Mapping[str, int]
    channel_index: Mapping[str, int]
    category_index: Mapping[str, int]
    arm_keys: tuple[tuple[str, str], ...]
    """(offer id, channel id) of every arm."""
    arm_index: Mapping[tuple[str, str], int]
    arm_offer: np.ndarray
    arm_channel: np.ndarray
    offer_value: np.ndarray
    """V of every offer (1 where the value is an expression, computed per request)."""
    offer_levers: np.ndarray
    """L x B of every offer: its levers (offer, category, global) times its business weight."""
    arm_cost: np.ndarray
    """The offer's cost plus the channel's cost, for every arm: subtracted from V."""
    offer_category: np.ndarray
    arm_prior: np.ndarray
    channel_needs_reachable: tuple[bool, ...]
    channel_default_consent: tuple[bool, ...]
    channel_rule_positions: tuple[int, ...]
    channel_rules: tuple[CompiledExpression, ...]
    channel_rules_code: CodeType | None
    limits: LimitTable
    max_limit_window: float
    """The longest contact-limit window: contact history older than this never matters."""
    plans: Mapping[str, EventPlan]
    places: Mapping[str, tuple[object, ...]] = dataclasses.field(default_factory=dict)
    """The policy's places by kind, for the geolocated rule functions."""
    place_ids: Mapping[str, object] = dataclasses.field(default_factory=dict)
    """The policy's places by id: an event whose ``place_id`` names one is at that place."""
    calendar: HolidayCalendar | None = None
    """The public holidays of the countries the set names (None: it names none)."""
    max_suppression_window: float = 0.0
    """The longest decline-suppression window (0: no offer suppresses after declines)."""
    offer_suppress_seconds: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0))
    """Per offer, the window of its ``suppress_after`` in seconds (0 without one)."""
    every_channel: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=bool))
    """True for every channel, read-only: the verdict when nothing closes a channel."""
    channel_refusals: tuple[tuple[tuple[str, str], tuple[str, str], tuple[str, str]], ...] = ()
    """Per channel, its (code, detail) when the customer has not consented, is not reachable there,
    or its availability condition is false: built once."""
    channel_defer_weight: tuple[float, ...] = ()
    """Per channel, its ``defer_weight``: what an arm's priority is multiplied by while the channel defers (in
    its quiet hours, ``on_quiet_hours: defer``); 1 for a channel that does not defer. Empty: no weighting (a
    campaign's plan, :func:`nba_service.campaigns.plan.campaign_snapshot`)."""
    offer_product: tuple[str, ...] = ()
    """Per offer, the product it sells ("" for none)."""
    offer_accepted_window: tuple[float, ...] = ()
    """Per offer, its ``accepted_window`` in seconds (the set's default where it declares none; 0 without a
    product)."""
    products: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Offer id -> the product it sells, for every offer of the set that sells one (paused ones too): what
    an acceptance records."""
    max_accepted_window: float = 0.0
    """The longest ``accepted_window`` of an offer with a product (0: no offer sells a product)."""

    def scope(self, ctx: CustomerContext, event: Event) -> dict[str, Any]:
        """What the rules of one request read (:func:`~nba_service.policies.scope.build_scope`), with this
        set's places and holiday calendar."""
        return build_scope(ctx, event, self.places, place_ids=self.place_ids, calendar=self.calendar)

    @classmethod
    def compile(cls, policy: PolicySet, version: str) -> PolicySnapshot:
        """Compile ``policy`` for the request path, one stage after the other:

        1. number the live offers, the channels, the categories and the arms (:func:`_number`);
        2. the per-offer and per-arm arrays: values, levers, costs, priors, validity (:func:`_offer_arrays`);
        3. the contact-limit table (:func:`_limit_table`);
        4. one :class:`EventPlan` per event type that has candidate offers (:func:`_event_plans`);
        5. the channel rules and the refusal messages of each channel (:func:`_channel_rules`,
           :func:`_channel_refusals`).
        """
        settings = policy.settings
        numbers = _number(policy)
        arrays = _offer_arrays(numbers, settings)
        limits = _limit_table(numbers, settings)
        plans = _event_plans(numbers, arrays)
        channels = numbers.channels
        channel_rule_positions, channel_rules, channel_rules_code = _channel_rules(channels)
        return cls(
            version=version,
            policy=policy,
            settings=settings,
            offers=numbers.offers,
            channels=channels,
            offer_index=numbers.offer_index,
            channel_index=numbers.channel_index,
            category_index=numbers.category_index,
            arm_keys=numbers.arm_keys,
            arm_index=numbers.arm_index,
            arm_offer=numbers.arm_offer,
            arm_channel=numbers.arm_channel,
            offer_value=arrays.value,
            offer_levers=arrays.levers,
            arm_cost=arrays.arm_cost,
            offer_category=arrays.offer_category,
            arm_prior=arrays.arm_prior,
            max_suppression_window=arrays.max_suppression_window,
            offer_suppress_seconds=arrays.suppress_seconds,
            limits=limits,
            max_limit_window=max((float(limit.per_seconds) for limit in limits.limits), default=0.0),
            plans=plans,
            places=policy.places_by_kind(),
            place_ids={place.id: place for place in policy.places},
            calendar=_calendar(settings),
            channel_needs_reachable=tuple(c.needs_reachable for c in channels),
            channel_default_consent=tuple(c.default_consent for c in channels),
            channel_rule_positions=channel_rule_positions,
            channel_rules=channel_rules,
            channel_rules_code=channel_rules_code,
            every_channel=_read_only(np.ones(len(channels), dtype=bool)),
            channel_refusals=_channel_refusals(channels),
            channel_defer_weight=tuple(c.defer_weight for c in channels),
            **_products(numbers.offers, policy),
        )


# --- compilation stages ---------------------------------------------------------------


def _products(offers: tuple[OfferSpec, ...], policy: PolicySet) -> dict[str, Any]:
    """The product each offer sells and its ``accepted_window``, per offer and by id."""
    default = policy.settings.accepted_window_seconds
    windows = tuple(
        (default if o.accepted_window_seconds is None else o.accepted_window_seconds) if o.product else 0.0
        for o in offers
    )
    return {
        "offer_product": tuple(o.product for o in offers),
        "offer_accepted_window": windows,
        "products": {o.id: o.product for o in policy.offers if o.product},
        "max_accepted_window": max(windows, default=0.0),
    }


def _calendar(settings: GlobalSettings) -> HolidayCalendar | None:
    """The set's holiday calendar, this year's and next year's holidays computed now (not on a request)."""
    if not settings.holiday_countries:
        return None
    calendar = HolidayCalendar(settings.holiday_countries, settings.holiday_subdivisions)
    calendar.warm(datetime.datetime.now(datetime.UTC).year)
    return calendar


@dataclasses.dataclass(frozen=True, slots=True)
class _Numbering:
    """The index of every live offer, channel, category and arm (stage 1)."""

    offers: tuple[OfferSpec, ...]
    channels: tuple[ChannelSpec, ...]
    offer_index: dict[str, int]
    channel_index: dict[str, int]
    category_index: dict[str, int]
    arm_keys: tuple[tuple[str, str], ...]
    arm_index: dict[tuple[str, str], int]
    arm_offer: np.ndarray
    arm_channel: np.ndarray


def _number(policy: PolicySet) -> _Numbering:
    """Stage 1: number the offers that are not paused, the channels, the categories and the arms.

    Categories are sorted (those of the offers and of the category levers); arms, the (offer,
    channel) pairs, are numbered offer by offer in the order of each offer's channels.
    """
    offers = tuple(o for o in policy.offers if not o.paused)
    offer_index = {o.id: i for i, o in enumerate(offers)}
    channel_index = {c.id: i for i, c in enumerate(policy.channels)}
    categories = sorted({o.category for o in offers} | set(policy.settings.category_levers))
    arm_keys = tuple((o.id, ch) for o in offers for ch in o.channels)
    return _Numbering(
        offers=offers,
        channels=policy.channels,
        offer_index=offer_index,
        channel_index=channel_index,
        category_index={c: i for i, c in enumerate(categories)},
        arm_keys=arm_keys,
        arm_index={key: i for i, key in enumerate(arm_keys)},
        arm_offer=np.array([offer_index[o] for o, _ in arm_keys], dtype=np.intp),
        arm_channel=np.array([channel_index[c] for _, c in arm_keys], dtype=np.intp),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _OfferArrays:
    """What the engine multiplies and compares, one entry per offer or per arm (stage 2)."""

    value: np.ndarray
    levers: np.ndarray
    arm_cost: np.ndarray
    arm_prior: np.ndarray
    offer_category: np.ndarray
    valid_from: np.ndarray
    """-inf for an offer without a start."""
    valid_until: np.ndarray
    """inf for an offer without an end."""
    suppress_seconds: np.ndarray
    max_suppression_window: float


def _offer_arrays(numbers: _Numbering, settings: GlobalSettings) -> _OfferArrays:
    """Stage 2: the value, levers, category, validity and suppression window of every offer;
    the cost (offer's plus channel's) and prior of every arm."""
    offers, offer_index = numbers.offers, numbers.offer_index
    channel_cost = {c.id: c.cost for c in numbers.channels}
    inf = float("inf")
    return _OfferArrays(
        value=np.array([o.value for o in offers]),
        levers=np.array(
            [o.weight * o.lever * settings.global_lever * settings.category_levers.get(o.category, 1.0) for o in offers]
        ),
        arm_cost=np.array([offers[offer_index[o]].cost + channel_cost[c] for o, c in numbers.arm_keys]),
        arm_prior=np.array([offers[offer_index[o]].prior for o, _ in numbers.arm_keys]),
        offer_category=np.array([numbers.category_index[o.category] for o in offers], dtype=np.intp),
        valid_from=np.array([-inf if o.valid_from is None else o.valid_from for o in offers]),
        valid_until=np.array([inf if o.valid_until is None else o.valid_until for o in offers]),
        suppress_seconds=np.array([o.suppress_after.per_seconds if o.suppress_after else 0.0 for o in offers]),
        max_suppression_window=max((o.suppress_after.per_seconds for o in offers if o.suppress_after), default=0.0),
    )


def _limit_table(numbers: _Numbering, settings: GlobalSettings) -> LimitTable:
    """Stage 3: the settings' contact limits then every offer's, indexed by what a contact matches."""
    offers = numbers.offers
    rows = [(lim, _NO) for lim in settings.contact_limits]  # (limit, index of its offer or -1)
    rows += [(lim, numbers.offer_index[o.id]) for o in offers for lim in o.limits]
    by_offer: dict[str, list[int]] = {}
    by_channel: dict[str, list[int]] = {}
    by_category: dict[str, list[int]] = {}
    overall = []
    for i, (limit, offer) in enumerate(rows):
        if offer != _NO:
            by_offer.setdefault(offers[offer].id, []).append(i)
            if limit.channel:  # an offer's channel limit only counts contacts on that channel
                continue
        elif limit.channel:
            by_channel.setdefault(limit.channel, []).append(i)
        elif limit.category:
            by_category.setdefault(limit.category, []).append(i)
        else:
            overall.append(i)
    return LimitTable(
        limits=tuple(limit for limit, _ in rows),
        rows=tuple(_limit_row(limit, offer, numbers) for limit, offer in rows),
        by_offer={k: tuple(v) for k, v in by_offer.items()},
        by_channel={k: tuple(v) for k, v in by_channel.items()},
        by_category={k: tuple(v) for k, v in by_category.items()},
        overall=tuple(overall),
        closed=tuple(i for i, (limit, _) in enumerate(rows) if limit.max <= 0),
        owners=tuple(offers[offer].id if offer != _NO else "" for _, offer in rows),
    )


def _limit_row(limit: Limit, offer: int, numbers: _Numbering) -> LimitRow:
    """The per-request row of ``limit`` (``offer``: the index of its offer, -1 for a settings limit).

    A limit of one direction (not narrowed to a channel, not ``any``) skips the contacts on the channels of
    the other direction, and a hit blocks only the channels of its direction: the arms of those channels, or
    the whole offer, category or decision when every channel they have is of that direction (so the reason
    is the same as for a limit of every channel).
    """
    channels = numbers.channels
    if limit.channel or limit.direction == "any" or not _counts_some(limit, offer, numbers):
        skip: frozenset[str] = frozenset()
    else:
        skip = frozenset(c.id for c in channels if c.direction != limit.direction)
    return limit.per_seconds, limit.max, limit.channel, skip, _blocks(limit, offer, numbers, skip), limit.describe()


def _counts_some(limit: Limit, offer: int, numbers: _Numbering) -> bool:
    """Whether ``limit`` covers a channel of its direction; one that does not, and left its direction out,
    counts every channel (see :attr:`Limit.direction_given`; the parser refuses one that gave it)."""
    if limit.direction_given:
        return True
    if offer >= 0:
        covered = set(numbers.offers[offer].channels)
    elif limit.category:
        covered = {c for o in numbers.offers if o.category == limit.category for c in o.channels}
    else:
        covered = {c.id for c in numbers.channels}
    return any(c.direction == limit.direction for c in numbers.channels if c.id in covered)


def _blocks(limit: Limit, offer: int, numbers: _Numbering, skip: frozenset[str]) -> tuple[tuple[LimitBlocks, int], ...]:
    """What a hit of ``limit`` blocks: (kind, target) pairs (see :func:`_limit_row`)."""
    offers, arm_index = numbers.offers, numbers.arm_index
    if offer >= 0:
        spec = offers[offer]
        if limit.channel:
            arm = arm_index.get((spec.id, limit.channel), _NO)
            return ((LimitBlocks.ARM, arm),) if arm >= 0 else ((LimitBlocks.OFFER, offer),)
        return _offer_blocks(offer, spec, arm_index, skip)
    if limit.channel:
        channel = numbers.channel_index.get(limit.channel, _NO)
        return ((LimitBlocks.CHANNEL, channel),) if channel >= 0 else ()
    if limit.category:
        category = numbers.category_index.get(limit.category, _NO)
        members = [(i, o) for i, o in enumerate(offers) if o.category == limit.category]
        if category < 0 or not members:
            return ()  # matches no contact of a live offer
        if all(not skip.intersection(o.channels) for _, o in members):
            return ((LimitBlocks.CATEGORY, category),)
        return tuple(block for i, o in members for block in _offer_blocks(i, o, arm_index, skip))
    if not skip:
        return ((LimitBlocks.EVERYTHING, _NO),)
    return tuple((LimitBlocks.CHANNEL, i) for i, c in enumerate(numbers.channels) if c.id not in skip)


def _offer_blocks(
    offer: int, spec: OfferSpec, arm_index: Mapping[tuple[str, str], int], skip: frozenset[str]
) -> tuple[tuple[LimitBlocks, int], ...]:
    """The whole offer when none of its channels is skipped, else its arms on the channels that are not."""
    if not skip.intersection(spec.channels):
        return ((LimitBlocks.OFFER, offer),)
    return tuple((LimitBlocks.ARM, arm_index[(spec.id, c)]) for c in spec.channels if c not in skip)


def _event_plans(numbers: _Numbering, arrays: _OfferArrays) -> dict[str, EventPlan]:
    """Stage 4: the plan of every event type some live offer lists (its candidates)."""
    plans = {}
    for event_type in EVENT_FIELDS:
        candidates = [i for i, o in enumerate(numbers.offers) if event_type in o.events]
        if candidates:
            plans[event_type] = _event_plan(event_type, candidates, numbers, arrays)
    return plans


def _event_plan(event_type: str, candidates: list[int], numbers: _Numbering, arrays: _OfferArrays) -> EventPlan:
    """The plan of one event type: its candidates, their eligibility rules and value expressions (each
    batched into one code object), their arms, validity windows and decline suppression."""
    offers = numbers.offers
    positions, rules = _eligibility_rules(offers, candidates)
    arms, arm_position = _candidate_arms(offers, candidates, numbers.arm_index)
    values = [(p, i, e) for p, i in enumerate(candidates) if (e := offers[i].value_expression) is not None]
    plan_from, plan_until = arrays.valid_from[candidates], arrays.valid_until[candidates]
    return EventPlan(
        offers=np.array(candidates, dtype=np.intp),
        rule_positions=np.array(positions, dtype=np.intp),
        rules=rules,
        rules_code=compile_batch(rules, f"<{event_type} rules>") if rules else None,
        arms=np.array(arms, dtype=np.intp),
        arm_position=np.array(arm_position, dtype=np.intp),
        value_expressions=tuple(values),
        rule_reasons=tuple(
            Reason(offers[candidates[p]].id, "not_eligible", rule.source)
            for p, rule in zip(positions, rules, strict=False)
        ),
        live_between=(float(plan_from.max()), float(plan_until.min())),
        valid_from=plan_from,
        valid_until=plan_until,
        not_live_reasons=tuple(Reason(offers[i].id, "not_live", "outside its validity window") for i in candidates),
        suppress_after=_suppress_after(offers, candidates),
        value_code=compile_batch([e for _, _, e in values], f"<{event_type} values>") if values else None,
        value_offers=np.array([i for _, i, _ in values], dtype=np.intp),
        offer_category=np.array([numbers.category_index[offers[i].category] for i in candidates], dtype=np.intp),
        all_candidates=np.ones(len(candidates), dtype=bool),
        arm_channel=np.array([numbers.channel_index[numbers.arm_keys[a][1]] for a in arms], dtype=np.intp),
        arm_start=np.searchsorted(np.array(arm_position, dtype=np.intp), np.arange(len(candidates))),
        products=tuple((p, i) for p, i in enumerate(candidates) if offers[i].product),
    )


def _eligibility_rules(
    offers: tuple[OfferSpec, ...], candidates: list[int]
) -> tuple[tuple[int, ...], tuple[CompiledExpression, ...]]:
    """(position among ``candidates``, rule) of each candidate that has an eligibility rule."""
    found = [(p, rule) for p, i in enumerate(candidates) if (rule := offers[i].eligible_when) is not None]
    return tuple(p for p, _ in found), tuple(rule for _, rule in found)


def _candidate_arms(
    offers: tuple[OfferSpec, ...], candidates: list[int], arm_index: Mapping[tuple[str, str], int]
) -> tuple[list[int], list[int]]:
    """The arms of the candidates, grouped by candidate, and the candidate position of each."""
    arms, arm_position = [], []
    for p, i in enumerate(candidates):
        for ch in offers[i].channels:
            arms.append(arm_index[(offers[i].id, ch)])
            arm_position.append(p)
    return arms, arm_position


def _suppress_after(offers: tuple[OfferSpec, ...], candidates: list[int]) -> np.ndarray:
    """Per candidate, the declines that suppress it (never reached without ``suppress_after``);
    empty when no candidate has one."""
    if not any(offers[i].suppress_after for i in candidates):
        return np.empty(0, dtype=np.int64)
    return np.array(
        [o.suppress_after.declines if o.suppress_after else _NEVER for o in (offers[i] for i in candidates)],
        dtype=np.int64,
    )


def _channel_rules(
    channels: tuple[ChannelSpec, ...],
) -> tuple[tuple[int, ...], tuple[CompiledExpression, ...], CodeType | None]:
    """Stage 5: the positions and ``available_when`` rules of the channels that have one, batched."""
    found = [(i, rule) for i, c in enumerate(channels) if (rule := c.available_when) is not None]
    rules = tuple(rule for _, rule in found)
    return tuple(i for i, _ in found), rules, compile_batch(rules, "<channel rules>") if rules else None


def _channel_refusals(
    channels: tuple[ChannelSpec, ...],
) -> tuple[tuple[tuple[str, str], tuple[str, str], tuple[str, str]], ...]:
    """Stage 5: per channel, its (code, detail) for no consent, not reachable and unavailable."""
    return tuple(
        (
            ("no_consent", f"{c.id}: no consent"),
            ("not_reachable", f"{c.id}: customer not reachable there"),
            ("channel_unavailable", f"{c.id}: {c.available_when.source if c.available_when else 'unavailable'}"),
        )
        for c in channels
    )
