"""Upgrading a Redis of the previous release to the bucketed key layout (issue 13, item 3): nba_service/store/migrate.py
and ``nba store migrate`` / ``nba store layout`` (nba_service/cli/store.py).

Every test writes, by hand and with the key names of ``keys.Legacy``, the state a deployment of the previous release
leaves: three customers (profiles, journeys, contacts, an open cart, declines, decision indexes and the older decision
list), four decisions (one pending, one accepted, one declined, one that expired) and a pending member whose decision
is gone, an outcome stream whose ``learners`` group acknowledged one entry, read another and never read two more, two
policy versions (2 live) with their change log, a model version, a budget counter, the consent audit and its
pseudonym key, an old server's heartbeat and the learner's lock, and one key nba does not know.

Then: a server started on that Redis upgrades it in place and serves the old customers, their decisions (an outcome
reported on an old decision id lands in its customer's bucket), policy version 2, the budget counter and the
unacknowledged outcomes (its learner learns them, and only them); a copy to another Redis (and to a Redis Cluster)
prints its counts, leaves the source as it was, and gives the same state and counts when it was interrupted and run
again, with no outcome entry copied twice; a Redis already in the new layout is left alone.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from nba_service.cli import main
from nba_service.domain import CustomerProfile
from nba_service.domain.enums import RedisMode
from nba_service.learning.models import ModelBank
from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.settings import Settings
from nba_service.store import codec, keys
from nba_service.store.audit import customer_audit, pseudonym
from nba_service.store.connect import RedisTarget, sync_client
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.keys import Legacy
from nba_service.store.local_cluster import LocalCluster
from nba_service.store.migrate import (
    CHECKPOINT,
    LOCK,
    MigrationError,
    MigrationReport,
    ensure_layout,
    migrate,
)
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore, content_digest
from tests.conftest import ROOT, SAMPLE_POLICIES, ServerThread, wait_until

pytestmark = pytest.mark.standalone_only  # the previous layout only ever lived on one Redis

NOW = time.time()
D1, D2, D3, D4, D5 = (f"{n:x}" * 32 for n in range(1, 6))
"""Decision ids as the previous release made them (32 hex digits, no bucket)."""
SECRET = b"k" * 32
BUDGET_OFFER = "credit_line_raise"
BUDGET_WINDOW = int(NOW // 86400)
EXPECTED = {
    "customers": 3,
    "customer_keys": 11,
    "decisions": 4,
    "pending": 1,
    "pending_dropped": 1,
    "outcomes": 3,
    "outcomes_learned": 1,
    "policy_versions": 2,
    "model_versions": 1,
    "budgets": 1,
    "other": 9,
    "dropped": 3,
    "unknown": 1,
}
"""The counts of a migration of :func:`write_legacy`'s state."""


def _customer(customer_id: str, what: str) -> str:
    return Legacy.customer_prefix(customer_id) + what


def _decision(client: redis.Redis, decision_id: str, customer_id: str, offer: str, channel: str, ttl: int,
              ts: float, **extra: str) -> None:
    meta = {"request_id": f"r-{decision_id[:4]}", "ts": round(ts, 3), "event_type": "atm_decline",
            "origin_channel": "atm", "category": "lending", "score": 0.5, "propensity": 1.0,
            "policy_version": "1", "model_version": "m1"}
    client.hset(Legacy.decision(decision_id), mapping={
        "customer_id": customer_id, "offer_id": offer, "channel": channel, "prior": "0.05",
        "features": json.dumps({"segment=mass": 1.0, "credit_score": 720.0}), "meta": json.dumps(meta),
        "reward_on": "accepted", **extra})
    client.expire(Legacy.decision(decision_id), ttl)


def _outcome(decision_id: str, offer: str, channel: str, reward: str, outcome: str) -> dict[str, str]:
    return {"decision_id": decision_id, "offer_id": offer, "channel": channel,
            "features": json.dumps({"segment=mass": 1.0}), "reward": reward, "prior": "0.05", "outcome": outcome,
            "trial": ""}


