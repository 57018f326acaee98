"""Contact policy: consent, reachability, channel conditions, quiet hours and caps.

Consent is never overridable: a channel the customer has not consented to
(or that the policy does not default to consented) is never used. Caps count
the customer's contact history over rolling windows, all limits at once; a
limit counts and closes the channels of its direction only (outbound ones by
default, see :class:`~nba_service.policies.model.Limit`).

In its quiet hours (the customer's local time) a channel is closed, unless it
says ``on_quiet_hours: defer``: it stays open, and an action chosen on it is
delivered when the quiet hours end (:attr:`ChannelVerdict.deferred`); its arms then compete at their
priority times the channel's ``defer_weight`` (:attr:`ChannelVerdict.defer_weights`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nba_service.domain import ContactRecord, CustomerProfile, LimitBlocks
from nba_service.domain.localtime import local_minute, local_time, next_local_time

if TYPE_CHECKING:
    from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["CapHits", "ChannelVerdict", "channel_verdict", "check_caps", "in_quiet_hours"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelVerdict:
    allowed: np.ndarray
    """One bool per channel of the snapshot (read-only: it may be shared)."""
    reasons: tuple[tuple[str, str], ...]
    """(code, detail) per channel; ("", "") when allowed."""
    deferred: Mapping[int, tuple[float, str]] = dataclasses.field(default_factory=dict)
    """Channel index -> (when to deliver, as Unix time; why) for each open channel in its quiet hours that
    defers (``on_quiet_hours: defer``)."""
    defer_weights: Mapping[int, float] = dataclasses.field(default_factory=dict)
    """Channel index -> its ``defer_weight``, for each channel of :attr:`deferred` whose weight is not 1: what
    the priority of an arm on it is multiplied by."""


@dataclasses.dataclass(frozen=True, slots=True)
class CapHits:
    """What the contact history blocks right now."""

    everything: str
    """Non-empty (the limit's description) when an overall cap is reached."""
    channels: Mapping[int, str]
    offers: Mapping[int, str]
    arms: Mapping[int, str]
    categories: Mapping[int, str]
    reached: tuple[int, ...] = ()
    """Every limit reached: its index in the snapshot's :class:`~nba_service.policies.snapshot.LimitTable`."""


NO_HITS = CapHits("", {}, {}, {}, {})


def in_quiet_hours(minute_of_day: int, window: tuple[int, int]) -> bool:
    """Whether a local time falls in a quiet window that may wrap past midnight.

    >>> in_quiet_hours(22 * 60, (21 * 60, 8 * 60)), in_quiet_hours(12 * 60, (21 * 60, 8 * 60))
    (True, False)
    """
    start, end = window
    if start < end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def channel_verdict(
    snapshot: PolicySnapshot, profile: CustomerProfile, now: float, rule_results: Sequence[Any] | None, caps: CapHits
) -> ChannelVerdict:
    """Which channels may carry an action to this customer right now, and why not."""
    channels = snapshot.channels
    refusals = snapshot.channel_refusals
    reasons: list[tuple[str, str]] = [("", "")] * len(channels)
    closed: list[int] = []
    failed: set[int] = set()
    if rule_results is not None:  # an error closes the channel too
        failed = {
            position
            for position, result in zip(snapshot.channel_rule_positions, rule_results, strict=False)
            if isinstance(result, Exception) or not result
        }
    local = -1
    deferred: dict[int, tuple[float, str]] = {}
    defer_weights: dict[int, float] = {}
    weights = snapshot.channel_defer_weight  # empty: no weighting
    consents = profile.consents
    reachable = profile.reachable_channels
    capped = caps.channels
    for i, (channel, default_consent, needs_reachable) in enumerate(
        zip(channels, snapshot.channel_default_consent, snapshot.channel_needs_reachable, strict=False)
    ):
        if not consents.get(channel.id, default_consent):
            reasons[i] = refusals[i][0]
        elif needs_reachable and channel.id not in reachable:
            reasons[i] = refusals[i][1]
        elif i in failed:
            reasons[i] = refusals[i][2]
        elif i in capped:
            reasons[i] = ("frequency_cap", f"{channel.id}: {capped[i]}")
        elif channel.quiet_hours is not None:
            if local < 0:
                moment = local_minute(now, profile.timezone)
                local = moment.hour * 60 + moment.minute
            if not in_quiet_hours(local, channel.quiet_hours):
                continue
            start, end = channel.quiet_hours
            why = (
                f"quiet hours {_clock(start)}-{_clock(end)} in {profile.timezone or 'UTC'}, local time {_clock(local)}"
            )
            if channel.on_quiet_hours == "defer":
                deferred[i] = _deferral(now, profile.timezone, end, why)
                if weights and weights[i] != 1.0:
                    defer_weights[i] = weights[i]
                continue
            reasons[i] = ("quiet_hours", f"{channel.id}: {why}")
        else:
            continue
        closed.append(i)
    allowed = np.fromiter(map(_open, reasons), dtype=bool, count=len(reasons)) if closed else snapshot.every_channel
    return ChannelVerdict(allowed, tuple(reasons), deferred, defer_weights)


def _deferral(now: float, timezone: str, end: int, why: str) -> tuple[float, str]:
    """When an action deferred by quiet hours ending at minute ``end`` is delivered, and the reason's detail.

    >>> import datetime
    >>> at = datetime.datetime(2026, 6, 10, 23, 10, tzinfo=datetime.timezone(datetime.timedelta(hours=9)))
    >>> after, detail = _deferral(at.timestamp(), "Asia/Tokyo", 480, "quiet hours 21:00-08:00 in Asia/Tokyo")
    >>> after == datetime.datetime(2026, 6, 10, 23, 0, tzinfo=datetime.UTC).timestamp()
    True
    >>> detail
    'quiet hours 21:00-08:00 in Asia/Tokyo: deliver after Thu 2026-06-11 08:00 local time (2026-06-10T23:00:00Z)'
    """
    after = next_local_time(now, timezone, end)
    local = local_time(after, timezone)
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(after))
    return after, f"{why}: deliver after {local:%a %Y-%m-%d %H:%M} local time ({utc})"


