"""The closed sets of values that cross a boundary: named, never bare strings or numbers."""

from __future__ import annotations

import enum

__all__ = [
    "ExplorationStrategy",
    "LearnerMode",
    "LimitBlocks",
    "OutcomeKind",
    "OutcomeStatus",
    "RedisMode",
    "ServingMode",
    "WriteResult",
]


class OutcomeKind(enum.Enum):
    """What happened to a decision. Which outcomes count as success is the offer's ``reward``
    (accepted or converted, or converted only); declined and dismissed count as failure."""

    IMPRESSED = "impressed"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONVERTED = "converted"
    DISMISSED = "dismissed"


class OutcomeStatus(enum.Enum):
    """How an outcome report was joined to its decision (the outcome script's first reply)."""

    NOT_FOUND = 0
    RECORDED = 1
    DUPLICATE = 2


class WriteResult(enum.Enum):
    """What the decision's write script did (its reply)."""

    WRITTEN = 1
    """Recorded: decision, journey entry, contact, budget unit."""
    BUDGET_USED_UP = 0
    """Nothing written: another request took the last unit of the chosen offer's budget."""
    CONTACTS_CHANGED = -1
    """Nothing written: another request contacted the customer since the context was read."""


class LimitBlocks(enum.IntEnum):
    """What a reached contact limit blocks (one per row of a snapshot's limit table)."""

    NOTHING = 0
    EVERYTHING = 1
    ARM = 2
    OFFER = 3
    CHANNEL = 4
    CATEGORY = 5


class ServingMode(enum.StrEnum):
    """Who decides, and which other policy's choice is logged for off-policy evaluation."""

    LEARNED = "learned"
    """The learned models decide; nothing else is logged."""
    LEARNED_SHADOW = "learned+shadow"
    """The learned models decide; what the rules alone would have chosen is logged."""
    LEARNED_CHALLENGER = "learned+challenger"
    """The learned models decide; the challenger models' greedy choice is logged."""
    APPRENTICE = "apprentice"
    """The rules decide with the offers' priors; the learned policy's choice is logged."""


class ExplorationStrategy(enum.StrEnum):
    THOMPSON = "thompson"
    """Thompson sampling over the models' posteriors (the default)."""
    UCB = "ucb"
    """Upper confidence bound: the arm of the best optimistic priority."""
    EPSILON = "epsilon"
    """Epsilon-greedy."""
    SOFTMAX = "softmax"
    """Boltzmann over priorities."""


class LearnerMode(enum.StrEnum):
    EMBEDDED = "embedded"
    """``nba serve`` runs a learner thread (one replica at a time learns)."""
    OFF = "off"
    """The learner runs as its own process (``nba learner``)."""


class RedisMode(enum.StrEnum):
    """How nba reaches the Redis that holds its state (``redis_mode``)."""

    STANDALONE = "standalone"
    """One Redis at ``redis_url`` (or the embedded one)."""
    SENTINEL = "sentinel"
    """The primary Redis Sentinel names ``redis_master_name``, found again after every failover."""
    CLUSTER = "cluster"
    """Redis Cluster, found from any node's URL (:mod:`nba_service.store.connect`)."""
