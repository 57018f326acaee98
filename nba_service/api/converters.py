"""Protobuf <-> domain conversions, as ``to_*`` / ``from_*`` pairs, with request checks.

Every check raises :class:`~nba_service.domain.validation.ValidationError`
naming the field, before anything is read or written.
"""

from __future__ import annotations

import json
import math

from nba_service.domain import (
    Alternative,
    CustomerProfile,
    CustomerView,
    Decision,
    DecisionRequest,
    Event,
    JourneyEntry,
    OpenJourney,
    OutcomeKind,
    RecordedEvent,
    RenderedContent,
)
from nba_service.domain.journeys import PRODUCT_ATTRIBUTE, PRODUCT_OPENED
from nba_service.domain.profile_update import ProfileMask
from nba_service.domain.validation import (
    ValidationError,
    check_amount,
    check_attributes,
    check_channel_name,
    check_coordinate,
    check_id,
    check_item_ids,
    check_language,
    check_product,
    check_profile,
)
from nba_service.proto.nba.v1 import decision_pb2 as pb

__all__ = [
    "ValidationError",
    "check_id",
    "check_language",
    "decision_request_from_proto",
    "event_from_proto",
    "event_record_from_proto",
    "outcome_from_proto",
    "profile_from_proto",
    "profile_mask_from_proto",
    "to_context_response",
    "to_decide_response",
    "to_profile",
    "to_record_event_response",
    "to_refused_response",
    "top_k_from_proto",
]

MAX_TOP_K = 20
DEFAULT_TOP_K = 3

_OUTCOMES = {
    pb.OUTCOME_KIND_IMPRESSED: OutcomeKind.IMPRESSED,
    pb.OUTCOME_KIND_ACCEPTED: OutcomeKind.ACCEPTED,
    pb.OUTCOME_KIND_DECLINED: OutcomeKind.DECLINED,
    pb.OUTCOME_KIND_CONVERTED: OutcomeKind.CONVERTED,
    pb.OUTCOME_KIND_DISMISSED: OutcomeKind.DISMISSED,
}
_EVENT_KINDS = ", ".join(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["kind"].fields)


def event_from_proto(msg: pb.Event, present: bool) -> Event:
    kind = msg.WhichOneof("kind") if present else None
    if kind is None:
        raise ValidationError("event", f"is required: set one of {_EVENT_KINDS}")
    where = f"event.{kind}"
    if kind == "atm_decline":
        e = msg.atm_decline
        amount = check_amount(f"{where}.amount", e.amount)
        balance = check_amount(f"{where}.balance", e.balance, allow_negative=True)  # overdrawn accounts exist
        _text(f"{where}.currency", e.currency)
        return Event(
            kind,
            {
                "amount": amount,
                "balance": balance,
                "currency": e.currency,
                "atm_id": _text(f"{where}.atm_id", e.atm_id),
                **_position(where, e),
                "shortfall": max(0.0, amount - balance),
            },
        )
    if kind == "location":
        e = msg.location
        return Event(
            kind,
            {
                **_position(where, e),
                "accuracy_m": check_amount(f"{where}.accuracy_m", e.accuracy_m),
                "place_id": _text(f"{where}.place_id", e.place_id),
            },
        )
    if kind == "cart_abandon":
        e = msg.cart_abandon
        items = check_item_ids(f"{where}.item_ids", e.item_ids)
        return Event(
            kind,
            {
                "cart_id": _text(f"{where}.cart_id", e.cart_id),
                "cart_value": check_amount(f"{where}.cart_value", e.cart_value),
                "currency": _text(f"{where}.currency", e.currency),
                "item_count": len(items),
            },
            item_ids=items,
        )
    if kind == "app_open":
        return Event(kind, {"screen": _text(f"{where}.screen", msg.app_open.screen)})
    if kind == "page_view":
        e = msg.page_view
        return Event(kind, {"url": _text(f"{where}.url", e.url), "page_type": _text(f"{where}.page_type", e.page_type)})
    if kind == "agent_contact":
        e = msg.agent_contact
        return Event(
            kind, {"agent_id": _text(f"{where}.agent_id", e.agent_id), "reason": _text(f"{where}.reason", e.reason)}
        )
    e = msg.custom
    if not e.name:
        raise ValidationError(f"{where}.name", "is required")
    attributes = dict(check_attributes(f"{where}.attributes", e.attributes))
    if e.name == PRODUCT_OPENED:  # adds a holding: the product must be an id, as offers' product
        check_product(f"{where}.attributes[{PRODUCT_ATTRIBUTE!r}]", attributes.get(PRODUCT_ATTRIBUTE, ""))
    return Event("custom", {"name": _text(f"{where}.name", e.name)}, attributes)


