"""A running replica refuses versions written into Redis behind validation's back, cheaply, and keeps
serving the last good one; a rule that would build a big value at run time only fails its offer."""

from __future__ import annotations

import json

import redis

from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, profile, wait_until

ATTACK_OFFER = """
  - id: attack
    name: Attack
    category: lending
    events: [atm_decline]
    eligible_when: "{rule}"
    value: 1000
    prior: 0.5
    channels: [push, atm_screen]
    content: {{default: "attack"}}
"""


def _write_raw(client: redis.Redis, files_json: str) -> int:
    """A version as a script or an older release could write it: no validation, no PolicyStore."""
    version = int(client.incr(keys.POLICY_SEQ))
    client.hset(keys.policy_version(version), mapping={
        "files": files_json, "author": "raw", "message": "behind validation's back", "published_at": "0",
        "digest": ""})
    client.rpush(keys.POLICY_VERSIONS, version)
    client.set(keys.POLICY_LIVE, version)
    client.publish(keys.POLICY_CHANNEL, str(version))
    return version


def _refused(server, version: int, failures: float) -> None:
    wait_until(lambda: server.dataplane._refused_version == version, 10, f"the server to refuse version {version}")
    assert server.server.metrics.policy_reloads.labels("failed")._value.get() == failures  # reported once
    response = server.stub.Decide(atm_decline("c1"), timeout=5)
    assert response.policy_version == "1"  # still the last good version


def test_versions_behind_validations_back_are_refused_and_the_last_good_one_served(server, redis_client, caplog):
    assert server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == "1"
    good = read_policy_dir(SAMPLE_POLICIES)

    # 50 MB written straight into Redis: refused from its size, never decoded or parsed
    huge = _write_raw(redis_client, json.dumps({**good, "huge.yaml": "# padding\n" * 5_000_000}))
    _refused(server, huge, 1)
    assert any(f"policy version {huge} takes 52.5 MiB in Redis" in r.getMessage() and "not decoded" in r.getMessage()
               for r in caplog.records)

    # a rule that would build a 200 MB string per request, published with PolicyStore (which trusts its caller)
    attack = "offers:" + ATTACK_OFFER.format(rule="'x'*200000000 != ''")  # a file of its own: bank.yaml ends in reasons
    exploding = PolicyStore(redis_client).publish({**good, "attack.yaml": attack}, message="around the validator")
    _refused(server, exploding, 2)

    # a billion laughs, and whatever is not a JSON object of texts
    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    _refused(server, PolicyStore(redis_client).publish({**good, "laughs.yaml": laughs}), 3)
    _refused(server, _write_raw(redis_client, json.dumps(["not", "files"])), 4)

    # the replica still takes a good version after all that
    fixed = PolicyStore(redis_client).publish(good, message="fixed")
    wait_until(lambda: server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == str(fixed), 10,
               "the good version to be served")


def test_repeating_an_attribute_at_run_time_fails_only_that_offer(server, redis_client):
    good = read_policy_dir(SAMPLE_POLICIES)
    attack = "offers:" + ATTACK_OFFER.format(rule="(attr('tier') or 'x') * 200000000 > 1")
    version = PolicyStore(redis_client).publish({**good, "attack.yaml": attack}, message="valid: guarded at run time")
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c7", tier="gold")), timeout=5)
    wait_until(lambda: server.stub.Decide(atm_decline("c7"), timeout=5).policy_version == str(version), 10,
               "the version to be served")

    response = server.stub.Decide(atm_decline("c7"), timeout=5)

    assert response.action.offer_id != "attack"
    (reason,) = [r for r in response.reasons if r.offer_id == "attack"]
    assert reason.code == "rule_error"
    assert "'*' needs two numbers, got str and int" in reason.detail
