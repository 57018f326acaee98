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
    A Redis Cluster, discovered from ``redis_url``: the ``redis://`` or ``rediss://`` URL of any of its nodes,
    whose user, password and TLS options are those of every node (database 0: a cluster has no other). The
    clients are redis-py's cluster clients (``redis.cluster.RedisCluster``, and its asyncio twin for the request
    path): they read the slot map from the cluster and follow ``MOVED`` and ``ASK`` while slots move. The
    decision path's script connection
    (:class:`~nba_service.store.script_connection.ClusterScriptConnection`) keeps one pipelined connection per
    primary, still one round trip per script call, and follows ``MOVED``, ``ASK`` and ``TRYAGAIN`` itself. Every
    key one script touches shares one hash slot (:mod:`nba_service.store.keys`). Pub/sub (the policy and model
    change notices) goes through one node, another one after a lost connection (:func:`pubsub_for`): a
    ``PUBLISH`` on any node reaches the subscribers of every node. TLS options the cluster clients do not take
    (:data:`CLUSTER_UNSUPPORTED_TLS`) are refused::

        rediss://nba:PASSWORD@redis-cluster-0.redis-cluster:6379?ssl_ca_certs=/etc/nba/redis/ca.pem

The clients of :func:`sync_client` and :func:`async_client` take redis-py's usual options (in cluster mode
the sync client drops those its nodes' clients do not take, ``retry_on_error`` and ``health_check_interval``:
it retries a lost connection itself, ``retry`` telling how often); they are typed as redis-py's ``Redis``
clients in every mode, as the cluster clients serve the same single-slot commands. The script connection that
reaches what an asyncio client reaches is :func:`script_connection_for`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from nba_service.domain.enums import RedisMode
from nba_service.store.script_connection import (
    ClusterScriptConnection,
    EventCallback,
    ScriptConnection,
    SentinelScriptConnection,
)
from nba_service.store.urls import TLS_OPTIONS, check_redis_url, redacted_url, url_from_options

__all__ = [
    "CLUSTER_UNSUPPORTED_TLS",
    "SENTINEL_PARAMETERS",
    "SENTINEL_TIMEOUT_SECONDS",
    "RedisSettings",
    "RedisTarget",
    "async_client",
    "clients",
    "primary_address",
    "pubsub_for",
    "script_connection_for",
    "sync_client",
]

