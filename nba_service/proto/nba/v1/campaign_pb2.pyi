from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartCampaignRequest(_message.Message):
    __slots__ = ("campaign", "dry_run", "limit")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    dry_run: bool
    limit: int
    def __init__(self, campaign: _Optional[str] = ..., dry_run: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class StartCampaignResponse(_message.Message):
    __slots__ = ("run_id", "run")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    run: CampaignRun
    def __init__(self, run_id: _Optional[str] = ..., run: _Optional[_Union[CampaignRun, _Mapping]] = ...) -> None: ...

class GetCampaignRunRequest(_message.Message):
    __slots__ = ("campaign", "run_id")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    run_id: str
    def __init__(self, campaign: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class SuspendCampaignRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class ResumeCampaignRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    def __init__(self, campaign: _Optional[str] = ...) -> None: ...

class ListCampaignRunsRequest(_message.Message):
    __slots__ = ("campaign", "limit")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    limit: int
    def __init__(self, campaign: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListCampaignRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[CampaignRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[CampaignRun, _Mapping]]] = ...) -> None: ...

class CampaignRun(_message.Message):
    __slots__ = ("campaign", "run_id", "status", "dry_run", "started_at", "updated_at", "policy_version", "scanned", "in_segment", "decided", "delivered", "suppressed", "delivered_by_offer", "ended", "started_by", "delivered_total")
    class DeliveredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SuppressedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DeliveredByOfferEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    IN_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_BY_OFFER_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    run_id: str
    status: str
    dry_run: bool
    started_at: float
    updated_at: float
    policy_version: str
    scanned: int
    in_segment: int
    decided: int
    delivered: _containers.ScalarMap[str, int]
    suppressed: _containers.ScalarMap[str, int]
    delivered_by_offer: _containers.ScalarMap[str, int]
    ended: str
    started_by: str
    delivered_total: int
    def __init__(self, campaign: _Optional[str] = ..., run_id: _Optional[str] = ..., status: _Optional[str] = ..., dry_run: _Optional[bool] = ..., started_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., policy_version: _Optional[str] = ..., scanned: _Optional[int] = ..., in_segment: _Optional[int] = ..., decided: _Optional[int] = ..., delivered: _Optional[_Mapping[str, int]] = ..., suppressed: _Optional[_Mapping[str, int]] = ..., delivered_by_offer: _Optional[_Mapping[str, int]] = ..., ended: _Optional[str] = ..., started_by: _Optional[str] = ..., delivered_total: _Optional[int] = ...) -> None: ...