def _position(where: str, e: pb.AtmDecline | pb.Location) -> dict[str, float]:
    """The event's latitude and longitude, or nothing when neither is set: a missing position stays
    missing (not 0,0) in the journey and the agent view.

    Both are ``optional``: an explicit 0.0 is kept as sent. One half set alone is what a client built
    before they were optional sends for a coordinate of exactly 0 (proto3 does not send zeros), so the
    missing half reads 0.
    """
    if not e.HasField("latitude") and not e.HasField("longitude"):
        return {}
    return {
        "latitude": check_coordinate(f"{where}.latitude", e.latitude, 90),
        "longitude": check_coordinate(f"{where}.longitude", e.longitude, 180),
    }


def _text(field: str, value: str) -> str:
    if len(value.encode()) > 1024:
        raise ValidationError(field, "is over 1024 bytes")
    return value


def top_k_from_proto(request: pb.DecideRequest) -> int:
    if not request.HasField("top_k"):
        return DEFAULT_TOP_K
    if request.top_k > MAX_TOP_K:
        raise ValidationError("top_k", f"must be at most {MAX_TOP_K}, got {request.top_k}")
    return request.top_k


def decision_request_from_proto(request: pb.DecideRequest) -> DecisionRequest:
    """The request checked field by field, as a domain value (``request_id`` empty when not given)."""
    return DecisionRequest(
        customer_id=check_id("customer_id", request.customer_id),
        request_id=check_id("request_id", request.request_id, required=False),
        origin_channel=check_channel_name("origin_channel", request.origin_channel),
        attributes=dict(check_attributes("attributes", request.attributes)),
        event=event_from_proto(request.event, request.HasField("event")),
        top_k=top_k_from_proto(request),
    )


def event_record_from_proto(request: pb.RecordEventRequest) -> tuple[str, str, Event, str]:
    """A ``RecordEvent`` request checked field by field, as ``Decide``'s: customer id, origin channel, event
    and the caller's request id (empty when not given)."""
    return (
        check_id("customer_id", request.customer_id),
        check_channel_name("origin_channel", request.origin_channel),
        event_from_proto(request.event, request.HasField("event")),
        check_id("request_id", request.request_id, required=False),
    )


def to_record_event_response(request_id: str, recorded: RecordedEvent) -> pb.RecordEventResponse:
    return pb.RecordEventResponse(
        request_id=request_id,
        timestamp_ms=round(recorded.timestamp * 1000),
        opened=None if recorded.opened is None else _open_journey(recorded.opened),
        closed=[_open_journey(j) for j in recorded.closed],
        holding_added=recorded.holding_added,
    )


def to_refused_response(request_id: str, code: int, message: str, retry_after_ms: int = 0) -> pb.DecideResponse:
    """A DecideStream's answer to a request that got no decision: its status, ``no_action`` (a client that
    does not read ``status`` sends nothing) and no decision id (nothing was recorded)."""
    return pb.DecideResponse(
        request_id=request_id,
        no_action=True,
        status=pb.Status(code=code, message=message, retry_after_ms=retry_after_ms),
    )


def to_decide_response(
    decision_id: str, request_id: str, decision: Decision, degraded: bool = False
) -> pb.DecideResponse:
    return pb.DecideResponse(
        decision_id=decision_id,
        request_id=request_id,
        no_action=decision.no_action,
        action=None
        if decision.no_action
        else pb.Action(
            offer_id=decision.offer_id,
            name=decision.offer_name,
            category=decision.category,
            content=decision.content,
            structured_content=_content(decision.rendered),
        ),
        channel=decision.channel,
        score=decision.score,
        propensity=decision.propensity,
        alternatives=[
            pb.Alternative(
                offer_id=a.offer_id, channel=a.channel, score=a.score, deliver_after_ms=_milliseconds(a.deliver_after)
            )
            for a in decision.alternatives
        ],
        reasons=[
            pb.Reason(offer_id=r.offer_id, code=r.code, detail=r.detail, channel=r.channel) for r in decision.reasons
        ],
        policy_version=decision.policy_version,
        model_version=decision.model_version,
        degraded=degraded,
        deliver_after_ms=_milliseconds(decision.deliver_after),
    )


def _milliseconds(deliver_after: float | None) -> int:
    """A delivery time (Unix seconds; None: now) as the responses' ``deliver_after_ms`` (0: now)."""
    return 0 if deliver_after is None else round(deliver_after * 1000)