SENTINEL_PARAMETERS = ("sentinel_username", "sentinel_password")
"""Parameters of ``redis_url`` in sentinel mode: the user and password nba gives the sentinels."""
SENTINEL_TIMEOUT_SECONDS = 0.5
"""How long one sentinel has to answer (connect, then reply) before the next one is asked; sentinels are
asked one after the other, and only when a connection to the primary is made."""
CLUSTER_UNSUPPORTED_TLS = ("ssl_ca_path", "ssl_password", "ssl_min_version", "ssl_ciphers")
"""TLS options of ``redis_url`` refused in cluster mode: redis-py's asyncio cluster client does not take the first
two, its sync one drops the last two (the connection would silently lack them). ``ssl_ca_certs`` or
``ssl_ca_data`` give the CA instead of ``ssl_ca_path``; an unencrypted key file replaces ``ssl_password``."""
_CLUSTER_DROPPED = ("retry_on_error", "health_check_interval")
"""Options of the sync client its cluster twin does not pass on to its nodes' clients."""


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
    """standalone: the Redis; sentinel: the user, password, database and TLS options (its host is not used);
    cluster: any node, with the user, password and TLS options of all."""
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

    @property
    def cluster(self) -> bool:
        return self.mode is RedisMode.CLUSTER

    def check(self) -> None:
        """ValueError, naming the setting and never the password, for a target nba cannot connect to."""
        if self.url:
            try:
                check_redis_url(self.url)
            except ValueError as exc:
                raise ValueError(f"redis_url: {exc}") from None
        given = [name for name in SENTINEL_PARAMETERS if name in _parameters(self.url)]
        if self.cluster:
            self._check_cluster(given)
            return
        if not self.sentinel:
            if given:
                raise ValueError(f"redis_url: {', '.join(given)} are for redis_mode 'sentinel' only")
            return
        if not self.sentinels:
            raise ValueError("redis_sentinels: redis_mode 'sentinel' needs the sentinels' addresses")
        if self.url and not self.url.startswith(("redis://", "rediss://")):
            raise ValueError(f"redis_url: {redacted_url(self.url)}: sentinel mode needs a redis:// or rediss:// URL")

    def _check_cluster(self, sentinel_parameters: list[str]) -> None:
        shown = redacted_url(self.url)
        if not self.url:
            raise ValueError(
                "redis_url: redis_mode 'cluster' needs the redis:// or rediss:// URL of a cluster node "
                "(e.g. redis://redis-cluster-0:6379)"
            )
        if not self.url.startswith(("redis://", "rediss://")):
            raise ValueError(f"redis_url: {shown}: cluster mode needs the redis:// or rediss:// URL of a node")
        if sentinel_parameters:
            raise ValueError(f"redis_url: {', '.join(sentinel_parameters)} are for redis_mode 'sentinel' only")
        if self.sentinels:
            raise ValueError(
                "redis_sentinels: given, but redis_mode is 'cluster' (the cluster is found from redis_url)"
            )
        options = _parameters(self.url)
        if options.get("db"):
            raise ValueError(
                f"redis_url: {shown}: a Redis Cluster has database 0 only (the URL selects {options['db']})"
            )
        refused = [name for name in CLUSTER_UNSUPPORTED_TLS if options.get(name) is not None]
        if refused:
            raise ValueError(
                f"redis_url: {', '.join(refused)}: not supported in cluster mode (redis-py's cluster clients do not "
                "take them); give the CA with ssl_ca_certs and an unencrypted key file"
            )

    def describe(self) -> str:
        """The target for a log line or ``nba status``, the passwords masked."""
        if self.cluster:
            return f"Redis Cluster via {redacted_url(self.url)}"
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
    """A redis-py client of the target (its primary in sentinel mode) with ``options`` (timeouts, retry, ...).

    Cluster mode: redis-py's ``RedisCluster``, which reads the slot map at once (a ConnectionError when no node
    of the URL's cluster answers).
    """
    target.check()
    if target.cluster:
        kept = {name: value for name, value in options.items() if name not in _CLUSTER_DROPPED}
        # the URL's parts as arguments, not from_url: the nodes' clients then close their connections on close()
        parts = _parameters(target.url)
        parts.pop("db", None)  # 0 (check refuses another); the cluster client refuses the argument itself
        if parts.pop("connection_class", None) is redis.SSLConnection:
            parts["ssl"] = True
        try:
            cluster = RedisCluster(**parts, **kept)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"redis_url: {redacted_url(target.url)}: {exc}") from exc
        # typed as the client of the other modes: it serves the same single-slot commands
        return cast(redis.Redis, cluster)
    if not target.sentinel:
        return redis.Redis.from_url(target.url, **options)
    primary, sentinel = _sentinel_parts(target)
    manager = Sentinel(target.sentinels, sentinel_kwargs=_sentinel_options(sentinel, Retry(NoBackoff(), 0)), **primary)
    return manager.master_for(target.master_name, redis_class=_SentinelPrimary, **options)


def async_client(target: RedisTarget, **options: Any) -> aioredis.Redis:
    """A redis-py asyncio client of the target (its primary in sentinel mode; redis-py's asyncio
    ``RedisCluster`` in cluster mode, which reads the slot map at its first command) with ``options``."""
    target.check()
    if target.cluster:
        # typed as the client of the other modes: it serves the same single-slot commands
        return cast(aioredis.Redis, AsyncRedisCluster.from_url(target.url, **options))
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


