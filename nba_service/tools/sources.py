"""Where the marketer tools (``policy diff``, ``policy preview``, ``explain``, the console) get
policy sets, models and customer contexts from. All of it read only."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import redis

from nba_service.domain import CustomerContext, CustomerProfile
from nba_service.domain.timestamps import parse_iso
from nba_service.learning.models import ModelBank
from nba_service.policies.model import PolicySet, PolicyValidationError
from nba_service.policies.parser import load_policy_dir, parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.store.context_reader import ContextReader
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore
from nba_service.tools.preview import StoredContext, StoredContexts

__all__ = [
    "PolicySource",
    "SourceError",
    "load_models",
    "moment_time",
    "policy_source",
    "stored_contexts",
    "stored_contexts_many",
]


class SourceError(ValueError):
    """A policy set, version or time that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySource:
    label: str
    """How the set is named in the output: ``policy version 3 (live)``, ``/tmp/policies``."""
    short: str
    """A column heading: ``v3``, ``candidate``."""
    policy: PolicySet
    version: str
    """For the snapshot: the version number, or the directory."""

    def compile(self) -> PolicySnapshot:
        return PolicySnapshot.compile(self.policy, self.version)


def policy_source(store: PolicyStore, spec: str, short: str | None = None) -> PolicySource:
    """``live``, a published version number or a policy directory, parsed."""
    if spec != "live" and not spec.isdigit():
        folder = pathlib.Path(spec)
        if not folder.is_dir():
            raise SourceError(f"{spec}: neither a policy version number, 'live', nor a directory")
        try:
            policy = load_policy_dir(folder)
        except PolicyValidationError as exc:
            raise SourceError(f"{spec} is not a valid policy set:\n{exc}") from None
        return PolicySource(spec, short or "candidate", policy, spec)
    live = store.live()
    if spec == "live":
        if live is None:
            raise SourceError("no policy version is live yet: publish one with `nba policy publish DIR`")
        version = live
    else:
        version = int(spec)
    try:
        published = store.load(version)
    except KeyError as exc:
        raise SourceError(str(exc.args[0])) from None
    except ValueError as exc:  # a version too large, or not a policy set, written behind validation's back
        raise SourceError(f"policy version {version} cannot be read: {exc}") from None
    try:
        policy = parse_policy_files(published.files)
    except PolicyValidationError as exc:
        raise SourceError(f"policy version {version} no longer compiles:\n{exc}") from None
    label = f"policy version {version}" + (" (live)" if version == live else "")
    return PolicySource(label, short or f"v{version}", policy, str(version))


def load_models(client: redis.Redis, snapshots: list[PolicySnapshot]) -> tuple[list[ModelBank], str]:
    """One model bank per snapshot, from the live model snapshot in Redis or the offers' priors."""
    store = ModelStore(client)
    live, data = store.live(), store.load()
    description = "priors (no model snapshot in Redis)"
    banks = []
    for snapshot in snapshots:
        bank = ModelBank()
        if data:
            try:
                bank = ModelBank.from_bytes(data)
                bank.published_version = live
                description = f"model version {bank.version} ({bank.updates} outcomes learned)"
            except (ValueError, KeyError, TypeError) as exc:
                description = f"priors (the live model snapshot is unreadable: {exc})"
        bank.bind(snapshot)
        banks.append(bank)
    return banks, description


def stored_contexts(client: redis.Redis | None) -> StoredContext:
    """(customer id, now, contact window) -> context: read from Redis, or unknown-customer defaults."""
    if client is None:
        return lambda customer_id, now, window: CustomerContext(CustomerProfile.unknown(customer_id), now)
    reader = ContextReader(client)
    # declines and acceptances for a year back (the longest a suppression or accepted window may be): the
    # preview's sets decide which count
    return lambda customer_id, now, window: reader.read_context(
        customer_id, now, contact_window=window, suppression_window=365 * 86400, accepted_window=365 * 86400
    )


def stored_contexts_many(client: redis.Redis | None) -> StoredContexts:
    """:func:`stored_contexts` of many customers at once: one pipelined round trip."""
    if client is None:
        return lambda moments, window: {c: CustomerContext(CustomerProfile.unknown(c), now) for c, now in moments}
    reader = ContextReader(client)

    def read(moments: Sequence[tuple[str, float]], window: float) -> dict[str, CustomerContext]:
        contexts = reader.read_contexts(
            moments, contact_window=window, suppression_window=365 * 86400, accepted_window=365 * 86400
        )
        return {customer_id: ctx for (customer_id, _), ctx in zip(moments, contexts, strict=True)}

    return read


def moment_time(text: str | None, default: float) -> float:
    """An ISO 8601 date-time (UTC when it has no offset) as Unix seconds; ``default`` when not given."""
    if not text:
        return default
    try:
        return parse_iso(text)
    except ValueError:
        raise SourceError(f"{text!r} is not an ISO 8601 date-time such as 2026-06-10T14:00:00+02:00") from None