def _content(content: RenderedContent | None) -> pb.Content | None:
    """The structured content of an action (None: the decision has none, e.g. from an older engine)."""
    if content is None:
        return None
    return pb.Content(
        title=content.title,
        body=content.body,
        subject=content.subject,
        html=content.html,
        deep_link=content.deep_link,
        image_url=content.image_url,
        cta=pb.CallToAction(label=content.cta_label, action=content.cta_action)
        if content.cta_label or content.cta_action
        else None,
        language=content.language,
    )


def _alternative(a: Alternative) -> pb.Alternative:
    return pb.Alternative(
        offer_id=a.offer_id,
        channel=a.channel,
        score=a.score,
        agent_script=a.agent_script,
        agent_script_language=a.agent_script_language,
        deliver_after_ms=_milliseconds(a.deliver_after),
    )


def outcome_from_proto(request: pb.OutcomeRequest) -> tuple[str, OutcomeKind, float]:
    decision_id = check_id("decision_id", request.decision_id)
    if request.outcome == pb.OUTCOME_KIND_UNSPECIFIED:
        raise ValidationError("outcome", "is required (impressed, accepted, declined, converted or dismissed)")
    kind = _OUTCOMES.get(request.outcome)
    if kind is None:
        raise ValidationError("outcome", f"unknown outcome kind {request.outcome}")
    value = request.value
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValidationError("value", f"must be a finite number >= 0, got {value}")
    return decision_id, kind, value


def profile_from_proto(msg: pb.CustomerProfile) -> CustomerProfile:
    consents: dict[str, bool] = {}
    for i, consent in enumerate(msg.consents):
        if not consent.channel:
            raise ValidationError(f"profile.consents[{i}].channel", "is required")
        consents[consent.channel] = consent.granted
    return check_profile(
        CustomerProfile(
            customer_id=msg.customer_id,
            first_name=msg.first_name,
            segment=msg.segment,
            preferred_channel=msg.preferred_channel,
            reachable_channels=frozenset(msg.reachable_channels),
            consents=consents,
            timezone=msg.timezone or "UTC",
            attributes=dict(msg.attributes),
            holdings=frozenset(msg.holdings),
        )
    )


def profile_mask_from_proto(request: pb.UpsertCustomerRequest) -> ProfileMask | None:
    """The request's ``update_mask`` (None without one, or with no paths: the merge of consents applies)."""
    if not request.HasField("update_mask") or not request.update_mask.paths:
        return None
    return ProfileMask.parse(request.update_mask.paths, "update_mask")


def to_profile(profile: CustomerProfile) -> pb.CustomerProfile:
    return pb.CustomerProfile(
        customer_id=profile.customer_id,
        first_name=profile.first_name,
        segment=profile.segment,
        preferred_channel=profile.preferred_channel,
        reachable_channels=sorted(profile.reachable_channels),
        consents=[pb.Consent(channel=c, granted=g) for c, g in sorted(profile.consents.items())],
        timezone=profile.timezone,
        attributes=dict(profile.attributes),
        holdings=sorted(profile.holdings),
    )


def _stringify(fields: dict[str, object]) -> dict[str, str]:
    out = {}
    for key, value in fields.items():
        if isinstance(value, float) and value == int(value):
            value = int(value)
        out[key] = value if isinstance(value, str) else _json(value)
    return out


def _open_journey(j: OpenJourney) -> pb.OpenJourney:
    return pb.OpenJourney(kind=j.kind, id=j.id, opened_ms=round(j.opened * 1000), fields=_stringify(dict(j.fields)))


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def to_context_response(
    view: CustomerView, best: tuple[Alternative, ...], policy_version: str
) -> pb.CustomerContextResponse:
    return pb.CustomerContextResponse(
        profile=to_profile(view.profile),
        known=view.profile.known,
        journey=[_journey_event(e) for e in view.journey],
        open_journeys=[_open_journey(j) for j in view.open_journeys],
        recent_decisions=[
            pb.PastDecision(
                decision_id=d.decision_id,
                timestamp_ms=int(d.timestamp * 1000),
                event_type=d.event_type,
                offer_id=d.offer_id,
                channel=d.channel,
                outcomes=list(d.outcomes),
            )
            for d in view.recent_decisions
        ],
        best_actions=[_alternative(a) for a in best],
        policy_version=policy_version,
        likely_reasons=[
            pb.LikelyReason(id=r.id, text=r.text, score=r.score, evidence=[_journey_event(e) for e in r.evidence])
            for r in view.likely_reasons
        ],
    )


def _journey_event(e: JourneyEntry) -> pb.JourneyEvent:
    return pb.JourneyEvent(
        timestamp_ms=int(e.timestamp * 1000), type=e.type, origin_channel=e.origin_channel, fields=_stringify(e.fields)
    )