def write_legacy(client: redis.Redis) -> None:
    """The state a deployment of the previous release leaves in its Redis (see the module's doc)."""
    client.set(Legacy.PSEUDONYM_SECRET, SECRET)
    for customer_id, name in (("c1", "Ana"), ("c2", "Bo"), ("c3", "Cy")):
        client.set(_customer(customer_id, "profile"), codec.encode_profile(CustomerProfile(
            customer_id=customer_id, first_name=name, segment="mass", preferred_channel="push",
            reachable_channels=frozenset({"push", "sms", "atm_screen"}),
            consents={"push": True, "sms": True, "atm_screen": True}, attributes={"credit_score": "720"})))
    for customer_id, events in (("c1", 2), ("c2", 1)):
        journey = _customer(customer_id, "journey")
        for n in range(events):
            client.lpush(journey, codec.encode_journey(NOW - 3000 + n * 100, "atm_decline", "atm",
                                                       {"amount": 100 + n, "balance": 20}))
        client.expire(journey, 90 * 86400)
    client.zadd(_customer("c1", "contacts"), {codec.contact_member(D1, "overdraft_protection", "atm_screen",
                                                                   "lending"): NOW - 100})
    client.expire(_customer("c1", "contacts"), 30 * 86400)
    client.hset(_customer("c2", "open"), "cart:k1", codec.encode_open_journey(NOW - 50, {"cart_id": "k1"}))
    client.zadd(_customer("c3", "declines"), {f"card_upgrade|{D4}": NOW - 10})
    client.zadd(_customer("c1", "decision-index"), {D1: NOW - 100, D2: NOW - 3000})
    client.zadd(_customer("c2", "decision-index"), {D3: NOW - 2000})
    client.rpush(_customer("c3", "decisions"), D4)  # the list before the decision index
    _decision(client, D1, "c1", "overdraft_protection", "atm_screen", 30 * 86400, NOW - 100)
    _decision(client, D2, "c1", "micro_loan", "atm_screen", 29 * 86400, NOW - 3000,
              **{"o:accepted": f"{NOW - 2900:.3f}|0.0", "learned": "accepted"})
    _decision(client, D3, "c2", "card_upgrade", "push", 31 * 86400, NOW - 2000,
              **{"o:declined": f"{NOW - 1900:.3f}|0.0", "learned": "declined"})
    _decision(client, D4, "c3", "card_upgrade", "push", 28 * 86400, NOW - 5000, learned="expired")
    client.zadd(Legacy.PENDING_OUTCOMES, {D1: NOW + 3600, D5: NOW + 100})  # D5's decision is gone
    stream = Legacy.OUTCOME_STREAM
    client.xadd(stream, _outcome(D2, "micro_loan", "atm_screen", "1", "accepted"), id="1700000000000-0")
    client.xadd(stream, _outcome(D3, "card_upgrade", "push", "0", "declined"), id="1700000000001-0")
    client.xgroup_create(stream, keys.LEARNER_GROUP, id="0")
    client.xreadgroup(keys.LEARNER_GROUP, "old-learner", {stream: ">"}, count=2)
    client.xack(stream, keys.LEARNER_GROUP, "1700000000000-0")  # learned; the second is read, not yet learned
    client.xadd(stream, _outcome(D4, "card_upgrade", "push", "0", "expired"), id="1700000000002-0")
    client.xadd(stream, _outcome(D5, "overdraft_protection", "push", "0", "expired"), id="1700000000003-0")
    files = read_policy_dir(SAMPLE_POLICIES)
    for version, message in ((1, "first"), (2, "second")):
        client.hset(Legacy.policy_version(version), mapping={
            "files": json.dumps(files, ensure_ascii=False), "author": "ops", "message": message,
            "published_at": f"{NOW - 1000 + version:.3f}", "digest": content_digest(files)})
        client.rpush(Legacy.POLICY_VERSIONS, version)
        client.xadd(Legacy.CHANGE_LOG, {"what": "policy", "version": version, "previous": version - 1 or "",
                                        "kind": "publish", "who": "ops", "when": "2025-01-01T00:00:00.000+00:00",
                                        "message": message})
    client.set(Legacy.POLICY_SEQ, 2)
    client.set(Legacy.POLICY_LIVE, 2)
    client.set(Legacy.model_version(1), ModelBank().to_bytes())
    client.rpush(Legacy.MODEL_VERSIONS, json.dumps({"version": 1, "updates": 0, "published_at": NOW - 500,
                                                    "source": "learner"}))
    client.set(Legacy.MODEL_SEQ, 1)
    client.set(Legacy.MODEL_LIVE, 1)
    client.set(f"{Legacy.budget_prefix()}{BUDGET_OFFER}:{BUDGET_WINDOW}", 3, ex=86400 + 60)
    client.xadd(Legacy.CONSENT_AUDIT, {"customer": pseudonym(SECRET, "c1"), "action": "consent", "channel": "push",
                                       "old": "unset", "new": "granted", "caller": "crm", "ts": f"{NOW - 4000:.3f}",
                                       "request_id": "q1"})
    client.zadd(Legacy.SERVERS, {"old-host:1": NOW - 60})
    client.hset("nba:server:old-host:1", mapping={"id": "old-host:1"})
    client.pexpire("nba:server:old-host:1", 60_000)
    client.set(Legacy.LEARNER_LOCK, "old-learner", px=60_000)
    client.set("nba:custom:thing", "kept")


