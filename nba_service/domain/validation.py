"""Checks on what callers send, shared by the gRPC API and the bulk loader.

A :class:`ValidationError` names the offending field; the API layer turns it
into ``INVALID_ARGUMENT``, the loader into a refused line. Nothing is written
before a request has passed these checks.
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence

from nba_service.domain.objects import CustomerProfile

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_BYTES",
    "MAX_CART_ITEMS",
    "MAX_HOLDINGS",
    "MAX_ID_LENGTH",
    "ValidationError",
    "check_amount",
    "check_attributes",
    "check_channel_ids",
    "check_channel_name",
    "check_id",
    "check_item_ids",
    "check_language",
    "check_product",
    "check_profile",
]

MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_BYTES = 1024
MAX_ID_LENGTH = 128
MAX_PROFILE_CHANNELS = 32
"""Channels a profile may list as reachable, and channels it may hold a consent for."""
MAX_CHANNEL_ID_LENGTH = 64
MAX_CART_ITEMS = 500
"""Item ids a cart event may carry, each at most :data:`MAX_ID_LENGTH` characters (the journey and the
open cart keep them)."""
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]*$")
PAYDAY_ATTRIBUTE = "payday"
"""The profile attribute rules read as the customer's payday (``days_until_payday``): a day of the month."""
_PAYDAY = re.compile(r"^(0?[1-9]|[12][0-9]|3[01])$")
MAX_HOLDINGS = 100
"""Products a profile may hold."""
MAX_PRODUCT_LENGTH = 64
_PRODUCT = _CHANNEL
"""A product id (a holding, an offer's ``product``): lower case letters, digits and ``_``, as an offer id."""
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


class ValidationError(ValueError):
    """A request field has a value the service refuses; ``field`` is its path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_id(field: str, value: str, required: bool = True) -> str:
    if not value:
        if required:
            raise ValidationError(field, "is required")
        return value
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(field, f"is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise ValidationError(field, "contains control characters")
    return value


_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def check_item_ids(field: str, item_ids: Sequence[str]) -> tuple[str, ...]:
    """A cart's item ids: at most :data:`MAX_CART_ITEMS`, each an id as :func:`check_id` takes it."""
    if len(item_ids) > MAX_CART_ITEMS:
        raise ValidationError(field, f"has {len(item_ids)} items, at most {MAX_CART_ITEMS} are allowed")
    return tuple(check_id(f"{field}[{i}]", item) for i, item in enumerate(item_ids))


def check_channel_name(field: str, value: str) -> str:
    """A channel or origin name as callers send it: letters, digits and ``_ . : -``, at most 64."""
    if value and not _NAME.match(value):
        raise ValidationError(field, f"{value[:70]!r} is not a channel name (letters, digits, _ . : -; at most 64)")
    return value


def check_product(field: str, value: str) -> str:
    """A product id: lower case letters, digits and ``_``, starting with a letter, at most 64.

    >>> check_product("product", "overdraft_protection")
    'overdraft_protection'
    """
    if not value:
        raise ValidationError(field, "is required")
    if len(value) > MAX_PRODUCT_LENGTH or not _PRODUCT.match(value):
        raise ValidationError(
            field, f"{value[:70]!r} is not a product id (lower case letters, digits and _, starting with a letter)"
        )
    return value


def check_language(field: str, value: str) -> str:
    """A language tag (``es``, ``en``, ``es-MX``, any case, ``_`` or ``-``); empty is allowed (the default).

    >>> check_language("agent_language", "es-MX")
    'es-MX'
    """
    if value and not _LANGUAGE.match(value):
        raise ValidationError(field, f"{value[:40]!r} is not a language tag such as es, en or es-MX")
    return value


def check_amount(field: str, value: float, *, allow_negative: bool = False) -> float:
    if math.isnan(value) or math.isinf(value):
        raise ValidationError(field, f"must be a finite number, got {value}")
    if value < 0 and not allow_negative:
        raise ValidationError(field, f"must not be negative, got {value}")
    return value


def check_coordinate(field: str, value: float, limit: float) -> float:
    check_amount(field, value, allow_negative=True)
    if abs(value) > limit:
        raise ValidationError(field, f"must be between -{limit:g} and {limit:g}, got {value}")
    return value


def check_attributes(field: str, attributes: Mapping[str, str]) -> Mapping[str, str]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(field, f"has {len(attributes)} entries, at most {MAX_ATTRIBUTES} are allowed")
    for key, value in attributes.items():
        if not key:
            raise ValidationError(field, "has an empty key")
        if len(key.encode()) > MAX_ATTRIBUTE_BYTES or len(str(value).encode()) > MAX_ATTRIBUTE_BYTES:
            raise ValidationError(f"{field}[{key[:40]!r}]", f"is over {MAX_ATTRIBUTE_BYTES} bytes")
    return attributes


def check_channel_ids(field: str, channels: Iterable[str]) -> None:
    channels = list(channels)
    if len(channels) > MAX_PROFILE_CHANNELS:
        raise ValidationError(field, f"has {len(channels)} channels, at most {MAX_PROFILE_CHANNELS} are allowed")
    for channel in channels:
        if len(channel) > MAX_CHANNEL_ID_LENGTH:
            raise ValidationError(field, f"{channel[:40]!r}... is longer than {MAX_CHANNEL_ID_LENGTH} characters")
        if not _CHANNEL.match(channel):
            raise ValidationError(field, f"{channel!r} is not a channel id (lower case letters, digits and _)")


def check_profile(profile: CustomerProfile) -> CustomerProfile:
    """Refuse a profile that would be stored wrong; return it unchanged otherwise."""
    check_id("profile.customer_id", profile.customer_id)
    check_channel_ids("profile.reachable_channels", profile.reachable_channels)
    check_channel_ids("profile.consents", profile.consents)
    if profile.preferred_channel:
        check_channel_ids("profile.preferred_channel", [profile.preferred_channel])
    if profile.timezone:
        try:
            zoneinfo.ZoneInfo(profile.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", a folder
            raise ValidationError("profile.timezone", f"{profile.timezone!r} is not an IANA time zone") from None
    for name in ("first_name", "segment"):
        if len(getattr(profile, name).encode()) > MAX_ATTRIBUTE_BYTES:
            raise ValidationError(f"profile.{name}", f"is over {MAX_ATTRIBUTE_BYTES} bytes")
    check_attributes("profile.attributes", profile.attributes)
    if len(profile.holdings) > MAX_HOLDINGS:
        raise ValidationError("profile.holdings", f"has {len(profile.holdings)} products, at most {MAX_HOLDINGS}")
    for product in sorted(profile.holdings):
        check_product("profile.holdings", product)
    payday = profile.attributes.get(PAYDAY_ATTRIBUTE)
    if payday is not None and not _PAYDAY.match(payday.strip()):
        raise ValidationError(
            f"profile.attributes[{PAYDAY_ATTRIBUTE!r}]", f"must be a day of the month from 1 to 31, got {payday[:40]!r}"
        )
    return profile