def _clock(minute_of_day: int) -> str:
    """``21:00`` for minute 1260."""
    return f"{minute_of_day // 60:02d}:{minute_of_day % 60:02d}"


def _open(reason: tuple[str, str]) -> bool:
    return not reason[0]


def check_caps(snapshot: PolicySnapshot, contacts: tuple[ContactRecord, ...], now: float) -> CapHits:
    """Evaluate every contact limit of the policy against the contact history.

    Each contact is counted only by the limits that can match it (its offer's,
    its channel's, its category's and the overall ones), found through indexes
    built once per snapshot: a few dictionary look-ups per contact. A limit of one
    direction (outbound by default) does not count a contact on a channel of the
    other direction, by the channel the contact history recorded; a contact on a
    channel the policy no longer declares counts for every direction.
    """
    table = snapshot.limits
    if not len(table) or (not contacts and not table.closed):
        return NO_HITS
    rows = table.rows
    counts: dict[int, int] = {}
    by_offer, by_channel, by_category, overall = table.by_offer, table.by_channel, table.by_category, table.overall
    for contact in contacts:
        age = now - contact.timestamp
        for group in (
            by_offer.get(contact.offer_id, ()),
            by_channel.get(contact.channel, ()),
            by_category.get(contact.category, ()),
            overall,
        ):
            for i in group:
                per, _, channel, skip, _, _ = rows[i]
                if age < per and (channel is None or channel == contact.channel) and contact.channel not in skip:
                    counts[i] = counts.get(i, 0) + 1
    hits = sorted({*table.closed, *(i for i, n in counts.items() if n >= rows[i][1])})
    if not hits:
        return NO_HITS
    everything = ""
    blocked: dict[LimitBlocks, dict[int, str]] = {kind: {} for kind in LimitBlocks}  # target -> description
    for h in hits:
        *_, blocks, text = rows[h]
        for kind, target in blocks:
            if kind is LimitBlocks.EVERYTHING:
                everything = everything or text
            elif kind is not LimitBlocks.NOTHING:
                blocked[kind].setdefault(target, text)
    return CapHits(
        everything,
        blocked[LimitBlocks.CHANNEL],
        blocked[LimitBlocks.OFFER],
        blocked[LimitBlocks.ARM],
        blocked[LimitBlocks.CATEGORY],
        tuple(hits),
    )
