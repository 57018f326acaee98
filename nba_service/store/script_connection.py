"""One pipelined Redis connection for the decision path's Lua scripts.

Every decision costs two script calls (read the context, record the decision)
and every outcome one. Through redis-py's asyncio client each call spends
about 80 µs of CPU in connection-pool bookkeeping, command packing and reply
handling; this connection packs the ``EVALSHA`` command and parses replies with
``hiredis`` (in C; redis-py uses the same parser) and lets every request in
flight share the one socket, replies matched in order. It costs about half the
CPU per call (measured: 38 µs against 78 µs for a GET), and under load
concurrent requests share system calls. Calls carry no timer each: one
watchdog, armed while replies are awaited and checking every quarter of the
timeout, fails them when the oldest has waited longer than the timeout (so a
call fails between 1 and 1.25 times the timeout after it was sent).

Failures surface as redis-py's exceptions (``ConnectionError``, ``TimeoutError``,
``ResponseError``), so callers handle them as before; a lost or timed-out
connection is dropped at once, fails the calls in flight, and the next call
reconnects. AUTH (an ACL user's name and password) and SELECT come from the
URL; ``rediss://`` connects with TLS, verifying the server against the URL's
``ssl_ca_certs`` (or the system's CAs) and presenting ``ssl_certfile`` when
given, as redis-py's clients do with the same URL (:mod:`nba_service.store.urls`).

A Redis that answers ``READONLY``, ``LOADING`` or ``MASTERDOWN`` is not (or no
longer, or not yet) a primary that can run the script, and the script did not
run: the connection is dropped once the calls in flight on it have their
replies, and the call is sent once more on a new connection.
:class:`SentinelScriptConnection` finds the primary through Redis Sentinel at
every (re)connect, so after a failover that new connection reaches the new
primary; it stays one pipelined connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
import redis
from redis.asyncio.sentinel import Sentinel
from redis.connection import parse_url

from nba_service.store.urls import tls_context

__all__ = ["FAILOVER_REPLIES", "LuaScript", "ScriptConnection", "SentinelScriptConnection"]

FAILOVER_REPLIES = ("READONLY", "LOADING", "MASTERDOWN")
"""Error replies of a Redis that cannot run a script now because it is not a writable primary: a replica (a
primary demoted by a failover), a Redis still loading its data, a replica cut off from its primary. The script
did not run (a replica refuses its first write, and it holds only what the primary wrote), so sending it again
to the primary is safe, a write included."""


class LuaScript:
    """A script's source and SHA1, loaded into Redis on first use (and again after a restart).

    A script names its keys and arguments: ``keys`` and ``args`` list the names
    in the order they are sent, and a prelude generated from the same lists
    gives the script a table of each (``K.journey``, ``A.now``), so neither side
    counts positions. Every key a script touches is passed in KEYS; no script
    builds a key name.

    >>> script = LuaScript("return {K.profile, A.limit}", keys=("profile",), args=("limit",))
    >>> script.bind({"profile": "nba:c:{c1}:profile"}, {"limit": 5})
    (['nba:c:{c1}:profile'], [5])
    >>> script.bind({"profile": "p"}, {})
    Traceback (most recent call last):
    ...
    KeyError: "script arguments missing: ['limit']"
    """

    def __init__(self, body: str, *, keys: Sequence[str] = (), args: Sequence[str] = ()) -> None:
        self.key_names = tuple(keys)
        self.arg_names = tuple(args)
        prelude = [f"local K = {{{', '.join(f'{n} = KEYS[{i}]' for i, n in enumerate(keys, 1))}}}"] if keys else []
        if args:
            prelude.append(f"local A = {{{', '.join(f'{n} = ARGV[{i}]' for i, n in enumerate(args, 1))}}}")
        self.source = "\n".join([*prelude, body])
        self.sha = hashlib.sha1(self.source.encode()).hexdigest().encode()

    def bind(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV in the script's order, from values by name; every name must be given, no other."""
        if len(keys) != len(self.key_names) or len(args) != len(self.arg_names):
            missing = [n for n in self.key_names if n not in keys] + [n for n in self.arg_names if n not in args]
            unknown = [n for n in keys if n not in self.key_names] + [n for n in args if n not in self.arg_names]
            raise KeyError(
                f"script arguments missing: {missing}" if missing else f"unknown script arguments: {unknown}"
            )
        return [keys[n] for n in self.key_names], [args[n] for n in self.arg_names]


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, (int, float)):
        return repr(value).encode()
    raise redis.DataError(f"cannot send {type(value).__name__} to Redis")