READERS: dict[str, Callable[[redis.Redis, bytes], Any]] = {
    "string": lambda client, key: client.get(key),
    "hash": lambda client, key: client.hgetall(key),
    "list": lambda client, key: client.lrange(key, 0, -1),
    "zset": lambda client, key: client.zrange(key, 0, -1, withscores=True),
    "stream": lambda client, key: client.xrange(key),
    "set": lambda client, key: sorted(client.smembers(key)),
}


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key's type and value (TTLs as: has one or not), but the migration's checkpoint and lock."""
    state: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        if key in (CHECKPOINT.encode(), LOCK.encode()):
            continue
        kind = client.type(key).decode()
        state[key] = (kind, READERS[kind](client, key), client.pttl(key) > 0)
    return state


def counts(report: MigrationReport) -> dict[str, int]:
    return {name: getattr(report, name) for name in EXPECTED}


def stream_entries(client: redis.Redis) -> list[tuple[int, bytes, bytes]]:
    """(bucket, entry id, decision id) of every entry of the 256 outcome streams."""
    return [(b, i, f[b"decision_id"]) for b in range(keys.BUCKETS) for i, f in client.xrange(keys.outcome_stream(b))]


@pytest.fixture
def other_redis(tmp_path: pathlib.Path) -> Iterator[Callable[[str], tuple[str, redis.Redis]]]:
    """Start more Redis servers (embedded, each in its own folder): (url, client)."""
    started: list[tuple[EmbeddedRedis, redis.Redis]] = []

    def start(name: str) -> tuple[str, redis.Redis]:
        embedded = EmbeddedRedis(tmp_path / name)
        url = embedded.start()
        client = redis.Redis.from_url(url)
        started.append((embedded, client))
        return url, client

    yield start
    for embedded, client in started:
        client.close()
        embedded.stop()


def nba(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def printed_counts(out: str) -> dict[str, int]:
    """The count column of the CLI's table, by label."""
    found = {}
    for _, label in MigrationReport.COUNTS:
        line = next(ln for ln in out.splitlines() if ln.startswith(label + "  "))
        found[label] = int(line.split()[-1].replace(",", ""))
    return found


# --- in place: what `nba serve` does when it starts -------------------------------------------------------------------


