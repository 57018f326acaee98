"""Read-only access to customer contexts, for tools (``nba policy preview``, ``nba explain``).

Issues the same reads as :meth:`nba_service.store.state.StateStore.read_context`
and decodes them with the same function (:func:`nba_service.store.codec.decode_context`):
profile, recent journey, contacts within the longest limit window, open
journeys, declines within the longest suppression window, offers accepted
within the longest ``accepted_window``. It uses a synchronous
client, one round trip, and never writes: no script is loaded, no key is touched.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis

from nba_service.domain import CustomerContext
from nba_service.store import codec, keys

__all__ = ["ContextReader"]


class ContextReader:
    """Customer contexts from Redis, read only."""

    def __init__(self, client: redis.Redis, context_events: int = 50) -> None:
        self._redis = client
        self.context_events = context_events

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
