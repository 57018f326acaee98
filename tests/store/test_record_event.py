"""A moment recorded without a decision: one atomic script over the customer's keys (one hash slot), and
the open-journey rule it shares with the decision's write script (a purchase closes carts, nothing else)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis
from redis.crc import key_slot

from nba_service.domain import CustomerContext, CustomerProfile, Decision, Event
from nba_service.store import codec, keys
from nba_service.store.state import StateStore
from tests.conftest import async_redis


def run_with_store(redis_url: str, scenario: Any) -> tuple[Any, list[tuple[str, dict[str, str], bool]]]:
    """Run ``scenario(store)``; also return every script call the store made: (source, keys, retried)."""
    calls: list[tuple[str, dict[str, str], bool]] = []

    async def main() -> Any:
        client = async_redis(redis_url)
        store = StateStore(client, decision_ttl_seconds=3600, journey_max_events=50, url=redis_url)
        original = store._scripts.run

        async def run(script: Any, keys: Any, args: Any, retry: bool = False) -> Any:
            calls.append((script.source, dict(keys), retry))
            return await original(script, keys, args, retry)

        store._scripts.run = run  # type: ignore[method-assign]
        try:
            return await scenario(store)
        finally:
            await store.aclose()
            await client.aclose()

    return asyncio.run(main()), calls


def cart(cart_id: str) -> Event:
    return Event(
        "cart_abandon", {"cart_id": cart_id, "cart_value": 50.0, "currency": "EUR", "item_count": 2}, {}, ("a", "b")
    )


def test_one_script_over_the_customers_slot_not_retried(redis_url, redis_client: redis.Redis):
    now = time.time()
    recorded, calls = run_with_store(redis_url, lambda store: store.record_event("e1", "web", cart("k1"), now))

    ((_, script_keys, retried),) = calls  # one round trip
    assert not retried  # it writes: never sent twice after a dropped connection
    assert set(script_keys) == {"journey", "open_journeys"}  # no decision, contacts, budget or pending set
    assert {key_slot(k.encode()) for k in script_keys.values()} == {key_slot(keys.profile("e1").encode())}
    assert (recorded.opened.kind, recorded.opened.id, recorded.opened.opened) == ("cart", "k1", round(now, 3))
    assert recorded.opened.fields["item_ids"] == ["a", "b"]
    entry = codec.decode_journey(redis_client.lindex(keys.journey("e1"), 0))
    assert entry.timestamp == round(now, 3) and entry.fields["item_ids"] == ["a", "b"]
    stored = json.loads(redis_client.hget(keys.open_journeys("e1"), "cart:k1"))
    assert stored["fields"]["item_ids"] == ["a", "b"]
    assert redis_client.ttl(keys.journey("e1")) > 0 and redis_client.ttl(keys.open_journeys("e1")) > 0


def test_a_purchase_closes_carts_and_nothing_else(redis_url, redis_client: redis.Redis):
    other = codec.encode_open_journey(1.0, {"product": "savings"})
    redis_client.hset(keys.open_journeys("e2"), "application:s1", other)
    redis_client.hset(keys.open_journeys("e3"), "application:s1", other)

    async def scenario(store: StateStore) -> Any:
        for cart_id in ("k1", "k2"):
            await store.record_event("e2", "web", cart(cart_id), time.time())
        closed = await store.record_event("e2", "store", Event("custom", {"name": "purchase"}), time.time())
        # the decision's write script applies the same rule
        await store.record_event("e3", "web", cart("k3"), time.time())
        ctx = CustomerContext(CustomerProfile("e3"), time.time(), origin_channel="app")
        await store.write_decision(
            "d" * 32, "r1", ctx, Event("custom", {"name": "checkout"}), Decision(None, "", 0.0, 1.0), contact_window=0
        )
        return closed

    closed, _ = run_with_store(redis_url, scenario)

    assert sorted(j.id for j in closed.closed) == ["k1", "k2"] and closed.opened is None
    assert redis_client.hkeys(keys.open_journeys("e2")) == [b"application:s1"]
    assert redis_client.hkeys(keys.open_journeys("e3")) == [b"application:s1"]
    assert redis_client.llen(keys.journey("e2")) == 3 and redis_client.llen(keys.journey("e3")) == 2
