"""Many calls sent together (a campaign batch): the same replies, records and refusals as one call at a time."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
import redis

from nba_service.domain import CustomerContext, CustomerProfile, Decision, Event, WriteResult
from nba_service.store import codec, keys
from nba_service.store.script_connection import LuaScript, ScriptConnection
from nba_service.store.state import Budget, DecisionWrite, StateStore
from tests.store.test_profile_races import run_with_store

ECHO = LuaScript("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
FAIL = LuaScript("if ARGV[1] == 'fail' then return redis.error_reply('no such thing') end return 1")
EVENT = Event("campaign", {"balance": 0})

# One Redis: on a cluster, evalsha_many is a gather of single calls (tests/campaigns/test_campaign_workers.py runs
# the campaign path there), and these tests' cluster runs leave a socket of the script connection open at times
# (write_decision alone does too).
pytestmark = pytest.mark.standalone_only


def action(offer: str = "overdraft_protection", channel: str = "push") -> Decision:
    return Decision(
        offer,
        channel,
        0.4,
        0.9,
        category="credit",
        policy_version="3",
        model_version="m1",
        features={"segment=mass": 1.0},
    )


def test_scripts_sent_together_answer_in_order_load_once_and_raise_or_return_an_error_reply(redis_url, redis_client):
    async def run() -> Any:
        connection = ScriptConnection(redis_url)
        try:
            first = await connection.evalsha_many(ECHO, [([f"k{i}"], ["v", i]) for i in range(200)])  # NOSCRIPT
            redis_client.script_flush()  # e.g. Redis restarted: each call is loaded again and sent alone
            again = await connection.evalsha_many(ECHO, [([f"k{i}"], ["v", i]) for i in range(3)])
            with pytest.raises(redis.ResponseError, match="no such thing"):
                await connection.evalsha_many(FAIL, [([], ["ok"]), ([], ["fail"]), ([], ["ok"])])
            kept = await connection.evalsha_many(FAIL, [([], ["ok"]), ([], ["fail"]), ([], ["ok"])], return_errors=True)
            assert kept[0] == kept[2] == 1 and isinstance(kept[1], redis.ResponseError) and "no such" in str(kept[1])
            commands = await connection.command_many(
                [("SET", "a", "1", "NX"), ("SET", "a", "2", "NX"), ("GET", "a"), ("HGET", "a", "f")]
            )
            after = await connection.evalsha(ECHO, ["k"], ["v", 1])  # the connection still matches replies
            return first, again, commands, after
        finally:
            await connection.aclose()

    first, again, commands, after = asyncio.run(run())
    assert first == [[f"k{i}".encode(), b"v", i + 1] for i in range(200)]
    assert again == [[f"k{i}".encode(), b"v", i + 1] for i in range(3)]
    assert commands[:3] == [b"OK", None, b"1"]
    assert isinstance(commands[3], redis.ResponseError) and "WRONGTYPE" in str(commands[3])  # returned, not raised
    assert after == [b"k", b"v", 2]


def test_contexts_read_together_are_those_read_one_at_a_time(redis_url, redis_client):
    now = time.time()
    for i in range(5):
        redis_client.set(keys.profile(f"r{i}"), codec.encode_profile(CustomerProfile(f"r{i}", first_name=f"N{i}")))
    redis_client.zadd(keys.contacts("r1"), {codec.contact_member("d" * 32, "o1", "push", "credit"): now - 60})
    customers = [f"r{i}" for i in range(5)] + ["nobody"]

    async def scenario(store: StateStore) -> Any:
        windows = {"contact_window": 86400.0, "suppression_window": 86400.0, "accepted_window": 86400.0}
        together = await store.read_contexts(customers, now, origin_channel="campaign", **windows)
        alone = [await store.read_context(c, now, origin_channel="campaign", **windows) for c in customers]
        return together, alone

    together, alone = run_with_store(redis_url, scenario)
    assert together == alone
    assert [c.profile.first_name for c in together] == ["N0", "N1", "N2", "N3", "N4", ""]
    assert len(together[1].contacts) == 1 and not together[5].profile.known


def test_decisions_written_together_are_recorded_as_one_at_a_time(redis_url, redis_client):
    now = time.time()

    def ctx(customer: str) -> CustomerContext:
        return CustomerContext(CustomerProfile(customer), now, origin_channel="campaign")

    stale = CustomerContext(CustomerProfile("w4"), now, origin_channel="campaign")  # read before a contact
    redis_client.zadd(keys.contacts("w4"), {codec.contact_member("e" * 32, "o1", "push", "credit"): now - 1})
    writes = [
        DecisionWrite(
            keys.new_decision_id(f"w{i}"),
            f"req{i}",
            ctx(f"w{i}"),
            EVENT,
            action(),
            prior=0.05,
            attribution_seconds=3600,
        )
        for i in range(3)
    ]
    writes += [
        DecisionWrite(keys.new_decision_id("w3"), "req3", ctx("w3"), EVENT, Decision(None, "", 0.0, 1.0)),  # no action
        DecisionWrite(keys.new_decision_id("w4"), "req4", stale, EVENT, action()),  # refused: contacted since the read
    ]
    alone = DecisionWrite(
        keys.new_decision_id("w7"), "req7", ctx("w7"), EVENT, action(), prior=0.05, attribution_seconds=3600
    )

    async def scenario(store: StateStore) -> Any:
        results = await store.write_decisions(writes, contact_window=86400.0)
        single = await store.write_decision(
            alone.decision_id,
            alone.request_id,
            alone.ctx,
            alone.event,
            alone.decision,
            contact_window=86400.0,
            prior=alone.prior,
            attribution_seconds=alone.attribution_seconds,
        )
        return results, single

    results, single = run_with_store(redis_url, scenario)
    assert single is WriteResult.WRITTEN
    assert results[:4] == [WriteResult.WRITTEN] * 4
    assert results[4:] == [WriteResult.CONTACTS_CHANGED]

    def record(write: DecisionWrite) -> dict[str, Any]:
        bucket = keys.bucket_of(write.ctx.profile.customer_id)
        stored = {
            k.decode(): v.decode() for k, v in redis_client.hgetall(keys.decision(write.decision_id, bucket)).items()
        }
        meta = json.loads(stored.pop("meta"))
        assert meta.pop("request_id") == write.request_id
        stored.pop("customer_id")
        return stored | {
            "meta": meta,
            "pending": redis_client.zscore(keys.pending(bucket), write.decision_id) is not None,
            "contacts": redis_client.zcard(keys.contacts(write.ctx.profile.customer_id)),
            "journey": redis_client.llen(keys.journey(write.ctx.profile.customer_id)),
        }

    expected = record(alone)
    assert expected["pending"] and expected["contacts"] == 1 and expected["journey"] == 1
    assert all(record(w) == expected for w in writes[:3])  # the same record as a decision written alone
    assert not redis_client.exists(keys.decision(writes[4].decision_id, keys.bucket_of("w4")))  # nothing written
    assert redis_client.zcard(keys.contacts("w3")) == 0 and redis_client.llen(keys.journey("w3")) == 1


def test_a_budgeted_decision_among_them_takes_its_unit_first_and_never_overspends(redis_url, redis_client):
    now = time.time()
    budget = Budget("nba:{g}:budget:test", 1, 600)
    writes = [
        DecisionWrite(
            keys.new_decision_id(c),
            "r",
            CustomerContext(CustomerProfile(c), now),
            EVENT,
            action(),
            budget=budget if c != "u0" else None,
        )
        for c in ("u0", "u1", "u2")
    ]
    results = run_with_store(redis_url, lambda store: store.write_decisions(writes, contact_window=0.0))
    assert results[0] is WriteResult.WRITTEN  # no budget
    assert sorted(r.value for r in results[1:]) == [WriteResult.BUDGET_USED_UP.value, WriteResult.WRITTEN.value]
    assert int(redis_client.get(budget.key)) == 1  # one unit, taken once


def test_a_write_redis_answers_with_an_error_is_its_own_result_and_the_others_are_recorded(redis_url, redis_client):
    """One customer's write fails (WRONGTYPE: their decision index is a string): that write's result is the
    error, the others are written as usual, and a failed write with a budget gives its unit back. A lost
    connection still fails the whole call: no write's outcome is known."""
    now = time.time()
    budget = Budget("nba:{g}:budget:test", 10, 600)
    customers = ("f0", "f1", "f2", "f3")
    for poisoned in ("f1", "f3"):
        redis_client.set(keys.decision_index(poisoned), "not a sorted set")
    writes = [
        DecisionWrite(
            keys.new_decision_id(c),
            "r",
            CustomerContext(CustomerProfile(c), now),
            EVENT,
            action(),
            budget=budget if c in ("f2", "f3") else None,
        )
        for c in customers
    ]
    results = run_with_store(redis_url, lambda store: store.write_decisions(writes, contact_window=0.0))
    assert [r if isinstance(r, WriteResult) else "error" for r in results] == [
        WriteResult.WRITTEN,
        "error",
        WriteResult.WRITTEN,
        "error",
    ]
    assert all("WRONGTYPE" in str(results[i]) for i in (1, 3))
    assert [redis_client.zcard(keys.contacts(c)) for c in customers] == [1, 0, 1, 0]  # the contacts recorded
    assert int(redis_client.get(budget.key)) == 1  # f2's unit; f3's given back

    async def alone(store: StateStore) -> Any:  # the live path: the error raised, the unit given back
        write = writes[3]
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.write_decision(**write.arguments(), contact_window=0.0)

    run_with_store(redis_url, alone)
    assert int(redis_client.get(budget.key)) == 1

    with socket.socket() as probe:  # a port nothing listens on: the connection fails, the batch raises
        probe.bind(("127.0.0.1", 0))
        gone = f"redis://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(redis.ConnectionError):
        run_with_store(gone, lambda store: store.write_decisions(writes[:1], contact_window=0.0))