def _command(*args: Any) -> bytes:
    try:
        return hiredis.pack_command(args)
    except TypeError:  # a bool, or something Redis cannot take: say which
        return _pack_slowly(args)


def _pack_slowly(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        """Calls awaiting a reply, oldest first, each with the monotonic time it was sent."""
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.retiring = False
        """No new call is sent on it: closed once the calls waiting on it have their replies."""
        self.timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while waiters:
            reply = self.reader.gets()
            if reply is False:
                return
            waiter = waiters.popleft()[0]
            if not waiter.done():
                waiter.set_result(reply)
        if self.retiring:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _fail(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(error)

    def retire(self) -> None:
        """Close the connection once every call waiting on it has its reply (at once if none waits)."""
        self.retiring = True
        if not self.waiters:
            self.abort()

    def abort(self, error: Exception | None = None) -> None:
        """Drop the connection now (unsent data too) and fail every call waiting on it."""
        if self.transport is not None:
            self.transport.abort()
        self._fail(error or redis.ConnectionError("connection to Redis closed"))

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if self.closed:  # lost before this call: nothing would ever answer or fail it
            waiter.set_exception(redis.ConnectionError("connection to Redis lost"))
            return waiter
        self.waiters.append((waiter, time.monotonic()))
        assert self.transport is not None
        self.transport.write(payload)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 4, self._check)
        return waiter

    def _check(self) -> None:
        """Every quarter of the timeout while calls wait: fail them all once the oldest is late."""
        self._watchdog = None
        if not self.waiters or self.closed:
            return
        if time.monotonic() - self.waiters[0][1] > self.timeout:
            # the reply may still come: the connection's order can no longer be trusted
            self.abort(redis.TimeoutError(f"Redis did not answer within {self.timeout:g} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout / 4, self._check)


class ScriptConnection:
    """``EVALSHA`` over one shared, pipelined connection, reconnected when lost."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self._options = parse_url(url)
        self._tls = url.startswith("rediss://")
        if self._tls:
            tls_context(self._options)  # a bad option or an unreadable file fails now, not at the first call
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            options = self._options
            host, port = ("", 0) if options.get("path") else await self._endpoint()
            try:
                if options.get("path"):
                    connect = loop.create_unix_connection(lambda: _Protocol(self.timeout), options["path"])
                else:
                    connect = loop.create_connection(
                        lambda: _Protocol(self.timeout),
                        host,
                        port,
                        # built at each connection: rotated certificate files are read again
                        ssl=tls_context(options) if self._tls else None,
                    )
                _, protocol = await asyncio.wait_for(connect, self.timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise redis.ConnectionError(f"cannot connect to Redis: {exc}") from exc
            setup = []
            if options.get("password"):
                setup.append(_command("AUTH", *(x for x in (options.get("username"), options["password"]) if x)))
            if options.get("db"):
                setup.append(_command("SELECT", options["db"]))
            try:
                for payload in setup:
                    reply = await protocol.send(payload)
                    if isinstance(reply, hiredis.ReplyError):
                        # a wrong user name or password: redis-py's AuthenticationError (a ConnectionError)
                        wrong = str(reply).startswith("WRONGPASS")
                        refused = redis.AuthenticationError if wrong else redis.ConnectionError
                        raise refused(f"Redis refused the connection set-up: {reply}")
            except redis.TimeoutError as exc:
                raise redis.ConnectionError("Redis did not answer the connection set-up in time") from exc
            except BaseException:  # refused, or the caller gave up: never leave the socket behind
                protocol.abort()
                raise
            self._protocol = protocol
            return protocol

    async def _endpoint(self) -> tuple[str, int]:
        """The host and port to connect to over TCP: the URL's (:class:`SentinelScriptConnection`: the primary's)."""
        return self._options.get("host", "localhost"), self._options.get("port", 6379)

    async def _call(self, payload: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed or protocol.retiring:
            protocol = await self._connect()
        reply = await protocol.send(payload)  # the protocol's watchdog fails it after the timeout
        if _failover(reply):  # not a writable primary (any more): the next call connects afresh
            if self._protocol is protocol:
                self._protocol = None
            protocol.retire()
        return reply

    async def _send(self, payload: bytes, retry: bool) -> Any:
        try:
            return await self._call(payload)
        except redis.ConnectionError:
            if not retry:
                raise
            return await self._call(payload)

    async def evalsha(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any], retry: bool = False) -> Any:
        """Run a script; ``retry`` runs it once more on a fresh connection after a connection error
        (only for scripts that write nothing: a write may have been applied before the loss).

        A reply of :data:`FAILOVER_REPLIES` (the script did not run) sends it once more on a new connection, a
        write too; a second one is a ConnectionError (a failover is under way: the primary is not known yet).
        """
        payload = _command(b"EVALSHA", script.sha, len(keys), *keys, *args)
        reply = await self._send(payload, retry)
        resent, loads = False, 0
        while isinstance(reply, hiredis.ReplyError):
            if _failover(reply) and not resent:
                resent = True
                reply = await self._send(payload, retry)
            elif str(reply).startswith("NOSCRIPT") and loads < 2:  # once per Redis: the resent call's may lack it
                loads += 1
                loaded = await self._call(_command(b"SCRIPT", b"LOAD", script.source))
                if isinstance(loaded, hiredis.ReplyError):
                    raise (redis.ConnectionError if _failover(loaded) else redis.ResponseError)(str(loaded))
                reply = await self._call(payload)
            else:
                break
        if _failover(reply):
            raise redis.ConnectionError(f"Redis cannot run the script, it is not a writable primary now: {reply}")
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    async def run(
        self, script: LuaScript, keys: Mapping[str, Any], args: Mapping[str, Any], retry: bool = False
    ) -> Any:
        """Run a script with its keys and arguments by name (see :class:`LuaScript`)."""
        key_values, arg_values = script.bind(keys, args)
        return await self.evalsha(script, key_values, arg_values, retry)

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.abort()


class SentinelScriptConnection(ScriptConnection):
    """:class:`ScriptConnection` to the primary Redis Sentinel names ``service_name``, asked at every (re)connect.

    ``url`` gives the primary's user, password, database and TLS options (its host is not used);
    ``sentinel_options`` are the connection arguments of the sentinels (redis-py's ``sentinel_kwargs``: their
    own credentials, TLS, timeouts). While the sentinels name no primary (a failover under way, the old primary
    marked down) a call fails at once with a ConnectionError (redis-py's ``MasterNotFoundError``); a lost
    connection or a :data:`FAILOVER_REPLIES` reply makes the next call ask the sentinels again.
    """

    def __init__(
        self,
        url: str,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        sentinel_options: Mapping[str, Any] | None = None,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(url, timeout)
        self.sentinels = tuple(sentinels)
        self.service_name = service_name
        self._sentinel_options = dict(sentinel_options or {})
        self._sentinel: Sentinel | None = None
        self.primary: tuple[str, int] | None = None
        """The primary's address the sentinels gave last."""

    async def _endpoint(self) -> tuple[str, int]:
        if self._sentinel is None:  # created on the event loop that uses it
            self._sentinel = Sentinel(self.sentinels, sentinel_kwargs=self._sentinel_options)
        try:
            host, port = await asyncio.wait_for(self._sentinel.discover_master(self.service_name), self.timeout)
        except TimeoutError as exc:
            raise redis.ConnectionError(
                f"the sentinels did not name the primary of {self.service_name!r} within {self.timeout:g} s"
            ) from exc
        self.primary = (str(host), int(port))
        return self.primary

    async def aclose(self) -> None:
        await super().aclose()
        sentinel, self._sentinel = self._sentinel, None
        for client in sentinel.sentinels if sentinel is not None else ():
            with contextlib.suppress(redis.RedisError, OSError):
                await client.aclose()


def _failover(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(FAILOVER_REPLIES)
