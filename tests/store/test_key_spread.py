"""Keys spread over every primary of a Redis Cluster (issue 13), and no script crosses slots.

On the session's 3-primary cluster (the ``redis_cluster`` fixture), a real server in cluster mode makes 10,000
decisions for 5,000 customers (the sample policies: contact limits, and the ``micro_loan`` budget reserved on
its own slot before each decision that sends it is written). Every primary then holds between 20% and 45% of the
keys (``DBSIZE``), every call succeeded, and the server counted no Redis error: a script whose keys were in two
slots would have failed with CROSSSLOT.
"""

from __future__ import annotations

import concurrent.futures

import pytest
from redis.cluster import RedisCluster

from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, daytime_zone, profile

CUSTOMERS = 5000
DECISIONS = 10_000
THREADS = 16


def _errors(registry, name: str) -> float:
    """The sum of a counter's samples over all its labels (0 when none was ever counted)."""
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if sample.name == f"{name}_total"
    )


@pytest.mark.standalone_only  # it uses the session cluster in either run of the suite: once is enough
def test_keys_spread_over_every_primary_and_no_script_crosses_slots(redis_cluster, start_server):
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        PolicyStore(client).publish(read_policy_dir(SAMPLE_POLICIES), author="tests", message="key spread")
    finally:
        client.close()
    server = start_server(redis_url=redis_cluster.url, redis_mode="cluster")
    zone = daytime_zone()
    customers = [f"spread-{i}" for i in range(CUSTOMERS)]

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        upserts = list(pool.map(
            lambda cid: server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(cid, timezone=zone)),
                                                   timeout=30),
            customers))
        responses = list(pool.map(lambda i: server.stub.Decide(atm_decline(customers[i % CUSTOMERS]), timeout=30),
                                  range(DECISIONS)))

    assert len(upserts) == CUSTOMERS
    assert len(responses) == DECISIONS and all(r.decision_id for r in responses)
    assert sum(r.action.offer_id == "micro_loan" for r in responses) > 0  # budgeted: reserved on its own slot
    assert len({keys.bucket_of(c) for c in customers}) == keys.BUCKETS
    registry = server.server.metrics.registry
    assert _errors(registry, "nba_redis_errors") == 0
    assert _errors(registry, "nba_redis_node_errors") == 0
    sizes = {}
    for node in redis_cluster.primary_nodes:
        with redis_cluster.client(node.port) as node_client:
            sizes[node.name] = int(node_client.dbsize())
    total = sum(sizes.values())
    assert total > 3 * CUSTOMERS  # profiles, journeys, contacts, decisions, ...
    shares = {name: size / total for name, size in sizes.items()}
    assert all(0.20 <= share <= 0.45 for share in shares.values()), shares
