"""Profile updates and erasures that another write overtakes: each is computed again, nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from nba_service.domain import CustomerProfile
from nba_service.domain.profile_update import ProfileMask
from nba_service.store import codec, keys
from nba_service.store.audit import customer_audit
from nba_service.store.state import StateStore
from tests.conftest import async_redis


def run_with_store(redis_url: str, scenario: Any) -> Any:
    async def main() -> Any:
        client = async_redis(redis_url)
        store = StateStore(client, decision_ttl_seconds=3600, journey_max_events=50, url=redis_url)
        try:
            return await scenario(store)
        finally:
            await store.aclose()
            await client.aclose()

    return asyncio.run(main())


def before_first_script(store: StateStore, method: str, meanwhile: Any) -> None:
    """Run ``meanwhile`` (another writer) just before the store's first script call."""
    original = getattr(store._scripts, method)
    calls = []

    async def call(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(1)
            meanwhile()
        return await original(*args, **kwargs)

    setattr(store._scripts, method, call)


def test_an_overtaken_upsert_is_computed_again_and_keeps_the_other_change(redis_url, redis_client: redis.Redis):
    stored = CustomerProfile("r1", segment="mass", consents={"sms": True, "push": True})
    redis_client.set(keys.profile("r1"), codec.encode_profile(stored))

    def another_crm() -> None:  # withdraws push between our read and our write
        redis_client.set(keys.profile("r1"), codec.encode_profile(
            CustomerProfile("r1", segment="mass", consents={"sms": True, "push": False})))

    async def scenario(store: StateStore) -> bool:
        before_first_script(store, "run", another_crm)
        return await store.upsert_profile(CustomerProfile("r1", consents={"sms": False}), ProfileMask.parse(
            ["consents.sms"]), caller="crm-a", request_id="a-1")

    created = run_with_store(redis_url, scenario)

    assert created is False
    profile = codec.decode_profile("r1", redis_client.get(keys.profile("r1")))
    assert dict(profile.consents) == {"sms": False, "push": False}  # both changes kept
    entries = customer_audit(redis_client, "r1")
    assert [(e.channel, e.old, e.new, e.caller) for e in entries] == [("sms", "granted", "denied", "crm-a")]


def test_a_decision_recorded_during_the_erasure_is_erased_too(redis_url, redis_client: redis.Redis):
    redis_client.set(keys.profile("r2"), codec.encode_profile(CustomerProfile("r2")))
    bucket = keys.bucket_of("r2")
    for n, decision_id in enumerate(("d1", "d2")):
        redis_client.hset(keys.decision(decision_id, bucket), mapping={"customer_id": "r2"})
        redis_client.zadd(keys.decision_index("r2"), {decision_id: 1000 + n})

    def a_decision() -> None:  # recorded after the erasure read the index
        redis_client.hset(keys.decision("d3", bucket), mapping={"customer_id": "r2"})
        redis_client.zadd(keys.decision_index("r2"), {"d3": 1002})
        redis_client.zadd(keys.pending(bucket), {"d3": 5000})

    async def scenario(store: StateStore) -> Any:
        before_first_script(store, "evalsha", a_decision)
        return await store.erase_customer("r2", caller="dpo", request_id="e-1")

    erasure = run_with_store(redis_url, scenario)

    assert (erasure.erased, erasure.decisions) == (True, 3)
    assert not redis_client.exists(keys.profile("r2"), keys.decision_index("r2"),
                                   *(keys.decision(d, bucket) for d in ("d1", "d2", "d3")))
    assert redis_client.zscore(keys.pending(bucket), "d3") is None
    assert [(e.action, e.caller, e.request_id) for e in customer_audit(redis_client, "r2")] == [
        ("erased", "dpo", "e-1")]
