"""Holdings and accepted offers in Redis: a product_opened moment adds its holding in the journey's script with
the profile's compare-and-set (an overtaken one is done again, nothing lost, nothing written twice); accepted
offers are read back with the context, within the window asked for."""

from __future__ import annotations

from typing import Any

import redis

from nba_service.domain import CustomerProfile, Event
from nba_service.store import codec, keys
from nba_service.store.state import StateStore
from tests.store.test_profile_races import before_first_script, run_with_store

OPENED = Event("custom", {"name": "product_opened"}, {"product": "overdraft_protection"})


def test_an_overtaken_product_event_is_recorded_once_and_keeps_the_other_change(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.set(keys.profile("p1"), codec.encode_profile(CustomerProfile("p1", segment="mass")))

    def another_crm() -> None:  # changes the segment between our read and our script
        redis_client.set(keys.profile("p1"), codec.encode_profile(CustomerProfile("p1", segment="vip")))

    async def scenario(store: StateStore) -> Any:
        before_first_script(store, "run", another_crm)
        return await store.record_event("p1", "branch", OPENED, 1_800_000_000.0)

    recorded = run_with_store(redis_url, scenario)

    assert recorded.holding_added == "overdraft_protection"
    profile = codec.decode_profile("p1", redis_client.get(keys.profile("p1")))
    assert (profile.segment, profile.holdings) == ("vip", frozenset({"overdraft_protection"}))
    assert [codec.decode_journey(e).type for e in redis_client.lrange(keys.journey("p1"), 0, -1)] == ["custom"]


def test_a_product_already_held_leaves_the_profile_as_it_was(redis_url: str, redis_client: redis.Redis) -> None:
    stored = codec.encode_profile(CustomerProfile("p2", holdings=frozenset({"overdraft_protection"})))
    redis_client.set(keys.profile("p2"), stored)

    recorded = run_with_store(redis_url, lambda store: store.record_event("p2", "branch", OPENED, 1_800_000_000.0))

    assert recorded.holding_added == ""
    assert redis_client.get(keys.profile("p2")) == stored.encode()
    assert redis_client.llen(keys.journey("p2")) == 1


def test_a_profile_without_holdings_is_stored_as_before_holdings_existed() -> None:
    assert "holdings" not in codec.encode_profile(CustomerProfile("p3", segment="mass"))
    assert codec.decode_profile("p3", '{"segment": "mass"}').holdings == frozenset()


def test_accepted_offers_are_read_with_the_context_within_the_window(redis_url: str, redis_client: redis.Redis) -> None:
    now = 1_800_000_000.0
    redis_client.zadd(
        keys.accepted("p4"),
        {
            codec.accepted_member("overdraft_protection", "overdraft_protection", "d1"): now - 10 * 86400,
            codec.accepted_member("card_upgrade", "gold_card", "d2"): now - 100 * 86400,
        },
    )

    async def scenario(store: StateStore) -> Any:
        return [
            (await store.read_context("p4", now, accepted_window=w)).accepted for w in (0.0, 30 * 86400, 365 * 86400)
        ]

    none, recent, year = run_with_store(redis_url, scenario)

    assert none == ()  # no offer sells a product: nothing read
    assert recent == ((now - 10 * 86400, "overdraft_protection", "overdraft_protection"),)
    assert [offer for _, offer, _ in year] == ["card_upgrade", "overdraft_protection"]
