"""The bottom layer: what a decision is about, with no I/O and no import of the rest of nba_service.

Domain objects (:mod:`~nba_service.domain.objects`), the closed sets of values
that cross boundaries (:mod:`~nba_service.domain.enums`), the data plane's
errors (:mod:`~nba_service.domain.errors`), checks of caller values
(:mod:`~nba_service.domain.validation`), the customer's local time
(:mod:`~nba_service.domain.localtime`), timestamps
(:mod:`~nba_service.domain.timestamps`) and how a moment opens or closes a
journey (:mod:`~nba_service.domain.journeys`). Every other package imports
from here; this package imports none of them.
"""

from nba_service.domain.enums import (
    ExplorationStrategy,
    LearnerMode,
    LimitBlocks,
    OutcomeKind,
    OutcomeStatus,
    ServingMode,
    WriteResult,
)
from nba_service.domain.errors import NoPolicyError, NotFoundError, StoreUnavailableError
from nba_service.domain.objects import (
    EVENT_FIELDS,
    Alternative,
    ContactRecord,
    CustomerContext,
    CustomerProfile,
    CustomerView,
    Decision,
    DecisionRequest,
    Event,
    JourneyEntry,
    LikelyReason,
    OpenJourney,
    PastDecision,
    Reason,
    RecordedEvent,
    RecordedOutcome,
    RenderedContent,
    TimedRequest,
)
from nba_service.domain.validation import ValidationError

__all__ = [
    "EVENT_FIELDS",
    "Alternative",
    "ContactRecord",
    "CustomerContext",
    "CustomerProfile",
    "CustomerView",
    "Decision",
    "DecisionRequest",
    "Event",
    "ExplorationStrategy",
    "JourneyEntry",
    "LearnerMode",
    "LikelyReason",
    "LimitBlocks",
    "NoPolicyError",
    "NotFoundError",
    "OpenJourney",
    "OutcomeKind",
    "OutcomeStatus",
    "PastDecision",
    "Reason",
    "RecordedEvent",
    "RecordedOutcome",
    "RenderedContent",
    "ServingMode",
    "StoreUnavailableError",
    "TimedRequest",
    "ValidationError",
    "WriteResult",
]