def script_connection_for(
    client: aioredis.Redis, url: str = "", timeout: float = 2.0, *, on_event: EventCallback | None = None
) -> ScriptConnection:
    """The decision path's script connection to what ``client`` reaches: the Redis of ``url`` (empty: the one
    ``client`` connects to, as it connects) or, for a client of :func:`async_client` in sentinel mode, the
    primary of the same sentinels, found again at every reconnect, with the client's credentials, database and
    TLS (``url`` is not used then); for a cluster client, the cluster of ``url``'s node (and of the client's
    startup nodes). ``on_event(kind, node)`` hears of its redirects and errors
    (:data:`~nba_service.store.script_connection.EVENT_KINDS`)."""
    if isinstance(client, AsyncRedisCluster):
        seeds = [(node.host, int(node.port)) for node in client.nodes_manager.startup_nodes.values()]
        if not url:
            kwargs = client.nodes_manager.connection_kwargs
            tls = issubclass(kwargs.get("connection_class", aioredis.Connection), aioredis.SSLConnection)
            url = url_from_options({**kwargs, "host": seeds[0][0], "port": seeds[0][1]}, tls=tls)
        return ClusterScriptConnection(url, timeout, seeds=seeds, on_event=on_event)
    pool = client.connection_pool
    if not isinstance(pool, AsyncSentinelConnectionPool):
        if not url:
            url = url_from_options(
                pool.connection_kwargs, tls=issubclass(pool.connection_class, aioredis.SSLConnection)
            )
        return ScriptConnection(url, timeout, on_event=on_event)
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
        on_event=on_event,
    )


def pubsub_for(client: aioredis.Redis) -> PubSub:
    """A pub/sub of what ``client`` (of :func:`async_client`) reaches; in cluster mode one node's, another node
    of the cluster's at each new connection (after :meth:`~redis.asyncio.client.PubSub.aclose`).

    redis-py's own cluster pub/sub stays on the node it first picked, even when that node is gone for good;
    this one moves on, which a subscriber to ``PUBLISH`` can: a message published on any node reaches the
    subscribers of every node.
    """
    if isinstance(client, AsyncRedisCluster):
        return _ClusterNodePubSub(client)
    return client.pubsub()


class _ClusterNodePubSub(PubSub):
    """Pub/sub on one node of a cluster at a time: at each new connection the next node the cluster names."""

    def __init__(self, cluster: AsyncRedisCluster) -> None:
        self._cluster = cluster
        self._turn = 0
        self.node = ""
        """The node (``host:port``) subscribed to now."""
        super().__init__(connection_pool=cast(aioredis.ConnectionPool, None), encoder=cluster.encoder)

    async def connect(self) -> None:
        if self.connection is None:
            await self._next_node()
        await super().connect()

    async def _next_node(self) -> None:
        try:
            await self._cluster.initialize()
        except RedisClusterException as exc:  # not a RedisError: callers handle those
            raise redis.ConnectionError(f"cannot reach the Redis Cluster: {exc}") from exc
        nodes = sorted(self._cluster.get_nodes(), key=lambda node: node.name)
        if not nodes:
            raise redis.ConnectionError("the Redis Cluster names no node")
        node = nodes[self._turn % len(nodes)]
        self._turn += 1
        old, self.connection_pool = (
            self.connection_pool,
            aioredis.ConnectionPool(
                connection_class=node.connection_class, max_connections=1, **node.connection_kwargs
            ),
        )
        self.node = node.name
        if old is not None:
            await old.aclose()

    async def aclose(self) -> None:
        await super().aclose()
        if self.connection_pool is not None:
            await self.connection_pool.aclose()


def primary_address(client: redis.Redis) -> tuple[str, int] | None:
    """The primary a sentinel-mode client reaches now, as the sentinels name it (None for a standalone one).
    A ConnectionError (redis-py's ``MasterNotFoundError``) while they name none."""
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    if not isinstance(pool, SentinelConnectionPool):
        return None
    host, port = pool.get_master_address()
    return str(host), int(port)