def test_a_server_started_on_a_redis_of_the_previous_release_upgrades_it_and_serves_its_state(
    redis_client, start_server
):
    write_legacy(redis_client)
    server = start_server(learner="embedded", model_snapshot_every=1)

    assert redis_client.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
    left = sorted(redis_client.scan_iter(match="nba:[^{]*"))
    assert left == [b"nba:custom:thing"]  # the unknown key stays; every other old name is gone
    assert not redis_client.exists(CHECKPOINT, LOCK)

    # the old customers, their journeys and decisions (index and older list), with their outcomes
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c1"), timeout=5)
    assert view.known and view.profile.first_name == "Ana"
    assert [e.fields["amount"] for e in view.journey] == ["101", "100"]
    assert [(d.decision_id, d.offer_id, list(d.outcomes)) for d in view.recent_decisions] == [
        (D1, "overdraft_protection", []), (D2, "micro_loan", ["accepted"])]
    assert view.policy_version.endswith("2")
    assert [d.decision_id for d in
            server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c3"), timeout=5).recent_decisions
            ] == [D4]
    assert [(j.kind, j.id) for j in
            server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c2"), timeout=5).open_journeys
            ] == [("cart", "k1")]

    # the pending outcome is in its customer's bucket, and an outcome on the old id is joined there
    bucket = keys.bucket_of("c1")
    assert redis_client.zscore(keys.pending(bucket), D1) == pytest.approx(NOW + 3600, abs=0.01)
    assert redis_client.hget(keys.LEGACY_DECISIONS, D1) == str(bucket).encode()
    assert 0 < redis_client.pttl(keys.LEGACY_DECISIONS) <= 31 * 86400 * 1000
    assert redis_client.pttl(keys.LEGACY_DECISIONS) > 30 * 86400 * 1000  # as long as D3, the longest-lived
    reply = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=D1, outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    assert reply.learned and not reply.duplicate
    assert D1.encode() in [f[b"decision_id"] for _, f in redis_client.xrange(keys.outcome_stream(bucket))]
    assert redis_client.zscore(keys.pending(bucket), D1) is None
    again = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=D1, outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
    assert again.duplicate

    # policy version 2 is live and served; the budget counter, the model and the consent audit are carried
    assert PolicyStore(redis_client).live() == 2
    assert [p.message for p in PolicyStore(redis_client).history()] == ["first", "second"]
    assert redis_client.get(keys.budget(BUDGET_OFFER, BUDGET_WINDOW)) == b"3"
    assert redis_client.ttl(keys.budget(BUDGET_OFFER, BUDGET_WINDOW)) > 86400
    assert [(e.channel, e.new, e.caller) for e in customer_audit(redis_client, "c1")] == [("push", "granted", "crm")]

    # the learner learns what the old group had not acknowledged (3 entries) and the new outcome: 4, not the
    # acknowledged one again
    models = ModelStore(redis_client)
    wait_until(lambda: models.history()[-1].updates >= 4, timeout=20, what="the learner to learn 4 outcomes")
    assert models.history()[0].version == 1  # the old version is kept, and newer ones follow it
    assert max(v.updates for v in models.history()) == 4


def test_ensure_layout_reports_what_it_moved_and_resumes_after_a_crash(redis_client, caplog):
    write_legacy(redis_client)
    calls = []

    def crash(report: MigrationReport) -> None:
        calls.append(report.phase)
        if len(calls) == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        ensure_layout(redis_client, batch=4, progress=crash)
    assert redis_client.get(keys.LAYOUT) is None
    assert redis_client.hget(CHECKPOINT, "phase") == b"keys"
    assert not redis_client.exists(LOCK)  # released: the next start takes over at once
    assert "1 server(s) of the previous release still use this Redis (old-host:1)" in caplog.text

    report = ensure_layout(redis_client, batch=4)
    assert report is not None and report.resumed and report.in_place
    assert counts(report) == EXPECTED
    assert report.unknown_keys == ["nba:custom:thing"]
    assert redis_client.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
    assert not redis_client.exists(CHECKPOINT, Legacy.OUTCOME_STREAM, Legacy.PENDING_OUTCOMES)
    assert sorted(d for _, _, d in stream_entries(redis_client)) == sorted(x.encode() for x in (D3, D4, D5))
    assert ensure_layout(redis_client) is None  # done: one GET


def test_a_redis_in_the_new_layout_or_new_is_left_alone(redis_client):
    assert ensure_layout(redis_client) is None  # a new deployment: marked, nothing moved
    assert redis_client.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()

    redis_client.flushdb()
    PolicyStore(redis_client).publish(read_policy_dir(SAMPLE_POLICIES), author="t")  # written by this release
    assert ensure_layout(redis_client) is None
    assert redis_client.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()

    redis_client.flushdb()
    redis_client.set(keys.LAYOUT, keys.LAYOUT_VERSION)
    redis_client.set(_customer("c1", "profile"), "left alone")  # an old name in a Redis marked as new
    before = snapshot(redis_client)
    assert ensure_layout(redis_client) is None
    assert snapshot(redis_client) == before


