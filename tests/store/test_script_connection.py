"""The decision path's script connection against a real Redis."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import redis

from nba_service.store.script_connection import LuaScript, ScriptConnection

pytestmark = pytest.mark.standalone_only  # the single-node script connection (the cluster's: tests/store/test_cluster.py)

ECHO = LuaScript("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
FAIL = LuaScript("return redis.error_reply('no such thing')")


def test_calls_load_scripts_pipeline_and_report_errors(redis_url, redis_client):
    async def run():
        connection = ScriptConnection(redis_url)
        try:
            first = await connection.evalsha(ECHO, ["k"], ["v", 41])  # NOSCRIPT: loaded, then run
            redis_client.script_flush()  # e.g. Redis restarted: loaded again on the next call
            concurrent = await asyncio.gather(*(connection.evalsha(ECHO, [f"k{i}"], ["v", i]) for i in range(50)))
            with pytest.raises(redis.ResponseError, match="no such thing"):
                await connection.evalsha(FAIL, [], [])
            after_error = await connection.evalsha(ECHO, ["k"], ["v", 1])
            return first, concurrent, after_error
        finally:
            await connection.aclose()

    first, concurrent, after_error = asyncio.run(run())
    assert first == [b"k", b"v", 42]
    assert concurrent == [[f"k{i}".encode(), b"v", i + 1] for i in range(50)]  # replies matched in order
    assert after_error == [b"k", b"v", 2]


def test_an_unreachable_redis_is_a_connection_error():
    async def run():
        connection = ScriptConnection("redis://127.0.0.1:1/0", timeout=1.0)
        with pytest.raises(redis.ConnectionError):
            await connection.evalsha(ECHO, ["k"], ["v", 1])

    asyncio.run(run())


def test_a_timed_out_call_drops_the_connection_and_the_next_call_reconnects(redis_url, redis_client):
    slow = LuaScript("local t = redis.call('TIME') local s = tonumber(t[1]) + 1 "
                     "repeat t = redis.call('TIME') until tonumber(t[1]) > s return 1")

    async def run():
        connection = ScriptConnection(redis_url, timeout=0.3)
        try:
            await connection.evalsha(ECHO, ["k"], ["v", 0])
            first = connection._protocol
            with pytest.raises(redis.TimeoutError):
                await connection.evalsha(slow, [], [])
            assert first.closed  # dropped at once: its replies can no longer be matched
            connection.timeout = 10.0  # Redis finishes the slow script, then answers on a new connection
            return await connection.evalsha(ECHO, ["k"], ["v", 1]), connection._protocol is not first
        finally:
            await connection.aclose()

    assert asyncio.run(run()) == ([b"k", b"v", 2], True)


def test_a_password_in_the_url_is_sent(redis_url, redis_client):
    redis_client.config_set("requirepass", "s3cr%t")
    try:
        async def run(url):
            connection = ScriptConnection(url)
            try:
                return await connection.evalsha(ECHO, ["k"], ["v", 1])
            finally:
                await connection.aclose()

        base = redis_url.split("?")[0]
        with pytest.raises(redis.ConnectionError, match="refused the connection set-up"):
            asyncio.run(run(base + "?password=wrong"))
        assert asyncio.run(run(base + "?password=s3cr%25t")) == [b"k", b"v", 2]
    finally:
        redis.Redis.from_url(redis_url, password="s3cr%t").config_set("requirepass", "")


def test_a_call_on_a_connection_already_lost_fails_at_once():
    from nba_service.store.script_connection import _Protocol

    async def run():
        protocol = _Protocol(timeout=30.0)
        protocol.connection_lost(ConnectionResetError("reset by peer"))
        return protocol.send(b"*1\r\n$4\r\nPING\r\n")

    async def main():
        waiter = await run()
        assert waiter.done()  # failed now, not after a timeout (there is no watchdog for it)
        with pytest.raises(redis.ConnectionError):
            await waiter

    asyncio.run(main())


def test_a_peer_that_drops_every_connection_fails_each_call_never_hangs():
    """A load balancer or proxy in front of Redis that closes connections as soon as they open:
    with AUTH to send first, each call fails with a connection error and none waits forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def drop_every_connection() -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            peer.close()

    dropper = threading.Thread(target=drop_every_connection, daemon=True)
    dropper.start()

    async def run():
        connection = ScriptConnection(f"redis://:secret@127.0.0.1:{port}/0", timeout=0.3)
        outcomes = []
        try:
            for _ in range(30):
                try:
                    await asyncio.wait_for(connection.evalsha(ECHO, ["k"], ["v", 1]), 5.0)  # a bound, not a wait
                    outcomes.append("answered")
                except redis.ConnectionError:
                    outcomes.append("connection error")
                except TimeoutError:
                    outcomes.append("hung")
        finally:
            await connection.aclose()
        return outcomes

    try:
        assert set(asyncio.run(run())) == {"connection error"}
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        listener.close()
        dropper.join(timeout=5)
        assert not dropper.is_alive()
