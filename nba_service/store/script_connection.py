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
primary; it stays one pipelined connection. :class:`ClusterScriptConnection`
keeps one such connection per primary of a Redis Cluster and sends each call
to the primary serving its keys' slot, following the cluster's redirects
(``MOVED``, ``ASK``, ``TRYAGAIN``) while slots move.

Every connection can report its redirects and errors, by node, to an
``on_event(kind, node)`` callback (the server counts them in
``nba_redis_redirects_total`` and ``nba_redis_node_errors_total``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import hiredis
import redis
from redis.asyncio.sentinel import Sentinel
from redis.connection import parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from nba_service.store.urls import redacted_url, tls_context

__all__ = [
    "EVENT_KINDS",
    "FAILOVER_REPLIES",
    "ClusterScriptConnection",
    "EventCallback",
    "LuaScript",
    "ScriptConnection",
    "SentinelScriptConnection",
    "gather_replies",
]

EventCallback = Callable[[str, str], None]
"""``on_event(kind, node)``: told of every redirect and error of a script connection, ``node`` being the Redis
(``host:port``, or the unix socket's path) that redirected or failed; ``kind`` is one of :data:`EVENT_KINDS`."""
EVENT_KINDS = ("moved", "ask", "tryagain", "connection", "timeout", "response", "clusterdown")
"""Redirects (Redis Cluster: ``moved`` the slot lives on another node now, ``ask`` it is being migrated, send this
call there, ``tryagain`` its keys are split by a migration under way) and errors (``connection`` lost or refused,
``timeout`` no reply in time, ``response`` an error reply, ``clusterdown`` the cluster cannot serve the slot)."""
REDIRECT_KINDS = frozenset(EVENT_KINDS[:3])

MAX_REDIRECTS = 5
"""MOVED and ASK replies followed for one call before it fails (one or two in a migration, more only while
the nodes disagree on who serves a slot)."""
TRYAGAIN_ATTEMPTS = 50
"""TRYAGAIN replies (a multi-key script whose keys a slot migration has split between two nodes) one call waits
out, with a backoff doubling from :data:`TRYAGAIN_BACKOFF_SECONDS` up to 50 ms: about 2.3 s in all, as long as
a migration moving keys in batches keeps one script's keys apart (a caller's deadline usually ends it first)."""
TRYAGAIN_BACKOFF_SECONDS = 0.002

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

    def send_many(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        """Send commands packed together in one write (``ASKING`` and the call it is for: nothing can come
        between them): one future per reply, in order."""
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(replies)]
        if self.closed:
            for waiter in waiters:
                waiter.set_exception(redis.ConnectionError("connection to Redis lost"))
            return waiters
        sent = time.monotonic()
        self.waiters.extend((waiter, sent) for waiter in waiters)
        assert self.transport is not None
        self.transport.write(payload)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 4, self._check)
        return waiters

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

    def __init__(self, url: str, timeout: float = 2.0, *, on_event: EventCallback | None = None) -> None:
        self._options = parse_url(url)
        self._tls = url.startswith("rediss://")
        if self._tls:
            tls_context(self._options)  # a bad option or an unreadable file fails now, not at the first call
        self.timeout = timeout
        self._on_event = on_event
        self.node = self._options.get("path") or ""
        """The Redis connected to last, as ``host:port`` (or the unix socket's path): the ``node`` of events."""
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            if not self._options.get("path"):
                host, port = await self._endpoint()
                self.node = _node_name(host, port)
                self._protocol = await self._open(host, port)
            else:
                self._protocol = await self._open("", 0)
            return self._protocol

    async def _open(self, host: str, port: int) -> _Protocol:
        """A new connection to ``host``:``port`` (to the URL's unix socket when it names one), set up as the
        URL says: AUTH as its user, SELECT its database (never sent for database 0), TLS for ``rediss://``."""
        loop = asyncio.get_running_loop()
        options = self._options
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
        return protocol

    def _event(self, kind: str, node: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, node)

    async def _endpoint(self) -> tuple[str, int]:
        """The host and port to connect to over TCP: the URL's (:class:`SentinelScriptConnection`: the primary's)."""
        return self._options.get("host", "localhost"), self._options.get("port", 6379)

    async def _call(self, payload: bytes) -> Any:
        protocol = self._protocol
        try:
            if protocol is None or protocol.closed or protocol.retiring:
                protocol = await self._connect()
            reply = await protocol.send(payload)  # the protocol's watchdog fails it after the timeout
        except redis.TimeoutError:
            self._event("timeout", self.node)
            raise
        except redis.ConnectionError:
            self._event("connection", self.node)
            raise
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
                    self._event("response", self.node)
                    raise (redis.ConnectionError if _failover(loaded) else redis.ResponseError)(str(loaded))
                reply = await self._call(payload)
            else:
                break
        if isinstance(reply, hiredis.ReplyError):
            self._event("response", self.node)
            if _failover(reply):
                raise redis.ConnectionError(f"Redis cannot run the script, it is not a writable primary now: {reply}")
            raise redis.ResponseError(str(reply))
        return reply

    async def run(
        self, script: LuaScript, keys: Mapping[str, Any], args: Mapping[str, Any], retry: bool = False
    ) -> Any:
        """Run a script with its keys and arguments by name (see :class:`LuaScript`)."""
        key_values, arg_values = script.bind(keys, args)
        return await self.evalsha(script, key_values, arg_values, retry)

    async def evalsha_many(
        self,
        script: LuaScript,
        calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
        retry: bool = False,
        *,
        return_errors: bool = False,
    ) -> list[Any]:
        """Run a script once per ``(keys, args)`` of ``calls``: every call packed in one write on the
        connection, the replies in order (a campaign batch: no future or task per call). A call answered
        ``NOSCRIPT`` or :data:`FAILOVER_REPLIES` (it did not run) is sent again alone by :meth:`evalsha`;
        another error reply fails the whole (``ResponseError``), or with ``return_errors`` is that call's reply
        (a ``ResponseError``, not raised: the other calls ran and their replies are kept). A lost connection or
        a timeout raises either way (no call's outcome is known). ``retry``: as for :meth:`evalsha` (reads)."""
        if not calls:
            return []
        sha = script.sha
        payload = b"".join(_command(b"EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls)
        try:
            replies = await self._send_many(payload, len(calls))
        except redis.ConnectionError:
            if not retry:
                raise
            replies = await self._send_many(payload, len(calls))
        out = list(replies)
        for i, reply in enumerate(out):
            if not isinstance(reply, hiredis.ReplyError):
                continue
            if _failover(reply) or str(reply).startswith("NOSCRIPT"):
                try:
                    out[i] = await self.evalsha(script, *calls[i], retry)
                except redis.ResponseError as exc:
                    if not return_errors:
                        raise
                    out[i] = exc
                continue
            self._event("response", self.node)
            if not return_errors:
                raise redis.ResponseError(str(reply))
            out[i] = redis.ResponseError(str(reply))
        return out

    async def command_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Plain commands (not scripts) packed in one write, their replies in order; an error reply is returned
        as a ``ResponseError`` (not raised). One connection: not for a cluster (see :class:`ClusterScriptConnection`).
        """
        if not commands:
            return []
        replies = await self._send_many(b"".join(_command(*command) for command in commands), len(commands))
        return [redis.ResponseError(str(r)) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def _send_many(self, payload: bytes, replies: int) -> list[Any]:
        protocol = self._protocol
        try:
            if protocol is None or protocol.closed or protocol.retiring:
                protocol = await self._connect()
            waiters = protocol.send_many(payload, replies)
            try:
                await waiters[-1]  # replies come in order: the last one done, every one is
            finally:
                for waiter in waiters:  # failed together: each failure retrieved (no "never retrieved" log)
                    if waiter.done() and not waiter.cancelled():
                        waiter.exception()
            return [waiter.result() for waiter in waiters]
        except redis.TimeoutError:
            self._event("timeout", self.node)
            raise
        except redis.ConnectionError:
            self._event("connection", self.node)
            raise

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
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(url, timeout, on_event=on_event)
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


class ClusterScriptConnection(ScriptConnection):
    """:class:`ScriptConnection` to a Redis Cluster: one pipelined connection per primary, each call sent to
    the primary serving the slot of its first key (a script's keys all share one slot).

    ``url`` names any node of the cluster, and gives the user, password and TLS of every node (database 0:
    a cluster has no other); ``seeds`` are more nodes to discover the cluster from. The slot map is read with
    ``CLUSTER SLOTS`` at the first call and again after a redirect or a lost connection (in the background:
    the calls in flight do not wait for it). In the steady state a call is one round trip, as in the other
    modes. Replies of a cluster whose slots move (none of them ran the script, so a write is sent again too):

    - ``MOVED``: the slot lives on another node now; the map is updated for it and the call sent there;
    - ``ASK``: the slot is being migrated and this call's keys are on the target: ``ASKING`` and the call are
      sent to the target together, back to back (two replies, one round trip), and the map is not changed;
    - ``TRYAGAIN``: the migration has split the call's keys between the two nodes: sent again to the slot's
      node after a short backoff, at most :data:`TRYAGAIN_ATTEMPTS` times;
    - ``CLUSTERDOWN`` (or a slot no node serves): a ConnectionError, as for a Redis that cannot be reached;
    - ``NOSCRIPT``: the script is loaded on that node and the call sent again.

    A lost node connection fails the calls in flight on it (a ConnectionError: ``retry`` sends a read once
    more, to the slot's node as the cluster then names it), and the next call to that node reconnects.
    ``on_event`` hears of every redirect and error with the node's ``host:port``.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        *,
        seeds: Sequence[tuple[str, int]] = (),
        on_event: EventCallback | None = None,
    ) -> None:
        super().__init__(url, timeout, on_event=on_event)
        if self._options.get("path"):
            raise ValueError(f"{redacted_url(url)}: Redis Cluster needs the redis:// or rediss:// URL of a node")
        if self._options.get("db"):
            raise ValueError(f"{redacted_url(url)}: Redis Cluster has database 0 only, the URL selects another")
        first = (str(self._options.get("host") or "localhost"), int(self._options.get("port") or 6379))
        self.seeds = tuple(dict.fromkeys([first, *((str(host), int(port)) for host, port in seeds)]))
        self._slots: list[str] = []
        """The name (``host:port``) of the primary serving each slot ("" for none); empty until discovered."""
        self._addresses: dict[str, tuple[str, int]] = {_node_name(*seed): seed for seed in self.seeds}
        self._protocols: dict[str, _Protocol] = {}
        self._node_locks: dict[str, asyncio.Lock] = {}
        self._discovering: asyncio.Lock | None = None
        self._refresh: asyncio.Task[None] | None = None
        self.discoveries = 0
        """How many times the slot map was read from the cluster."""

    def node_for(self, key: Any) -> str:
        """The primary serving ``key``'s slot as the map says now ("" before the first call)."""
        return self._slots[key_slot(_encode(key))] if self._slots else ""

    async def evalsha(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any], retry: bool = False) -> Any:
        """Run a script on the primary of its first key's slot (see the class's doc for what is sent again)."""
        payload = _command(b"EVALSHA", script.sha, len(keys), *keys, *args)
        slot = key_slot(_encode(keys[0])) if keys else 0
        node = await self._owner(slot)
        asking = retried = resent = False
        hops = tryagains = loads = 0
        while True:
            try:
                reply = await self._call_node(node, payload, asking)
            except redis.ConnectionError:
                self._schedule_refresh()  # a failover may have moved the slot
                if not retry or retried:
                    raise
                retried = True
                await self._refreshed()
                node, asking = await self._owner(slot), False
                continue
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            error = str(reply)
            kind = error.split(" ", 1)[0]
            if kind in ("MOVED", "ASK"):
                self._event(kind.lower(), node)
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise redis.ConnectionError(f"Redis Cluster redirected the call {hops} times, last: {error}")
                target = self._redirect_target(error, node)
                if kind == "MOVED":
                    self._slots[slot] = target
                    self._schedule_refresh(first=target)
                node, asking = target, kind == "ASK"
            elif kind == "TRYAGAIN":
                self._event("tryagain", node)
                tryagains += 1
                if tryagains > TRYAGAIN_ATTEMPTS:
                    raise redis.ConnectionError(f"a migration of slot {slot} kept the script's keys split: {error}")
                await asyncio.sleep(min(TRYAGAIN_BACKOFF_SECONDS * 2 ** (tryagains - 1), 0.05))
                node, asking, hops = await self._owner(slot), False, 0  # from the slot's node again: ASK again
            elif kind == "NOSCRIPT" and loads < 2:  # once per node: a redirected call's node may lack it too
                loads += 1
                loaded = await self._call_node(node, _command(b"SCRIPT", b"LOAD", script.source), False)
                if isinstance(loaded, hiredis.ReplyError):
                    self._event("response", node)
                    raise (redis.ConnectionError if _failover(loaded) else redis.ResponseError)(str(loaded))
            elif _failover(reply) and not resent:  # not a writable primary (any more): ask the cluster again
                resent = True
                self._drop(node)
                self._schedule_refresh()
                await self._refreshed()
                node, asking = await self._owner(slot), False
            elif kind == "CLUSTERDOWN":
                self._event("clusterdown", node)
                raise redis.ConnectionError(f"Redis Cluster cannot serve slot {slot}: {error}")
            else:
                self._event("response", node)
                if _failover(reply):
                    raise redis.ConnectionError(f"Redis cannot run the script, it is not a writable primary: {error}")
                raise redis.ResponseError(error)

    async def evalsha_many(
        self,
        script: LuaScript,
        calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
        retry: bool = False,
        *,
        return_errors: bool = False,
    ) -> list[Any]:
        """Each call on its slot's primary (:meth:`evalsha`, with its redirects), all in flight at once. An
        error reply fails the whole (``ResponseError``), or with ``return_errors`` is that call's reply; a
        ``ConnectionError`` or ``TimeoutError`` (a node lost, the cluster down, redirects without end) raises
        either way, as on one Redis."""
        calls_made = (self.evalsha(script, keys, args, retry) for keys, args in calls)
        return await gather_replies(calls_made, return_errors=return_errors)

    async def command_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Not on a cluster: its commands' keys are on many nodes (use redis-py's cluster pipeline)."""
        raise NotImplementedError("command_many needs one Redis: a cluster's client pipelines by slot")

    async def _call_node(self, node: str, payload: bytes, asking: bool) -> Any:
        """One command (after ``ASKING`` with ``asking``) on the node's connection, connected if need be."""
        protocol = self._protocols.get(node)
        try:
            if protocol is None or protocol.closed or protocol.retiring:
                protocol = await self._connect_node(node)
            if not asking:
                return await protocol.send(payload)
            _, reply = await asyncio.gather(*protocol.send_many(_ASKING + payload, 2))
            return reply
        except redis.TimeoutError:
            self._event("timeout", node)
            raise
        except redis.ConnectionError:
            self._event("connection", node)
            raise

    async def _connect_node(self, node: str) -> _Protocol:
        lock = self._node_locks.get(node)
        if lock is None:
            lock = self._node_locks[node] = asyncio.Lock()
        async with lock:
            protocol = self._protocols.get(node)
            if protocol is not None and not protocol.closed and not protocol.retiring:
                return protocol
            host, port = self._addresses.get(node) or _address(node)
            protocol = self._protocols[node] = await self._open(host, port)
            self.node = node
            return protocol

    def _drop(self, node: str) -> None:
        """Close a node's connection once the calls in flight on it have their replies."""
        protocol = self._protocols.pop(node, None)
        if protocol is not None:
            protocol.retire()

    def _redirect_target(self, error: str, node: str) -> str:
        """The node of a ``MOVED``/``ASK`` reply (``MOVED 3999 10.0.0.7:6379``); an empty host is the replying
        node's."""
        address = error.split(" ")[2] if error.count(" ") >= 2 else ""
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise redis.ResponseError(f"cannot read the node of the redirect {error!r}")
        if not host or host == "?":
            host = (self._addresses.get(node) or _address(node))[0]
        target = _node_name(host, int(port))
        self._addresses.setdefault(target, (host, int(port)))
        return target

    async def _owner(self, slot: int) -> str:
        if not self._slots:
            await self._discover()
        node = self._slots[slot]
        if not node:
            self._event("clusterdown", self.node)
            self._schedule_refresh()
            raise redis.ConnectionError(f"no node of the Redis Cluster serves slot {slot} (the cluster is down?)")
        return node

    async def _discover(self, first: str = "") -> None:
        """Read the slot map (``CLUSTER SLOTS``) from the first node that answers: ``first``, the nodes connected
        to, the other nodes known, the seeds."""
        if self._discovering is None:
            self._discovering = asyncio.Lock()
        known = self._slots
        async with self._discovering:
            if self._slots is not known and self._slots:  # read by another call meanwhile
                return
            candidates = [first] if first else []
            candidates += [name for name, p in self._protocols.items() if not p.closed]
            candidates += list(self._addresses)
            failures = []
            for node in dict.fromkeys(candidates):
                try:
                    protocol = self._protocols.get(node)
                    if protocol is None or protocol.closed or protocol.retiring:
                        protocol = await self._connect_node(node)
                    reply = await protocol.send(_command(b"CLUSTER", b"SLOTS"))
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    failures.append(f"{node}: {exc}")
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    failures.append(f"{node}: {reply}")
                    continue
                self._load(reply, self._addresses.get(node, _address(node))[0])
                return
            raise redis.ConnectionError(f"cannot read the Redis Cluster's slots from any node: {'; '.join(failures)}")

    def _load(self, reply: Sequence[Any], replying_host: str) -> None:
        slots = [""] * REDIS_CLUSTER_HASH_SLOTS
        primaries: dict[str, tuple[str, int]] = {}
        for start, end, primary, *_ in reply:
            host = (primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])) or replying_host
            name = _node_name(host, int(primary[1]))
            primaries[name] = (host, int(primary[1]))
            slots[int(start) : int(end) + 1] = [name] * (int(end) - int(start) + 1)
        self._addresses.update(primaries)
        self._slots = slots
        self.discoveries += 1
        for node in [name for name in self._protocols if name not in primaries]:
            self._drop(node)  # no longer a primary (a replica now, or gone)

    def _schedule_refresh(self, first: str = "") -> None:
        """Read the slot map again in the background (once at a time)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_quietly(first))

    async def _refresh_quietly(self, first: str) -> None:
        with contextlib.suppress(redis.RedisError):  # the next call that needs the map asks again
            await self._discover(first)

    async def _refreshed(self) -> None:
        """Wait (at most the timeout) for the slot map being read again."""
        refresh = self._refresh
        if refresh is not None and not refresh.done():
            with contextlib.suppress(TimeoutError, redis.RedisError):
                await asyncio.wait_for(asyncio.shield(refresh), self.timeout)

    async def aclose(self) -> None:
        refresh, self._refresh = self._refresh, None
        if refresh is not None and not refresh.done():
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError):
                await refresh
        protocols, self._protocols = list(self._protocols.values()), {}
        for protocol in protocols:
            if protocol.transport is not None:
                protocol.abort()
        await super().aclose()


_ASKING = _command(b"ASKING")


def _node_name(host: str, port: int) -> str:
    return f"{host}:{port}"


def _address(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host, int(port)


async def gather_replies(calls: Iterable[Awaitable[Any]], *, return_errors: bool) -> list[Any]:
    """The replies of ``calls``, run at once and all awaited. A ``ResponseError`` (Redis answered that call with
    an error) is raised, or with ``return_errors`` is that call's reply; any other exception (a connection lost,
    a timeout: the outcome is unknown) is raised either way, the first in the order of ``calls``."""
    replies = await asyncio.gather(*calls, return_exceptions=True)
    for reply in replies:
        if isinstance(reply, BaseException) and not (return_errors and isinstance(reply, redis.ResponseError)):
            raise reply
    return list(replies)


def _failover(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(FAILOVER_REPLIES)
