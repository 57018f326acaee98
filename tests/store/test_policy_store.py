"""Publishing policy versions on the real Redis: versions numbered in one transaction with the live pointer."""

from __future__ import annotations

import threading

import pytest
import redis

from nba_service.domain.enums import RedisMode
from nba_service.policies.parser import read_policy_dir
from nba_service.store.connect import RedisTarget, sync_client
from nba_service.store.policy_store import PolicyConflict, PolicyStore
from tests.conftest import SAMPLE_POLICIES, TEST_REDIS_MODE


def _files() -> dict[str, str]:
    return read_policy_dir(SAMPLE_POLICIES)


def test_a_publish_against_a_version_no_longer_live_writes_nothing(redis_client: redis.Redis):
    store = PolicyStore(redis_client)
    files = _files()
    assert store.publish(files, author="ana", message="first") == 1
    assert store.publish(files, author="bob", message="meanwhile") == 2

    with pytest.raises(PolicyConflict, match="policy version 2 is live, not 1"):
        store.publish(files, author="ana", message="on top of 1", expect_live=1)

    assert store.live() == 2 and [p.version for p in store.history()] == [1, 2]
    assert store.publish(files, author="ana", message="on top of 2", expect_live=2) == 3  # the next number
    assert [c.message for c in store.changes()] == ["first", "meanwhile", "on top of 2"]


def test_publishes_at_once_get_one_version_each_and_one_against_the_same_live_one_goes_live(
    redis_url: str, redis_client: redis.Redis
):
    store = PolicyStore(redis_client)
    files = _files()
    store.publish(files, message="base")
    results: dict[str, list[object]] = {"free": [], "expect": []}
    start = threading.Barrier(8)

    def publish(kind: str, n: int) -> None:
        client = sync_client(RedisTarget(url=redis_url, mode=RedisMode(TEST_REDIS_MODE)))  # as another process
        try:
            start.wait(timeout=30)
            try:
                expect = 1 if kind == "expect" else None
                results[kind].append(PolicyStore(client).publish(files, message=f"{kind}{n}", expect_live=expect))
            except PolicyConflict as exc:
                results[kind].append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=publish, args=(kind, n)) for kind in ("free", "expect") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    free = [v for v in results["free"] if isinstance(v, int)]
    against_one = [v for v in results["expect"] if isinstance(v, int)]
    assert len(free) == 4  # publishes without an expectation all go through
    assert len(against_one) <= 1  # of those made against version 1, one at most (none if a free one came first)
    assert sorted(free + against_one) == list(range(2, 2 + len(free) + len(against_one)))  # no number twice, none lost
    assert [p.version for p in store.history()] == list(range(1, 2 + len(free) + len(against_one)))