def test_servers_starting_together_migrate_once_and_wait_for_each_other(redis_url, redis_client):
    write_legacy(redis_client)
    results: list[Any] = []
    clients = [redis.Redis.from_url(redis_url) for _ in range(3)]

    def start(client: redis.Redis) -> None:
        results.append(ensure_layout(client, batch=2))

    threads = [threading.Thread(target=start, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:
        client.close()
    reports = [r for r in results if r is not None]
    assert len(results) == 3 and len(reports) == 1  # one migrated, the others waited for the layout
    assert counts(reports[0]) == EXPECTED
    assert redis_client.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()


def test_a_server_waiting_for_a_migration_that_does_not_finish_names_the_command(redis_client, caplog):
    write_legacy(redis_client)
    redis_client.set(LOCK, "other-host:42:abcd", px=60_000)  # another process migrates (and stays stuck)
    with pytest.raises(MigrationError) as failure:
        ensure_layout(redis_client, wait_seconds=0.3)
    message = str(failure.value)
    assert "other-host:42:abcd" in message and "nba store migrate" in message
    assert "waiting for other-host:42:abcd to finish migrating" in caplog.text
    assert redis_client.get(keys.LAYOUT) is None and redis_client.exists(Legacy.POLICY_SEQ)


def test_nba_learner_started_on_a_redis_of_the_previous_release_upgrades_it_and_learns_what_was_left(
    redis_url, redis_client, tmp_path
):
    write_legacy(redis_client)
    env = {**os.environ, "NBA_LOG_LEVEL": "INFO"}
    log = tmp_path / "learner.log"
    with log.open("wb") as out:
        learner = subprocess.Popen(
            [sys.executable, "-m", "nba_service.cli", "learner", "--redis-url", redis_url, "--snapshot-every", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
        try:
            models = ModelStore(redis_client)
            wait_until(lambda: max((v.updates for v in models.history()), default=0) >= 3 or learner.poll() is not None,
                       timeout=30,
                       what="the learner to learn the 3 unacknowledged outcomes")
            assert learner.poll() is None, log.read_text()
        finally:
            learner.send_signal(signal.SIGTERM)
            code = learner.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "migrating this Redis in place to key layout 2" in text
    assert "decisions: 4; pending outcomes: 1" in text
    assert redis_client.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
    assert max(v.updates for v in models.history()) == 3  # not the acknowledged entry


def test_as_the_nba_acl_user_a_new_redis_is_marked_and_an_old_one_refused_naming_what_to_do(other_redis):
    url, admin = other_redis("acl")
    line = next(ln for ln in (ROOT / "docs" / "security.md").read_text().splitlines()
                if ln.startswith("ACL SETUSER nba "))
    admin.execute_command(*line.replace(">CHANGE-ME", ">pw").replace(" reset on ", " reset resetchannels on ").split())
    nba_user = redis.Redis(unix_socket_path=url[len("unix://"):], username="nba", password="pw")
    try:
        assert ensure_layout(nba_user) is None  # a new deployment: only commands the user may send
        assert admin.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
        admin.flushdb()
        write_legacy(admin)
        with pytest.raises(MigrationError) as refused:
            ensure_layout(nba_user)
        assert "its user may not move keys" in str(refused.value)
        assert "RENAME, PTTL, PERSIST, ZSCAN, XPENDING" in str(refused.value)
        assert admin.get(keys.LAYOUT) is None and not admin.exists(LOCK)
        assert admin.exists(Legacy.POLICY_SEQ, _customer("c1", "profile")) == 2  # nothing moved
        report = ensure_layout(admin)  # an administrator then upgrades it (resuming the checkpoint left)
        assert report is not None and counts(report) == EXPECTED
    finally:
        nba_user.close()


# --- a copy to another Redis: `nba store migrate --from URL --to URL` -------------------------------------------------


def test_migrate_copies_to_another_redis_prints_counts_and_leaves_the_source(
    redis_url, redis_client, other_redis, capsys, tmp_path
):
    write_legacy(redis_client)
    source_before = snapshot(redis_client)
    target_url, target = other_redis("target")

    code, out, err = nba(capsys, "store", "migrate", "--from", redis_url, "--to", target_url, "--batch", "5",
                         "--json", str(tmp_path / "counts.json"))
    assert code == 0, err
    assert f"migrating {redis_url} -> {target_url}, to key layout {keys.LAYOUT_VERSION}" in out
    assert printed_counts(out) == {label: EXPECTED[name] for name, label in MigrationReport.COUNTS}
    assert "unknown keys (left where they are): nba:custom:thing" in out
    assert f"done: {target_url} holds key layout {keys.LAYOUT_VERSION} (the source is left as it was)" in out
    assert "warning: 1 server(s) of the previous release were running on the source (old-host:1)" in err
    assert snapshot(redis_client) == source_before
    written = json.loads((tmp_path / "counts.json").read_text())
    assert {name: written[name] for name in EXPECTED} == EXPECTED

    assert target.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
    assert target.get(keys.profile("c2")) == redis_client.get(_customer("c2", "profile"))
    assert target.hgetall(keys.decision(D3, keys.bucket_of("c2"))) == redis_client.hgetall(Legacy.decision(D3))
    assert 30 * 86400 < target.ttl(keys.decision(D3, keys.bucket_of("c2"))) <= 31 * 86400
    assert target.get(keys.POLICY_LIVE) == b"2" and target.get(keys.model_version(1)) is not None
    assert target.xlen(keys.CONSENT_AUDIT_LEGACY) == 1 and target.get(keys.PSEUDONYM_SECRET) == SECRET
    assert not target.exists(Legacy.SERVERS, "nba:server:old-host:1", Legacy.LEARNER_LOCK, "nba:custom:thing")
    assert sorted(stream_entries(target)) == sorted([
        (keys.bucket_of("c2"), b"1700000000001-0", D3.encode()),
        (keys.bucket_of("c3"), b"1700000000002-0", D4.encode()),
        (0, b"1700000000003-0", D5.encode()),  # its decision is gone
    ])

    # run again: the target holds nba data now, and is refused
    code, out, err = nba(capsys, "store", "migrate", "--from", redis_url, "--to", target_url)
    assert code == 1
    assert "the target already holds nba data (layout 2)" in err


def test_an_interrupted_copy_resumes_to_the_same_state_and_counts(redis_url, redis_client, other_redis, capsys):
    write_legacy(redis_client)
    reference_url, reference = other_redis("reference")
    assert nba(capsys, "store", "migrate", "--from", redis_url, "--to", reference_url, "--batch", "3")[0] == 0
    target_url, target = other_redis("target")
    checkpoints: list[dict[bytes, bytes]] = []

    def stop_at(phase: str, nth: int) -> Callable[[MigrationReport], None]:
        """Stop at the nth checkpoint of ``phase``, as if that checkpoint had not been written: the process died
        after the batch's writes and before its checkpoint, which is put back to the one before."""

        def progress(report: MigrationReport) -> None:
            checkpoints.append(target.hgetall(CHECKPOINT))
            if sum(c[b"phase"] == phase.encode() for c in checkpoints) == nth:
                target.delete(CHECKPOINT)
                target.hset(CHECKPOINT, mapping=checkpoints[-2])
                raise KeyboardInterrupt

        return progress

    # stopped during the key scan, then during the outcome stream (after 2 of its 4 entries, the first one learned)
    with pytest.raises(KeyboardInterrupt):
        migrate(redis_client, target, in_place=False, batch=3, progress=stop_at("keys", 3))
    assert target.hget(CHECKPOINT, "phase") == b"keys" and target.get(keys.LAYOUT) is None
    checkpoints.clear()
    with pytest.raises(KeyboardInterrupt):
        migrate(redis_client, target, in_place=False, batch=1, progress=stop_at("outcomes", 3))
    assert target.hget(CHECKPOINT, "phase") == b"outcomes"
    assert target.hget(CHECKPOINT, "position") == b"1700000000000-0"
    assert len(stream_entries(target)) == 1  # the second entry is copied; its checkpoint "was lost"

    code, out, err = nba(capsys, "store", "migrate", "--from", redis_url, "--to", target_url, "--batch", "3")
    assert code == 0, err
    assert "resuming the migration left unfinished (phase outcomes)" in err
    assert snapshot(target) == snapshot(reference)
    entries = stream_entries(target)
    assert len(entries) == len(set(entries)) == 3  # none copied twice
    assert printed_counts(out) == {label: EXPECTED[name] for name, label in MigrationReport.COUNTS}


def test_migrate_errors_name_the_url_without_its_password(redis_url, redis_client, other_redis, capsys):
    write_legacy(redis_client)
    code, _, err = nba(capsys, "store", "migrate", "--from", redis_url, "--to", "redis://nba:s3cret@127.0.0.1:1/0")
    assert code == 3
    assert "nba store migrate: --to redis://nba:***@127.0.0.1:1/0: cannot reach it" in err
    assert "s3cret" not in err
    code, _, err = nba(capsys, "store", "migrate", "--from", "http://nope", "--to", redis_url)
    assert code == 2 and err.startswith("nba store migrate: --from: ")
    assert nba(capsys, "store", "migrate", "--from", redis_url, "--batch", "0")[0] == 2

    # a target that holds nba data is refused, and left as it was
    target_url, target = other_redis("busy")
    target.set(keys.profile("someone"), "x")
    code, _, err = nba(capsys, "store", "migrate", "--from", redis_url, "--to", target_url)
    assert code == 1
    assert f"the target already holds nba data (e.g. {keys.profile('someone')})" in err
    assert sorted(target.scan_iter()) == [keys.profile("someone").encode()]


def test_store_layout_and_migrate_in_place_from_the_command(redis_url, redis_client, capsys):
    assert nba(capsys, "store", "layout", "--redis-url", redis_url)[1].startswith("no nba data yet")
    write_legacy(redis_client)
    assert "the key layout of a previous release" in nba(capsys, "store", "layout", "--redis-url", redis_url)[1]

    code, out, err = nba(capsys, "store", "migrate", "--redis-url", redis_url, "--batch", "4")  # no --to: in place
    assert code == 0, err
    assert f"migrating {redis_url}, in place" in out and "(the old names are gone)" in out
    assert printed_counts(out)["decisions"] == 4
    assert nba(capsys, "store", "layout", "--redis-url", redis_url)[1] == f"key layout {keys.LAYOUT_VERSION}\n"
    code, out, _ = nba(capsys, "store", "migrate", "--from", redis_url, "--to", redis_url)
    assert code == 0 and f"already holds key layout {keys.LAYOUT_VERSION}: nothing to migrate" in out


# --- into a Redis Cluster ---------------------------------------------------------------------------------------------


def test_migrate_into_a_redis_cluster_which_then_serves_the_old_state(
    redis_url, redis_client, redis_cluster: LocalCluster, capsys
):
    redis_cluster.flushall()
    cluster = sync_client(RedisTarget(url=redis_cluster.url, mode=RedisMode.CLUSTER))
    try:  # a server starting on an empty cluster marks it; one holding keys of the previous layout is refused
        assert ensure_layout(cluster) is None and cluster.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
        redis_cluster.flushall()
        cluster.set(_customer("c1", "profile"), "x")
        with pytest.raises(MigrationError, match="nba store migrate --from URL --to URL --to-mode cluster"):
            ensure_layout(cluster)
    finally:
        cluster.close()
    redis_cluster.flushall()

    write_legacy(redis_client)
    code, out, err = nba(capsys, "store", "migrate", "--from", redis_url, "--to", redis_cluster.url,
                         "--to-mode", "cluster", "--batch", "4")
    assert code == 0, err
    assert printed_counts(out) == {label: EXPECTED[name] for name, label in MigrationReport.COUNTS}
    cluster = sync_client(RedisTarget(url=redis_cluster.url, mode=RedisMode.CLUSTER))
    try:
        assert isinstance(cluster, RedisCluster)
        assert cluster.get(keys.LAYOUT) == keys.LAYOUT_VERSION.encode()
        assert len(stream_entries(cluster)) == 3
        assert ensure_layout(cluster) is None
        server = ServerThread(Settings(redis_url=redis_cluster.url, redis_mode="cluster", port=0, metrics_port=-1,
                                       learner="off", policy_check_seconds=0.2))
        try:
            view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c1"), timeout=5)
            assert [d.decision_id for d in view.recent_decisions] == [D1, D2]
            assert view.policy_version.endswith("2")
            reply = server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=D1, outcome=pb.OUTCOME_KIND_DECLINED),
                                              timeout=5)
            assert reply.learned
            assert len(cluster.xrange(keys.outcome_stream(keys.bucket_of("c1")))) == 1
        finally:
            server.stop()
    finally:
        cluster.close()
        redis_cluster.flushall()
