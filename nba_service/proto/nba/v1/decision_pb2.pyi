from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutcomeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_KIND_UNSPECIFIED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_IMPRESSED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_ACCEPTED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_DECLINED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_CONVERTED: _ClassVar[OutcomeKind]
    OUTCOME_KIND_DISMISSED: _ClassVar[OutcomeKind]
OUTCOME_KIND_UNSPECIFIED: OutcomeKind
OUTCOME_KIND_IMPRESSED: OutcomeKind
OUTCOME_KIND_ACCEPTED: OutcomeKind
OUTCOME_KIND_DECLINED: OutcomeKind
OUTCOME_KIND_CONVERTED: OutcomeKind
OUTCOME_KIND_DISMISSED: OutcomeKind

class AtmDecline(_message.Message):
    __slots__ = ("amount", "balance", "currency", "atm_id", "latitude", "longitude")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ATM_ID_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    amount: float
    balance: float
    currency: str
    atm_id: str
    latitude: float
    longitude: float
    def __init__(self, amount: _Optional[float] = ..., balance: _Optional[float] = ..., currency: _Optional[str] = ..., atm_id: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ("latitude", "longitude", "accuracy_m", "place_id")
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_M_FIELD_NUMBER: _ClassVar[int]
    PLACE_ID_FIELD_NUMBER: _ClassVar[int]
    latitude: float
    longitude: float
    accuracy_m: float
    place_id: str
    def __init__(self, latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., accuracy_m: _Optional[float] = ..., place_id: _Optional[str] = ...) -> None: ...

class CartAbandon(_message.Message):
    __slots__ = ("cart_id", "cart_value", "currency", "item_ids")
    CART_ID_FIELD_NUMBER: _ClassVar[int]
    CART_VALUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    cart_id: str
    cart_value: float
    currency: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cart_id: _Optional[str] = ..., cart_value: _Optional[float] = ..., currency: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AppOpen(_message.Message):
    __slots__ = ("screen",)
    SCREEN_FIELD_NUMBER: _ClassVar[int]
    screen: str
    def __init__(self, screen: _Optional[str] = ...) -> None: ...

class PageView(_message.Message):
    __slots__ = ("url", "page_type")
    URL_FIELD_NUMBER: _ClassVar[int]
    PAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    url: str
    page_type: str
    def __init__(self, url: _Optional[str] = ..., page_type: _Optional[str] = ...) -> None: ...

class AgentContact(_message.Message):
    __slots__ = ("agent_id", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CustomEvent(_message.Message):
    __slots__ = ("name", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("atm_decline", "location", "cart_abandon", "app_open", "page_view", "agent_contact", "custom")
    ATM_DECLINE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CART_ABANDON_FIELD_NUMBER: _ClassVar[int]
    APP_OPEN_FIELD_NUMBER: _ClassVar[int]
    PAGE_VIEW_FIELD_NUMBER: _ClassVar[int]
    AGENT_CONTACT_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    atm_decline: AtmDecline
    location: Location
    cart_abandon: CartAbandon
    app_open: AppOpen
    page_view: PageView
    agent_contact: AgentContact
    custom: CustomEvent
    def __init__(self, atm_decline: _Optional[_Union[AtmDecline, _Mapping]] = ..., location: _Optional[_Union[Location, _Mapping]] = ..., cart_abandon: _Optional[_Union[CartAbandon, _Mapping]] = ..., app_open: _Optional[_Union[AppOpen, _Mapping]] = ..., page_view: _Optional[_Union[PageView, _Mapping]] = ..., agent_contact: _Optional[_Union[AgentContact, _Mapping]] = ..., custom: _Optional[_Union[CustomEvent, _Mapping]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("customer_id", "request_id", "origin_channel", "event", "attributes", "top_k")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    request_id: str
    origin_channel: str
    event: Event
    attributes: _containers.ScalarMap[str, str]
    top_k: int
    def __init__(self, customer_id: _Optional[str] = ..., request_id: _Optional[str] = ..., origin_channel: _Optional[str] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., top_k: _Optional[int] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("offer_id", "name", "category", "content", "structured_content")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_CONTENT_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    name: str
    category: str
    content: str
    structured_content: Content
    def __init__(self, offer_id: _Optional[str] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., content: _Optional[str] = ..., structured_content: _Optional[_Union[Content, _Mapping]] = ...) -> None: ...

class Content(_message.Message):
    __slots__ = ("title", "body", "subject", "html", "deep_link", "image_url", "cta", "language")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    DEEP_LINK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    CTA_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    title: str
    body: str
    subject: str
    html: str
    deep_link: str
    image_url: str
    cta: CallToAction
    language: str
    def __init__(self, title: _Optional[str] = ..., body: _Optional[str] = ..., subject: _Optional[str] = ..., html: _Optional[str] = ..., deep_link: _Optional[str] = ..., image_url: _Optional[str] = ..., cta: _Optional[_Union[CallToAction, _Mapping]] = ..., language: _Optional[str] = ...) -> None: ...

class CallToAction(_message.Message):
    __slots__ = ("label", "action")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    label: str
    action: str
    def __init__(self, label: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class Alternative(_message.Message):
    __slots__ = ("offer_id", "channel", "score", "deliver_after_ms", "agent_script", "agent_script_language")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DELIVER_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_SCRIPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_SCRIPT_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    channel: str
    score: float
    deliver_after_ms: int
    agent_script: str
    agent_script_language: str
    def __init__(self, offer_id: _Optional[str] = ..., channel: _Optional[str] = ..., score: _Optional[float] = ..., deliver_after_ms: _Optional[int] = ..., agent_script: _Optional[str] = ..., agent_script_language: _Optional[str] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("offer_id", "code", "detail", "channel")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    code: str
    detail: str
    channel: str
    def __init__(self, offer_id: _Optional[str] = ..., code: _Optional[str] = ..., detail: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "request_id", "no_action", "action", "channel", "score", "propensity", "alternatives", "reasons", "policy_version", "model_version", "degraded", "status", "deliver_after_ms")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NO_ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    ALTERNATIVES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DELIVER_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    request_id: str
    no_action: bool
    action: Action
    channel: str
    score: float
    propensity: float
    alternatives: _containers.RepeatedCompositeFieldContainer[Alternative]
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    policy_version: str
    model_version: str
    degraded: bool
    status: Status
    deliver_after_ms: int
    def __init__(self, decision_id: _Optional[str] = ..., request_id: _Optional[str] = ..., no_action: _Optional[bool] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., channel: _Optional[str] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., alternatives: _Optional[_Iterable[_Union[Alternative, _Mapping]]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., policy_version: _Optional[str] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., deliver_after_ms: _Optional[int] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_ms: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class OutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "outcome", "value")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    outcome: OutcomeKind
    value: float
    def __init__(self, decision_id: _Optional[str] = ..., outcome: _Optional[_Union[OutcomeKind, str]] = ..., value: _Optional[float] = ...) -> None: ...

class OutcomeResponse(_message.Message):
    __slots__ = ("decision_id", "duplicate", "learned")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    duplicate: bool
    learned: bool
    def __init__(self, decision_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., learned: _Optional[bool] = ...) -> None: ...

class RecordEventRequest(_message.Message):
    __slots__ = ("customer_id", "origin_channel", "event", "request_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    origin_channel: str
    event: Event
    request_id: str
    def __init__(self, customer_id: _Optional[str] = ..., origin_channel: _Optional[str] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecordEventResponse(_message.Message):
    __slots__ = ("request_id", "timestamp_ms", "opened", "closed", "holding_added")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    HOLDING_ADDED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    timestamp_ms: int
    opened: OpenJourney
    closed: _containers.RepeatedCompositeFieldContainer[OpenJourney]
    holding_added: str
    def __init__(self, request_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., opened: _Optional[_Union[OpenJourney, _Mapping]] = ..., closed: _Optional[_Iterable[_Union[OpenJourney, _Mapping]]] = ..., holding_added: _Optional[str] = ...) -> None: ...

class CustomerContextRequest(_message.Message):
    __slots__ = ("customer_id", "max_events", "include_best_actions", "agent_language")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BEST_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    AGENT_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    max_events: int
    include_best_actions: bool
    agent_language: str
    def __init__(self, customer_id: _Optional[str] = ..., max_events: _Optional[int] = ..., include_best_actions: _Optional[bool] = ..., agent_language: _Optional[str] = ...) -> None: ...

class Consent(_message.Message):
    __slots__ = ("channel", "granted")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    channel: str
    granted: bool
    def __init__(self, channel: _Optional[str] = ..., granted: _Optional[bool] = ...) -> None: ...

class CustomerProfile(_message.Message):
    __slots__ = ("customer_id", "first_name", "segment", "preferred_channel", "reachable_channels", "consents", "timezone", "attributes", "holdings")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CONSENTS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    HOLDINGS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    first_name: str
    segment: str
    preferred_channel: str
    reachable_channels: _containers.RepeatedScalarFieldContainer[str]
    consents: _containers.RepeatedCompositeFieldContainer[Consent]
    timezone: str
    attributes: _containers.ScalarMap[str, str]
    holdings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customer_id: _Optional[str] = ..., first_name: _Optional[str] = ..., segment: _Optional[str] = ..., preferred_channel: _Optional[str] = ..., reachable_channels: _Optional[_Iterable[str]] = ..., consents: _Optional[_Iterable[_Union[Consent, _Mapping]]] = ..., timezone: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., holdings: _Optional[_Iterable[str]] = ...) -> None: ...

class JourneyEvent(_message.Message):
    __slots__ = ("timestamp_ms", "type", "origin_channel", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    timestamp_ms: int
    type: str
    origin_channel: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, timestamp_ms: _Optional[int] = ..., type: _Optional[str] = ..., origin_channel: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OpenJourney(_message.Message):
    __slots__ = ("kind", "id", "opened_ms", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OPENED_MS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    opened_ms: int
    fields: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., opened_ms: _Optional[int] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PastDecision(_message.Message):
    __slots__ = ("decision_id", "timestamp_ms", "event_type", "offer_id", "channel", "outcomes")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    timestamp_ms: int
    event_type: str
    offer_id: str
    channel: str
    outcomes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decision_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., event_type: _Optional[str] = ..., offer_id: _Optional[str] = ..., channel: _Optional[str] = ..., outcomes: _Optional[_Iterable[str]] = ...) -> None: ...

class CustomerContextResponse(_message.Message):
    __slots__ = ("profile", "known", "journey", "open_journeys", "recent_decisions", "best_actions", "policy_version", "likely_reasons")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    OPEN_JOURNEYS_FIELD_NUMBER: _ClassVar[int]
    RECENT_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    BEST_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIKELY_REASONS_FIELD_NUMBER: _ClassVar[int]
    profile: CustomerProfile
    known: bool
    journey: _containers.RepeatedCompositeFieldContainer[JourneyEvent]
    open_journeys: _containers.RepeatedCompositeFieldContainer[OpenJourney]
    recent_decisions: _containers.RepeatedCompositeFieldContainer[PastDecision]
    best_actions: _containers.RepeatedCompositeFieldContainer[Alternative]
    policy_version: str
    likely_reasons: _containers.RepeatedCompositeFieldContainer[LikelyReason]
    def __init__(self, profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., known: _Optional[bool] = ..., journey: _Optional[_Iterable[_Union[JourneyEvent, _Mapping]]] = ..., open_journeys: _Optional[_Iterable[_Union[OpenJourney, _Mapping]]] = ..., recent_decisions: _Optional[_Iterable[_Union[PastDecision, _Mapping]]] = ..., best_actions: _Optional[_Iterable[_Union[Alternative, _Mapping]]] = ..., policy_version: _Optional[str] = ..., likely_reasons: _Optional[_Iterable[_Union[LikelyReason, _Mapping]]] = ...) -> None: ...

class LikelyReason(_message.Message):
    __slots__ = ("id", "text", "score", "evidence")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    score: float
    evidence: _containers.RepeatedCompositeFieldContainer[JourneyEvent]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., evidence: _Optional[_Iterable[_Union[JourneyEvent, _Mapping]]] = ...) -> None: ...

class UpsertCustomerRequest(_message.Message):
    __slots__ = ("profile", "update_mask", "request_id")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    profile: CustomerProfile
    update_mask: _field_mask_pb2.FieldMask
    request_id: str
    def __init__(self, profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpsertCustomerResponse(_message.Message):
    __slots__ = ("customer_id", "created")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    created: bool
    def __init__(self, customer_id: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class DeleteCustomerRequest(_message.Message):
    __slots__ = ("customer_id", "request_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    request_id: str
    def __init__(self, customer_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteCustomerResponse(_message.Message):
    __slots__ = ("customer_id", "erased")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    erased: bool
    def __init__(self, customer_id: _Optional[str] = ..., erased: _Optional[bool] = ...) -> None: ...
