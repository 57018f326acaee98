"""Redis key layout. Keys of one customer share the ``{customer}`` hash tag so a
Redis Cluster keeps them in one slot."""

from __future__ import annotations

__all__ = [
    "CHANGE_LOG",
    "CONSENT_AUDIT",
    "LEARNER_GROUP",
    "LEARNER_LOCK",
    "MODEL_CHANNEL",
    "MODEL_LIVE",
    "MODEL_SEQ",
    "MODEL_SNAPSHOT",
    "MODEL_VERSIONS",
    "OUTCOME_STREAM",
    "PENDING_OUTCOMES",
    "POLICY_CHANNEL",
    "POLICY_LIVE",
    "POLICY_SEQ",
    "POLICY_VERSIONS",
    "PSEUDONYM_SECRET",
    "budget",
    "contacts",
    "decision",
    "decision_index",
    "decisions",
    "declines",
    "journey",
    "model_version",
    "no_budget",
    "open_journeys",
    "policy_version",
    "profile",
    "server",
]

PREFIX = "nba:"
POLICY_LIVE = PREFIX + "policy:live"
POLICY_SEQ = PREFIX + "policy:seq"
POLICY_VERSIONS = PREFIX + "policy:versions"
POLICY_CHANNEL = PREFIX + "policy:events"
MODEL_SNAPSHOT = PREFIX + "model:snapshot"  # before versioned snapshots; read once for migration
MODEL_LIVE = PREFIX + "model:live"
MODEL_SEQ = PREFIX + "model:seq"
MODEL_VERSIONS = PREFIX + "model:versions"
MODEL_CHANNEL = PREFIX + "model:events"
MODEL_CHALLENGER = PREFIX + "model:challenger"
MODEL_CHALLENGER_VERSION = PREFIX + "model:challenger:version"
MODEL_CHALLENGER_GUARD = PREFIX + "model:challenger:guard"
"""The challenger models, published with (and as of) each champion version."""
OUTCOME_STREAM = PREFIX + "outcomes"
LEARNER_GROUP = "learners"
LEARNER_LOCK = PREFIX + "learner:lock"
PENDING_OUTCOMES = PREFIX + "pending"
"""Decisions waiting for an outcome, scored by the time their attribution window ends."""
CONSENT_AUDIT = PREFIX + "audit:consents"
"""Every consent change and every erasure, oldest first, each naming the customer by pseudonym."""
CHANGE_LOG = PREFIX + "history"
"""Every policy publish and rollback, model promotion and rollback, oldest first
(:mod:`~nba_service.store.change_log`)."""
PSEUDONYM_SECRET = PREFIX + "secret:pseudonym"
"""The deployment's key of customer pseudonyms (HMAC-SHA256), created once; never delete it."""


SERVER_PREFIX = PREFIX + "server:"
"""Heartbeats: one hash per running ``nba serve`` process, with a TTL (:mod:`~nba_service.store.heartbeats`)."""
SERVERS = PREFIX + "servers"
"""The ids of the servers with a heartbeat, scored by when each last wrote it (read without a SCAN)."""


def server(server_id: str) -> str:
    """The heartbeat of server process ``server_id``."""
    return SERVER_PREFIX + server_id


def model_version(version: int | str) -> str:
    return f"{PREFIX}model:v:{version}"


def _customer(customer_id: str, what: str) -> str:
    return f"{PREFIX}c:{{{customer_id}}}:{what}"


def profile(customer_id: str) -> str:
    return _customer(customer_id, "profile")


def journey(customer_id: str) -> str:
    return _customer(customer_id, "journey")


def contacts(customer_id: str) -> str:
    return _customer(customer_id, "contacts")


def open_journeys(customer_id: str) -> str:
    return _customer(customer_id, "open")


def declines(customer_id: str) -> str:
    return _customer(customer_id, "declines")


def budget(offer_id: str, window: int) -> str:
    return f"{PREFIX}budget:{offer_id}:{window}"


def no_budget(customer_id: str) -> str:
    """The budget key a write script gets when the chosen offer has no budget: in the customer's
    slot, and never read or written."""
    return _customer(customer_id, "no-budget")


def decision_index(customer_id: str) -> str:
    """The customer's decision ids still kept, scored by the time of the decision."""
    return _customer(customer_id, "decision-index")


def decisions(customer_id: str) -> str:
    """Before the decision index: a list of the customer's 20 most recent decision ids. No longer
    written; read (and deleted) until the last such list has expired."""
    return _customer(customer_id, "decisions")


def decision(decision_id: str) -> str:
    return f"{PREFIX}d:{decision_id}"


def policy_version(version: int | str) -> str:
    return f"{PREFIX}policy:v:{version}"
