"""Model features of one decision request, shared by every candidate offer.

From the moment (event type and fields, the custom event's attributes), the
request's free attributes, the profile (segment, reachability, preferred
channel) and the journey (recent activity, last contact, open cart).

Features are a small dict of readable names (kept with the decision for the
outcome join) hashed into a fixed-size vector, so River models learn on the
same columns the numpy scorer multiplies.

>>> from nba_service.domain import CustomerContext, CustomerProfile, Event
>>> names = request_features(CustomerContext(CustomerProfile("c1", segment="mass"), now=0.0),
...                          Event("atm_decline", {"amount": 100.0, "balance": 20.0, "shortfall": 80.0}))
>>> names["event=atm_decline"], names["segment=mass"]
(1.0, 1.0)
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping

import numpy as np

from nba_service.domain import CustomerContext, Event
from nba_service.domain.localtime import local_minute

__all__ = ["FEATURE_DIM", "feature_index", "hash_features", "request_features", "vectorize"]

FEATURE_DIM = 128
"""Columns of the hashed feature vector."""


@functools.lru_cache(maxsize=65_536)  # bounded: free attributes make open-ended feature names
def feature_index(name: str) -> int:
    """The column of a feature name (crc32, stable across processes and runs)."""
    return zlib.crc32(name.encode()) % FEATURE_DIM


def request_features(ctx: CustomerContext, event: Event) -> dict[str, float]:
    """Readable features of the customer and the moment."""
    profile = ctx.profile
    local = local_minute(ctx.now, profile.timezone)
    hour = local.hour
    part = "night" if hour < 6 else "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"
    features: dict[str, float] = {
        f"event={event.type}": 1.0,
        f"origin={ctx.origin_channel or 'unknown'}": 1.0,
        f"segment={profile.segment or 'unknown'}": 1.0,
        f"daypart={part}": 1.0,
        "known": 1.0 if profile.known else 0.0,
        "weekend": 1.0 if local.weekday() >= 5 else 0.0,
        "has_app": 1.0 if "push" in profile.reachable_channels else 0.0,
    }
    if profile.preferred_channel:
        features[f"prefers={profile.preferred_channel}"] = 1.0
    fields = event.fields
    if event.type == "atm_decline":
        features["log_shortfall"] = math.log1p(max(0.0, float(fields.get("shortfall", 0.0))))
    elif event.type == "cart_abandon":
        features["log_cart_value"] = math.log1p(max(0.0, float(fields.get("cart_value", 0.0))))
    day_ago = ctx.now - 86400.0
    recent = sum(1 for e in ctx.journey if e.timestamp >= day_ago)
    features["log_events_24h"] = math.log1p(recent)
    if ctx.contacts:
        last = max(c.timestamp for c in ctx.contacts)
        features["log_hours_since_contact"] = math.log1p(max(0.0, (ctx.now - last) / 3600.0))
    if any(j.kind == "cart" for j in ctx.open_journeys):
        features["open_cart"] = 1.0
    for key, value in ctx.request_attributes.items():
        _add_attribute(features, "req:" + key, value)
    for key, value in event.attributes.items():
        _add_attribute(features, "event:" + key, value)
    return features


def _add_attribute(features: dict[str, float], name: str, value: str) -> None:
    """A free attribute as a feature: numbers on a log scale, anything else one-hot."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        features[f"{name}={value}"] = 1.0
        return
    if math.isfinite(number):
        features[name] = math.copysign(math.log1p(abs(number)), number)


def hash_features(features: Mapping[str, float]) -> dict[int, float]:
    """The features keyed by column, as River learns them."""
    hashed: dict[int, float] = {}
    for name, value in features.items():
        column = feature_index(name)
        hashed[column] = hashed.get(column, 0.0) + value
    return hashed


def vectorize(features: Mapping[str, float]) -> np.ndarray:
    """The features as a dense vector of :data:`FEATURE_DIM` columns."""
    vector = np.zeros(FEATURE_DIM)
    for name, value in features.items():
        vector[feature_index(name)] += value
    return vector
