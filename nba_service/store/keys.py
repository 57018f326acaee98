"""Redis key layout. Keys of one customer share the ``{customer}`` hash tag so a
Redis Cluster keeps them in one slot."""

from __future__ import annotations

__all__ = [
    "MODEL_SNAPSHOT", "POLICY_CHANNEL", "POLICY_LIVE", "POLICY_SEQ", "POLICY_VERSIONS",
    "contacts", "decision", "decisions", "journey", "open_journeys", "policy_version", "profile",
]

PREFIX = "nba:"
POLICY_LIVE = PREFIX + "policy:live"
POLICY_SEQ = PREFIX + "policy:seq"
POLICY_VERSIONS = PREFIX + "policy:versions"
POLICY_CHANNEL = PREFIX + "policy:events"
MODEL_SNAPSHOT = PREFIX + "model:snapshot"


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


def decisions(customer_id: str) -> str:
    return _customer(customer_id, "decisions")


def decision(decision_id: str) -> str:
    return f"{PREFIX}d:{decision_id}"


def policy_version(version: int | str) -> str:
    return f"{PREFIX}policy:v:{version}"
