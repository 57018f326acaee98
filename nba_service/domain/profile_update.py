"""Which fields of a stored profile an update changes, and the consent changes it makes.

An update names what it changes with a :class:`ProfileMask` (the API's
``update_mask``): whole fields, single consents (``consents.sms``) and single
attributes (``attributes.tier``). Consents only change when named, so an
update that leaves them out cannot re-grant one the customer withdrew.
Holdings (the products the customer holds) are merged the same way without a
mask: an update adds the products it lists and keeps the others, which a
``product_opened`` event may have added (:func:`with_holding`); the mask path
``holdings`` replaces the list.

>>> stored = CustomerProfile("c1", segment="mass", consents={"sms": False, "push": True})
>>> update = CustomerProfile("c1", segment="vip")
>>> merged = apply_update(stored, update, ProfileMask.without_mask(update))
>>> merged.segment, dict(merged.consents)
('vip', {'sms': False, 'push': True})
>>> mask = ProfileMask.parse(["consents.sms"])
>>> after = apply_update(stored, CustomerProfile("c1", consents={"sms": True}), mask)
>>> after.segment, [(c.channel, c.old, c.new) for c in consent_changes(stored, after)]
('mass', [('sms', 'denied', 'granted')])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from nba_service.domain.objects import CustomerProfile
from nba_service.domain.validation import ValidationError, check_channel_ids, check_profile

__all__ = [
    "PROFILE_FIELDS",
    "ConsentChange",
    "Erasure",
    "ProfileMask",
    "apply_update",
    "consent_changes",
    "consent_state",
    "with_holding",
]

PROFILE_FIELDS = (
    "first_name",
    "segment",
    "preferred_channel",
    "reachable_channels",
    "consents",
    "timezone",
    "attributes",
    "holdings",
)
"""The profile fields an update mask may name (``customer_id`` identifies the profile and never changes)."""

_KNOWN_PATHS = ", ".join((*PROFILE_FIELDS, "consents.<channel>", "attributes.<name>"))


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileMask:
    """What an update changes: whole fields, single consents (by channel), single attributes (by name)."""

    fields: frozenset[str] = frozenset()
    consents: frozenset[str] = frozenset()
    attributes: frozenset[str] = frozenset()
    add_holdings: bool = dataclasses.field(default=False, repr=False)
    """No mask was given: the update's holdings are added to the stored ones (``holdings`` not in ``fields``)."""

    @classmethod
    def parse(cls, paths: Iterable[str], field: str = "update_mask") -> ProfileMask:
        """A mask from field-mask paths; an unknown path raises :class:`ValidationError` naming it.

        >>> ProfileMask.parse(["segment", "attributes.tier"])
        ProfileMask(fields=frozenset({'segment'}), consents=frozenset(), attributes=frozenset({'tier'}))
        >>> ProfileMask.parse(["nickname"])
        Traceback (most recent call last):
        ...
        nba_service.domain.validation.ValidationError: update_mask: unknown path 'nickname' \
(paths: first_name, segment, preferred_channel, reachable_channels, consents, timezone, attributes, \
holdings, consents.<channel>, attributes.<name>)
        """
        fields: set[str] = set()
        consents: set[str] = set()
        attributes: set[str] = set()
        for path in paths:
            head, dot, rest = path.partition(".")
            if not dot and head in PROFILE_FIELDS:
                fields.add(head)
            elif dot and head == "consents" and rest:
                try:
                    check_channel_ids("consents", [rest])
                except ValidationError as exc:
                    raise ValidationError(field, f"path {path[:80]!r}: {exc.message}") from None
                consents.add(rest)
            elif dot and head == "attributes" and rest:
                attributes.add(rest)
            elif path == "customer_id":
                raise ValidationError(field, "customer_id identifies the profile and cannot be in the mask")
            else:
                raise ValidationError(field, f"unknown path {path[:80]!r} (paths: {_KNOWN_PATHS})")
        return cls(frozenset(fields), frozenset(consents), frozenset(attributes))

    @classmethod
    def without_mask(cls, update: CustomerProfile) -> ProfileMask:
        """An update without a mask: every field is replaced but the consents, of which only the
        channels the update lists change (the others keep their stored consent), and the holdings, to
        which the products the update lists are added."""
        return cls(frozenset(PROFILE_FIELDS) - {"consents", "holdings"}, frozenset(update.consents), add_holdings=True)


def apply_update(stored: CustomerProfile | None, update: CustomerProfile, mask: ProfileMask) -> CustomerProfile:
    """The stored profile (an empty one for a new customer) with the fields ``mask`` names taken from ``update``.

    A named field the update leaves empty is cleared; a named consent or attribute the
    update does not list is removed. The result is checked as a whole (e.g. the number of
    attributes after a merge).
    """
    base = stored if stored is not None else CustomerProfile(update.customer_id)
    values = {name: getattr(update, name) for name in mask.fields}
    consents = dict(values.pop("consents", base.consents))
    for channel in mask.consents:
        if channel in update.consents:
            consents[channel] = update.consents[channel]
        else:
            consents.pop(channel, None)
    attributes = dict(values.pop("attributes", base.attributes))
    for name in mask.attributes:
        if name in update.attributes:
            attributes[name] = update.attributes[name]
        else:
            attributes.pop(name, None)
    if mask.add_holdings:
        values["holdings"] = base.holdings | update.holdings
    merged = dataclasses.replace(
        base, **values, customer_id=update.customer_id, consents=consents, attributes=attributes, known=True
    )
    return check_profile(merged)


def with_holding(stored: CustomerProfile | None, customer_id: str, product: str) -> CustomerProfile | None:
    """The stored profile with ``product`` among its holdings (a new profile holding it when none is stored);
    None when it holds the product already.

    >>> with_holding(None, "c1", "credit_card").holdings
    frozenset({'credit_card'})
    >>> with_holding(CustomerProfile("c1", holdings=frozenset({"credit_card"})), "c1", "credit_card") is None
    True
    """
    base = stored if stored is not None else CustomerProfile(customer_id)
    if product in base.holdings:
        return None
    return check_profile(dataclasses.replace(base, holdings=base.holdings | {product}, known=True))


@dataclasses.dataclass(frozen=True, slots=True)
class ConsentChange:
    """One channel's consent before and after an update: ``granted``, ``denied`` or ``unset``."""

    channel: str
    old: str
    new: str


def consent_state(consents: Mapping[str, bool], channel: str) -> str:
    """``granted``, ``denied`` or ``unset`` (the channel's default applies)."""
    if channel not in consents:
        return "unset"
    return "granted" if consents[channel] else "denied"


def consent_changes(before: CustomerProfile | None, after: CustomerProfile) -> list[ConsentChange]:
    """The consents that differ between two versions of a profile (``before`` None: a new customer), by channel."""
    old = before.consents if before is not None else {}
    new = after.consents
    changes = []
    for channel in sorted(set(old) | set(new)):
        was, now = consent_state(old, channel), consent_state(new, channel)
        if was != now:
            changes.append(ConsentChange(channel, was, now))
    return changes


@dataclasses.dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing a customer removed."""

    erased: bool
    """False when nothing was stored for the customer."""
    decisions: int = 0
    """Decision records deleted."""
