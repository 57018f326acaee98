"""Every Redis client nba builds, in every mode (``redis_mode``), from one description: :class:`RedisTarget`.

``standalone``
    One Redis at ``redis_url`` (a managed Redis whose address follows its primary, or the embedded one):
    redis-py's clients from the URL, as before.
``sentinel``
    The primary that Redis Sentinel names ``redis_master_name``. The clients ask the sentinels
    ``redis_sentinels`` for its address whenever they connect (redis-py's ``Sentinel.master_for``), so after a
    failover they reach the new primary without a restart; so does the decision path's script connection
    (:class:`~nba_service.store.script_connection.SentinelScriptConnection`), still one pipelined connection
    with one round trip per script call. ``redis_url`` then gives only what the URL carries besides the
    address: the ACL user and password, the database and, for ``rediss://``, TLS with its options. The
    sentinels are reached with the same TLS (``rediss://``: they must serve TLS too) and, when the URL has the
    parameters ``sentinel_username`` / ``sentinel_password``, as that user (sentinels often have a password of
    their own, or none)::

        rediss://nba:PASSWORD@/0?ssl_ca_certs=/etc/nba/redis/ca.pem&sentinel_password=SENTINEL-PASSWORD
``cluster``
    Refused: Redis Cluster needs a key layout nba does not have yet.

The clients of :func:`sync_client` and :func:`async_client` take redis-py's usual options; the script
connection that reaches what an asyncio client reaches is :func:`script_connection_for`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from nba_service.domain.enums import RedisMode
from nba_service.store.script_connection import ScriptConnection, SentinelScriptConnection
from nba_service.store.urls import TLS_OPTIONS, check_redis_url, redacted_url, url_from_options

__all__ = [
    "SENTINEL_PARAMETERS",
    "SENTINEL_TIMEOUT_SECONDS",
    "RedisSettings",
    "RedisTarget",
    "async_client",
    "clients",
    "primary_address",
    "script_connection_for",
    "sync_client",
]

SENTINEL_PARAMETERS = ("sentinel_username", "sentinel_password")
"""Parameters of ``redis_url`` in sentinel mode: the user and password nba gives the sentinels."""
SENTINEL_TIMEOUT_SECONDS = 0.5
"""How long one sentinel has to answer (connect, then reply) before the next one is asked; sentinels are
asked one after the other, and only when a connection to the primary is made."""


class RedisSettings(Protocol):
    """The settings :meth:`RedisTarget.of` reads (:class:`nba_service.settings.Settings` has them)."""

    @property
    def redis_url(self) -> str: ...

    @property
    def redis_mode(self) -> RedisMode: ...

    @property
    def redis_master_name(self) -> str: ...

    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class RedisTarget:
    """Which Redis nba keeps its state in, and how it reaches it (see the module's doc)."""

    url: str = ""
    """standalone: the Redis; sentinel: the user, password, database and TLS options (its host is not used)."""
    mode: RedisMode = RedisMode.STANDALONE
    sentinels: tuple[tuple[str, int], ...] = ()
    """sentinel: the sentinels' addresses."""
    master_name: str = "nba"
    """sentinel: the name the sentinels monitor the primary under."""

    @classmethod
    def of(cls, settings: RedisSettings, *, url: str | None = None) -> RedisTarget:
        """The target the settings name; ``url`` instead of ``redis_url`` (the embedded Redis's)."""
        mode = RedisMode(settings.redis_mode)
        return cls(
            url=settings.redis_url if url is None else url,
            mode=mode,
            sentinels=settings.sentinel_addresses() if mode is RedisMode.SENTINEL else (),
            master_name=settings.redis_master_name,
        )

    @property
    def sentinel(self) -> bool:
        return self.mode is RedisMode.SENTINEL

    def check(self) -> None:
        """ValueError, naming the setting and never the password, for a target nba cannot connect to."""
        if self.mode is RedisMode.CLUSTER:
            raise ValueError("redis_mode: 'cluster' is not supported yet (use 'standalone' or 'sentinel')")
        if self.url:
            try:
                check_redis_url(self.url)
            except ValueError as exc:
                raise ValueError(f"redis_url: {exc}") from None
        given = [name for name in SENTINEL_PARAMETERS if name in _parameters(self.url)]
        if not self.sentinel:
            if given:
                raise ValueError(f"redis_url: {', '.join(given)} are for redis_mode 'sentinel' only")
            return
        if not self.sentinels:
            raise ValueError("redis_sentinels: redis_mode 'sentinel' needs the sentinels' addresses")
        if self.url and not self.url.startswith(("redis://", "rediss://")):
            raise ValueError(f"redis_url: {redacted_url(self.url)}: sentinel mode needs a redis:// or rediss:// URL")

    def describe(self) -> str:
        """The target for a log line or ``nba status``, the passwords masked."""
        if not self.sentinel:
            return redacted_url(self.url)
        where = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        shown = f" ({redacted_url(self.url)})" if self.url else ""
        return f"sentinel primary {self.master_name!r} via {where}{shown}"


def _parameters(url: str) -> dict[str, Any]:
    try:
        return parse_url(url) if url else {}
    except ValueError:
        return {}


def _sentinel_parts(target: RedisTarget) -> tuple[dict[str, Any], dict[str, Any]]:
    """The primary's connection arguments (no address) and the sentinels' (without timeouts and retry)."""
    options = _parameters(target.url)
    tls = target.url.startswith("rediss://")
    for name in ("host", "port", "path", "connection_class"):
        options.pop(name, None)
    credentials = {name[len("sentinel_") :]: options.pop(name) for name in SENTINEL_PARAMETERS if name in options}
    tls_options = {name: options[name] for name in TLS_OPTIONS if options.get(name) is not None}
    if tls:
        options["ssl"] = True
    return options, {**credentials, **({"ssl": True, **tls_options} if tls else {})}


def _sentinel_options(sentinel: dict[str, Any], retry: Any) -> dict[str, Any]:
    return {
        **sentinel,
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "retry": retry,  # a sentinel that does not answer: the next one is asked
    }


class _SentinelPrimary(redis.Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    def close(self) -> None:
        super().close()
        for sentinel in getattr(getattr(self.connection_pool, "sentinel_manager", None), "sentinels", ()):
            with contextlib.suppress(redis.RedisError, OSError):
                sentinel.close()


class _AsyncSentinelPrimary(aioredis.Redis):
    """The primary's asyncio client; closing it closes its connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for sentinel in getattr(getattr(self.connection_pool, "sentinel_manager", None), "sentinels", ()):
            with contextlib.suppress(redis.RedisError, OSError):
                await sentinel.aclose()


def sync_client(target: RedisTarget, **options: Any) -> redis.Redis:
    """A redis-py client of the target (its primary in sentinel mode) with ``options`` (timeouts, retry, ...)."""
    target.check()
    if not target.sentinel:
        return redis.Redis.from_url(target.url, **options)
    primary, sentinel = _sentinel_parts(target)
    manager = Sentinel(target.sentinels, sentinel_kwargs=_sentinel_options(sentinel, Retry(NoBackoff(), 0)), **primary)
    return manager.master_for(target.master_name, redis_class=_SentinelPrimary, **options)


def async_client(target: RedisTarget, **options: Any) -> aioredis.Redis:
    """A redis-py asyncio client of the target (its primary in sentinel mode) with ``options``."""
    target.check()
    if not target.sentinel:
        return aioredis.Redis.from_url(target.url, **options)
    primary, sentinel = _sentinel_parts(target)
    manager = AsyncSentinel(
        target.sentinels, sentinel_kwargs=_sentinel_options(sentinel, AsyncRetry(NoBackoff(), 0)), **primary
    )
    return manager.master_for(target.master_name, redis_class=_AsyncSentinelPrimary, **options)


def clients(target: RedisTarget) -> tuple[aioredis.Redis, redis.Redis]:
    """The server's two clients: asyncio for the request path, sync for tools and background work.

    Both retry a failed connection a few times with backoff, so a Redis blip (or a failover: each new
    connection asks the sentinels again) costs a retry, not an error. (The decision path's scripts use their
    own connection, :func:`script_connection_for`: reads are retried once, writes never, as they may have
    applied.) ValueError, naming the setting, for a target nba cannot use.
    """
    options: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 30,
    }
    async_redis = async_client(target, retry=AsyncRetry(ExponentialBackoff(cap=0.25, base=0.01), 3), **options)
    sync_redis = sync_client(target, retry=Retry(ExponentialBackoff(cap=0.25, base=0.01), 3), **options)
    return async_redis, sync_redis


def script_connection_for(client: aioredis.Redis, url: str, timeout: float = 2.0) -> ScriptConnection:
    """The decision path's script connection to what ``client`` reaches: the Redis of ``url`` or, for a client
    of :func:`async_client` in sentinel mode, the primary of the same sentinels, found again at every reconnect,
    with the client's credentials, database and TLS (``url`` is not used then)."""
    pool = client.connection_pool
    if not isinstance(pool, AsyncSentinelConnectionPool):
        return ScriptConnection(url, timeout)
    manager = pool.sentinel_manager
    options = {name: value for name, value in pool.connection_kwargs.items() if name != "connection_pool"}
    tls = issubclass(pool.connection_class, aioredis.SSLConnection)
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ]
    return SentinelScriptConnection(
        url_from_options(options, tls=tls),
        addresses,
        pool.service_name,
        sentinel_options=dict(manager.sentinel_kwargs),
        timeout=timeout,
    )


def primary_address(client: redis.Redis) -> tuple[str, int] | None:
    """The primary a sentinel-mode client reaches now, as the sentinels name it (None for a standalone one).
    A ConnectionError (redis-py's ``MasterNotFoundError``) while they name none."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    host, port = pool.get_master_address()
    return str(host), int(port)
