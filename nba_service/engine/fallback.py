"""The fallback decision: the policy's safe action when the customer's state cannot be read.

Built from the request alone (the event's fields; the customer is unknown: no
profile, journey or contacts), for the event types whose policy declares a
fallback (:mod:`nba_service.policies.fallbacks`). It is never recorded and never
learned from: its ``decision_id`` is empty and it carries the reason
``fallback``.
"""

from __future__ import annotations

import time

from nba_service.domain import CustomerContext, CustomerProfile, Decision, DecisionRequest, Reason
from nba_service.engine.pipeline import render_content
from nba_service.policies.snapshot import PolicySnapshot

__all__ = ["fallback_decision"]


def fallback_decision(snapshot: PolicySnapshot, request: DecisionRequest, why: str) -> Decision | None:
    """The snapshot's fallback for the request's event type, rendered for an unknown customer; None if none."""
    fallback = snapshot.policy.fallbacks.get(request.event.type)
    if fallback is None:
        return None
    offer = snapshot.offers[snapshot.offer_index[fallback.offer]]
    ctx = CustomerContext(
        CustomerProfile.unknown(request.customer_id),
        time.time(),
        origin_channel=request.origin_channel,
        request_attributes=request.attributes,
    )
    scope = snapshot.scope(ctx, request.event)
    content = render_content(offer, fallback.channel, snapshot.settings.default_language, scope, ctx, request.event)
    return Decision(
        offer_id=offer.id,
        channel=fallback.channel,
        score=0.0,
        propensity=1.0,
        offer_name=offer.name,
        category=offer.category,
        content=content.body,
        rendered=content,
        reasons=(Reason(offer.id, "fallback", f"the policy's fallback for {request.event.type}: {why}"),),
        policy_version=snapshot.version,
        model_version="",
    )
