"""The consent audit: one Redis stream of every consent change and every erasure.

Each entry (``XADD`` to the customer's bucket's :func:`~nba_service.store.keys.consent_audit`, in the
same script as the change it records, see :mod:`nba_service.store.state`) has
the fields ``customer`` (a pseudonym, never the customer id), ``action``
(``consent`` or ``erased``), ``channel``, ``old`` and ``new`` (``granted``,
``denied`` or ``unset``; empty for an erasure), ``caller`` (the authenticated
caller's name), ``ts`` (Unix seconds) and ``request_id`` (the caller's, may be
empty). The stream is trimmed (approximately) to :data:`AUDIT_MAXLEN` entries.

The pseudonym is ``HMAC-SHA256(secret, customer_id)``, the first 32 hex
digits. The secret is created once per deployment, in Redis
(:data:`~nba_service.store.keys.PSEUDONYM_SECRET`, ``SET NX`` of 32 random
bytes), so every replica and every ``nba`` command computes the same
pseudonym. It lets the audit be read by customer id after the customer is
erased, while no entry names the customer. Deleting the secret makes the
existing entries unreadable by customer id (a new one is made).

The stream is global: reading one customer's entries scans it in pages, as an
audit command can afford.

>>> pseudonym(b"k" * 32, "c42")
'0f174477b903bbb22df572059bc78de6'
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import cast

import redis
import redis.asyncio as aioredis

from nba_service.store import keys

__all__ = [
    "AUDIT_MAXLEN",
    "AuditEntry",
    "customer_audit",
    "pseudonym",
    "pseudonym_secret",
    "pseudonym_secret_async",
]

AUDIT_MAXLEN = 1_000_000
"""The consent audit is trimmed (approximately) to this many entries: export it to keep more."""
SECRET_BYTES = 32
PSEUDONYM_HEX = 32


def pseudonym(secret: bytes, customer_id: str) -> str:
    """The customer's pseudonym in the audit: HMAC-SHA256 of the id under the deployment's secret, 32 hex digits."""
    return hmac.new(secret, customer_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def pseudonym_secret(client: redis.Redis, create: bool = True) -> bytes | None:
    """The deployment's pseudonym secret, made now if there is none yet (None when not and ``create`` is false)."""
    secret = client.get(keys.PSEUDONYM_SECRET)
    if secret is None and create:
        client.set(keys.PSEUDONYM_SECRET, os.urandom(SECRET_BYTES), nx=True)  # the first writer wins
        secret = client.get(keys.PSEUDONYM_SECRET)
    return cast("bytes | None", secret)  # the client does not decode responses


async def pseudonym_secret_async(client: aioredis.Redis) -> bytes:
    """:func:`pseudonym_secret` for the server's asyncio client, always made when missing."""
    secret = await client.get(keys.PSEUDONYM_SECRET)
    if secret is None:
        await client.set(keys.PSEUDONYM_SECRET, os.urandom(SECRET_BYTES), nx=True)
        secret = await client.get(keys.PSEUDONYM_SECRET)
    return cast("bytes", secret)


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the consent audit."""

    entry_id: str
    timestamp: float
    action: str
    """``consent`` (a consent changed) or ``erased`` (the customer was erased)."""
    channel: str
    old: str
    new: str
    caller: str
    request_id: str

    @classmethod
    def decode(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> AuditEntry:
        def text(name: bytes) -> str:
            return fields.get(name, b"").decode()

        return cls(
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            timestamp=float(text(b"ts") or 0.0),
            action=text(b"action"),
            channel=text(b"channel"),
            old=text(b"old"),
            new=text(b"new"),
            caller=text(b"caller"),
            request_id=text(b"request_id"),
        )

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def customer_audit(client: redis.Redis, customer_id: str, page: int = 1000) -> list[AuditEntry]:
    """The customer's audit entries, oldest first: its bucket's stream (and the stream of the layout before
    buckets, if a migration kept one) is scanned, ``page`` entries a call."""
    secret = pseudonym_secret(client, create=False)
    if secret is None:  # nothing was ever audited in this Redis
        return []
    wanted = pseudonym(secret, customer_id).encode()
    found: list[AuditEntry] = []
    for stream in (keys.CONSENT_AUDIT_LEGACY, keys.consent_audit(keys.bucket_of(customer_id))):
        start = "-"
        while True:
            batch = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                client.xrange(stream, min=start, max="+", count=page),
            )
            for entry_id, fields in batch:
                if fields.get(b"customer") == wanted:
                    found.append(AuditEntry.decode(entry_id, fields))
            if len(batch) < page:
                break
            start = "(" + batch[-1][0].decode()  # after the last entry read
    return found
