"""Read-only access to customer contexts, for tools (``nba policy preview``, ``nba explain``).

Issues the same reads as :meth:`nba_service.store.state.StateStore.read_context`
and decodes them with the same function (:func:`nba_service.store.codec.decode_context`):
profile, recent journey, contacts within the longest limit window, open
journeys, declines within the longest suppression window, offers accepted
within the longest ``accepted_window``. It uses a synchronous
client, one round trip, and never writes: no script is loaded, no key is touched.
:meth:`ContextReader.read_contexts` reads many customers' contexts in one pipelined round trip (a preview's
customers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from nba_service.domain import CustomerContext
from nba_service.store import codec, keys

__all__ = ["ContextReader"]


class ContextReader:
    """Customer contexts from Redis, read only."""

    def __init__(self, client: redis.Redis, context_events: int = 50) -> None:
        self._redis = client
        self.context_events = context_events

    def read_contexts(
        self,
        moments: Sequence[tuple[str, float]],
        *,
        contact_window: float = 0.0,
        suppression_window: float = 0.0,
        accepted_window: float = 0.0,
        batch: int = 2000,
    ) -> list[CustomerContext]:
        """The context of each (customer id, now) of ``moments``, in order, as :meth:`read_context` reads it:
        every read sent in one pipeline (of ``batch`` customers at a time, to bound the memory of one answer),
        without MULTI: each customer's reads are not one atomic view, which a read-only preview does not need."""
        contexts: list[CustomerContext] = []
        for start in range(0, len(moments), batch):
            chunk = moments[start : start + batch]
            with self._redis.pipeline(transaction=False) as pipe:
                for customer_id, now in chunk:
                    self._queue(pipe, customer_id, now, contact_window, suppression_window, accepted_window)
                answers = pipe.execute()
            for i, (customer_id, now) in enumerate(chunk):
                profile, journey, contacts, open_journeys, declines, accepted = answers[6 * i : 6 * i + 6]
                contexts.append(
                    codec.decode_context(
                        customer_id, now, "", {}, profile, journey, contacts, open_journeys.items(), declines, accepted
                    )
                )
        return contexts

    def _queue(
        self,
        pipe: Any,
        customer_id: str,
        now: float,
        contact_window: float,
        suppression_window: float,
        accepted_window: float,
    ) -> None:
        """The six reads of one customer's context, queued on ``pipe``."""
        pipe.get(keys.profile(customer_id))
        pipe.lrange(keys.journey(customer_id), 0, self.context_events - 1)
        pipe.zrangebyscore(keys.contacts(customer_id), f"{now - contact_window:.3f}", "+inf", withscores=True)
        pipe.hgetall(keys.open_journeys(customer_id))
        pipe.zrangebyscore(
            keys.declines(customer_id),
            f"{now - suppression_window:.3f}" if suppression_window > 0 else "+inf",
            "+inf",
            withscores=True,
        )
        pipe.zrangebyscore(
            keys.accepted(customer_id),
            f"{now - accepted_window:.3f}" if accepted_window > 0 else "+inf",
            "+inf",
            withscores=True,
        )

    def read_context(
        self,
        customer_id: str,
        now: float,
        *,
        origin_channel: str = "",
        request_attributes: Mapping[str, str] | None = None,
        contact_window: float = 0.0,
        suppression_window: float = 0.0,
        accepted_window: float = 0.0,
    ) -> CustomerContext:
        """The customer's context at ``now``; an unknown customer gets the defaults (``profile.known`` false)."""
        with self._redis.pipeline(transaction=True) as pipe:  # MULTI of reads: one consistent view
            self._queue(pipe, customer_id, now, contact_window, suppression_window, accepted_window)
            raw_profile, raw_journey, raw_contacts, raw_open, raw_declines, raw_accepted = pipe.execute()
        return codec.decode_context(
            customer_id,
            now,
            origin_channel,
            dict(request_attributes or {}),
            raw_profile,
            raw_journey,
            raw_contacts,
            raw_open.items(),
            raw_declines,
            raw_accepted,
        )
