"""A running server picks up published and rolled-back versions, and refuses a broken one."""

from __future__ import annotations


from nba_service.policies.parser import read_policy_dir
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, wait_until


def _wait_for_version(server, version: str, timeout: float = 5.0) -> float:
    return wait_until(lambda: server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == version,
                      timeout, f"version {version} to reach the server")


def test_publish_and_rollback_reach_a_running_server(server, redis_client):
    store = PolicyStore(redis_client)
    files = read_policy_dir(SAMPLE_POLICIES)
    assert server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == "1"

    store.publish(files, message="second")
    assert _wait_for_version(server, "2") < 1.0
    store.rollback()
    assert _wait_for_version(server, "1") < 1.0


def test_a_version_the_server_cannot_compile_is_refused_and_the_last_good_one_kept(server, redis_client):
    store = PolicyStore(redis_client)
    files = read_policy_dir(SAMPLE_POLICIES)
    broken = dict(files, **{"bank.yaml": files["bank.yaml"].replace("prior: 0.12", "prior: 12", 1)})
    store.publish(broken, message="written around the validator")  # as a replica of an older release might see

    wait_until(lambda: server.dataplane._refused_version == 2, 5, "the server to look at the broken version")
    assert server.stub.Decide(atm_decline("c1"), timeout=5).policy_version == "1"
    failures = server.server.metrics.policy_reloads.labels("failed")._value.get()
    assert failures == 1

    store.publish(files, message="fixed")
    _wait_for_version(server, "3")
    assert server.server.metrics.policy_reloads.labels("failed")._value.get() == 1  # reported once


def test_an_unreadable_model_version_is_refused_and_the_watcher_keeps_working(server, redis_client):
    from nba_service.store.model_store import ModelStore

    ModelStore(redis_client).publish(b"\x80\x04garbage", updates=0, source="a different release")
    wait_until(lambda: server.dataplane._refused_model == 1, 5, "the server to look at the unreadable model")
    assert server.stub.Decide(atm_decline("c1"), timeout=5).model_version == "prior"

    PolicyStore(redis_client).publish(read_policy_dir(SAMPLE_POLICIES), message="after the bad model")
    assert _wait_for_version(server, "2") < 1.0  # the watcher survived
