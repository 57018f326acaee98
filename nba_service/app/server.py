"""The composition root of one nba process: Redis clients (and the embedded Redis when no URL
is given), the data plane, the gRPC server (with health and reflection), the metrics
endpoint, the embedded learner thread and the policy and model watcher.

The gRPC server holds up under overload and hostile clients (admission control in
:mod:`nba_service.api.admission`; connection limits, keepalive and idle/age limits in
:func:`server_options`), says NOT_SERVING while the state store does not answer, and drains on
SIGTERM (:meth:`NbaServer.stop`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from nba_service import __version__
from nba_service.api import errors
from nba_service.api.admission import Admission
from nba_service.api.campaign_service import CampaignServicer
from nba_service.api.interceptors import AuthInterceptor, MetricsInterceptor
from nba_service.api.servicer import DecisionServicer
from nba_service.app import discovery
from nba_service.app.tls import ServerTls, is_loopback
from nba_service.dataplane import DataPlane
from nba_service.domain import LearnerMode
from nba_service.learning.learner import Learner
from nba_service.observability.metrics import Metrics
from nba_service.observability.ratelimit import RateLimitedLog
from nba_service.policies.parser import load_policy_dir
from nba_service.proto.nba.v1 import campaign_pb2, campaign_pb2_grpc, decision_pb2
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.settings import Settings, SettingsError
from nba_service.store import connect, heartbeats, keys
from nba_service.store.connect import RedisTarget
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.migrate import ensure_layout
from nba_service.store.policy_store import PolicyStore, content_digest

__all__ = [
    "CAMPAIGN_SERVICE_NAME",
    "SERVICE_NAME",
    "NbaServer",
    "connection_limit",
    "grpc_server",
    "publish_if_changed",
    "redis_clients",
    "run",
    "server_options",
]

log = logging.getLogger(__name__)

SERVICE_NAME = decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
CAMPAIGN_SERVICE_NAME = campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name

RESERVED_FILES = 1024
"""File descriptors kept out of the connection limit (``max_connections`` 0): Redis, logs, the metrics port."""
STORE_FAILURES_NOT_SERVING = 2
"""Failed checks of the state store in a row after which health says NOT_SERVING (one more blip is tolerated)."""
DRAIN_QUIET_SECONDS = 0.1
"""The drain ends early once nothing is running and no call has arrived for this long."""
DRAIN_STOP_SECONDS = 0.5
"""The end of the grace period kept for answering the calls still open and stopping the gRPC server."""


def redis_clients(target: RedisTarget | str) -> tuple[aioredis.Redis, redis.Redis]:
    """An asyncio client for the request path and a sync one for tools and background work
    (:func:`nba_service.store.connect.clients`: both retry a failed connection a few times with backoff).

    ``target`` is a :class:`~nba_service.store.connect.RedisTarget` (a standalone Redis, or the primary Redis
    Sentinel names) or a standalone Redis's URL. The URL carries the credentials and TLS: an ACL user
    (``rediss://nba:PASSWORD@redis:6380/0``) and the TLS files as query parameters
    (``?ssl_ca_certs=/etc/nba/redis/ca.pem``, and ``ssl_certfile`` and ``ssl_keyfile`` for a client
    certificate), see :mod:`nba_service.store.urls`. A target nba cannot use (TLS options without
    ``rediss://``, a CA or certificate file that cannot be read) raises :class:`SettingsError` here, naming the
    problem but not the password.
    """
    try:
        return connect.clients(RedisTarget(url=target) if isinstance(target, str) else target)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def connection_limit(settings: Settings) -> int:
    """The connections one process holds: ``max_connections``, or its file limit less
    :data:`RESERVED_FILES`, the soft limit first raised to the hard one (as a server should)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if settings.max_connections:
        return settings.max_connections
    files = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    return max(files - RESERVED_FILES, 64)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(settings: Settings, *, reuse_port: bool = False, max_connections: int = 0) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: connection and stream limits, keepalive, idle and age limits."""
    options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout_seconds)),
        ("grpc.max_connection_idle_ms", _ms(settings.connection_idle_seconds)),
        ("grpc.max_connection_age_ms", _ms(settings.connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.connection_age_grace_seconds)),
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_seconds)),
        # clients may send keepalive pings every 10 s, even without calls; more often is a strike, and
        # two strikes close the connection (GOAWAY too_many_pings)
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        # the server's receive windows stay at 64 KiB (no bandwidth probing): requests are small, and a
        # client writing a stream faster than it is answered cannot park megabytes of them in the server
        ("grpc.http2.bdp_probe", 0),
    ]
    if max_connections:
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    return options


def grpc_server(
    metrics: Metrics,
    *,
    reuse_port: bool = False,
    servicer: pb_grpc.DecisionServiceServicer,
    auth: AuthInterceptor | None = None,
    reflection_on: bool = True,
    settings: Settings | None = None,
    calls: MetricsInterceptor | None = None,
    max_connections: int = 0,
    campaigns: campaign_pb2_grpc.CampaignServiceServicer | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The gRPC server every nba process (and the bench's echo) runs: ``calls``, the metrics interceptor (and
    the auth interceptor, after it, so refused calls are counted too), ``servicer`` as
    ``nba.v1.DecisionService`` (and ``campaigns`` as ``nba.v1.CampaignService``), the standard health service
    and, unless turned off, reflection; with the
    limits of :func:`server_options` (``settings``, default ones if not given)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [calls or MetricsInterceptor(metrics)]
    if auth is not None:
        interceptors.append(auth)
    options = server_options(settings or Settings(), reuse_port=reuse_port, max_connections=max_connections)
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_DecisionServiceServicer_to_server(servicer, server)
    services = [SERVICE_NAME]
    if campaigns is not None:
        campaign_pb2_grpc.add_CampaignServiceServicer_to_server(campaigns, server)
        services.append(CAMPAIGN_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_on:
        reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, health_servicer


def check_exposure(settings: Settings) -> None:
    """Refuse a non-loopback address without callers' credentials; warn about plaintext off loopback."""
    if is_loopback(settings.host):
        return
    if not settings.auth_file and not settings.insecure_no_auth:
        raise SettingsError(
            f"host: refusing to serve {settings.host} without an auth file: any caller could read and change "
            "customers. Give --auth-file (NBA_AUTH_FILE), or --insecure-no-auth if something else "
            "authenticates callers"
        )
    if not settings.tls_cert:
        log.warning(
            "serving plaintext gRPC on %s, a non-loopback address: tokens and customer data cross the network "
            "in the clear (give --tls-cert and --tls-key)",
            settings.host,
        )


def start_metrics_http(settings: Settings, registry: CollectorRegistry) -> Any:
    """The Prometheus endpoint, over HTTPS with the gRPC port's certificate when ``metrics_tls``."""
    tls: dict[str, Any] = {}
    if settings.metrics_tls:
        tls = {"certfile": settings.tls_cert, "keyfile": settings.tls_key}
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry, **tls)
    return server


class NbaServer:
    """Start with :meth:`start`, stop with :meth:`stop`; ``port`` is the bound gRPC port."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.port = 0
        self.metrics_port = 0
        self.redis_url = settings.redis_url
        self.redis_target = RedisTarget()
        """Which Redis the process uses (set at start: the embedded one's URL is known then)."""
        self._embedded: EmbeddedRedis | None = None
        self._advertisement: pathlib.Path | None = None
        """The file advertising the embedded Redis to other commands (:mod:`~nba_service.app.discovery`)."""
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"
        """This process's name in the heartbeats (:mod:`~nba_service.store.heartbeats`)."""
        self.started_at = time.time()
        self._beat_now: asyncio.Event | None = None
        """Set to rewrite the heartbeat at once (a version was swapped)."""
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_http: Any = None
        self._learner_thread: threading.Thread | None = None
        self._recorder: Any = None
        self._learner_stop = threading.Event()
        self.dataplane: DataPlane | None = None
        self.campaigns: CampaignServicer | None = None
        """The campaign service: the runs it started work in threads of this process."""
        self.tls: ServerTls | None = None
        self.auth: AuthInterceptor | None = None
        self.calls = MetricsInterceptor(self.metrics, settings.log_interval_seconds)
        """The outermost interceptor: counts every call, refuses malformed ones, holds new ones while draining."""
        self.admission: Admission | None = None
        self.max_connections = 0
        self.store_up = True
        """Whether the state store answered the last checks (health is NOT_SERVING while it does not)."""
        self.stopping = False
        self._stopped = False
        self._limited = RateLimitedLog(log, settings.log_interval_seconds)

    async def start(self) -> int:
        settings = self.settings
        check_exposure(settings)
        errors.set_log_interval(settings.log_interval_seconds)
        self.max_connections = connection_limit(settings)
        self.metrics.connection_limit.set(self.max_connections)
        self.metrics.store_up.set(1)
        if settings.tls_cert:
            self.tls = ServerTls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if settings.auth_file:
            self.auth = AuthInterceptor(settings.auth_file, self.metrics)
        if not self.redis_url and settings.uses_embedded_redis:
            self._embedded = EmbeddedRedis(settings.data_dir)
            self.redis_url = await asyncio.to_thread(self._embedded.start)
            if not settings.isolated:
                self._advertisement = discovery.advertise(settings.data_dir, self.redis_url)
        self.redis_target = RedisTarget.of(settings, url=self.redis_url)
        self._async_redis, self._sync_redis = redis_clients(self.redis_target)
        # a Redis of the previous release is upgraded in place first (one GET once it is done)
        await asyncio.to_thread(ensure_layout, self._sync_redis)
        if settings.policies:
            await asyncio.to_thread(publish_if_changed, self._sync_redis, settings.policies)
        self.dataplane = DataPlane(settings, self._async_redis, self._sync_redis, self.metrics, self.redis_url)
        await self.dataplane.start()

        if settings.record_events:
            # line-buffered: every recorded request reaches the file whole, at once
            self._recorder = open(settings.record_events, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.admission = Admission(settings.max_decisions_in_progress, settings.decisions_at_once, self.metrics)
        servicer = DecisionServicer(
            self.dataplane, self._recorder, settings.record_sample, settings.seed, admission=self.admission
        )
        self.campaigns = CampaignServicer(self.dataplane, self.redis_target, self._sync_redis, self.registry)
        server, self._health = grpc_server(
            self.metrics,
            reuse_port=bool(settings.reuse_port),
            servicer=servicer,
            auth=self.auth,
            reflection_on=settings.reflection,
            settings=settings,
            calls=self.calls,
            max_connections=self.max_connections,
            campaigns=self.campaigns,
        )
        address = f"{settings.host}:{settings.port}"
        if self.tls is not None:
            self.port = server.add_secure_port(address, self.tls.credentials())
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")
        await server.start()
        self._server = server
        await self._set_health()
        if settings.metrics_port >= 0:
            self._metrics_http = start_metrics_http(settings, self.registry)
            self.metrics_port = self._metrics_http.server_port
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_policies()))
        self._beat_now = asyncio.Event()
        await self._beat()  # listed by `nba status` as soon as it serves
        self._tasks.append(asyncio.get_running_loop().create_task(self._heartbeat()))
        if settings.learner is LearnerMode.EMBEDDED:
            self._start_learner()
        log.info(
            "nba serving on %s:%d (%s; %s; %s; redis %s; at most %d decisions in progress, %d connections)",
            settings.host,
            self.port,
            "mTLS" if self.tls and self.tls.mutual else "TLS" if self.tls else "plaintext",
            f"{len(self.auth.auth.clients)} callers from {settings.auth_file}" if self.auth else "no auth",
            f"metrics on {settings.metrics_host}:{self.metrics_port}/metrics" if self._metrics_http else "no metrics",
            self.redis_target.describe(),
            settings.max_decisions_in_progress,
            self.max_connections,
        )
        return self.port

    def reload_credentials(self) -> None:
        """SIGHUP: re-read the TLS files at the next handshake and the auth file now."""
        if self.tls is not None:
            self.tls.reload()
        if self.auth is not None:
            self.auth.reload(force=True)

    async def _set_health(self) -> None:
        """SERVING while a policy is loaded and the state store answers, until the drain starts."""
        assert self._health is not None
        serving = (
            self.dataplane is not None and self.dataplane.snapshot is not None and self.store_up and not self.stopping
        )
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)
        await self._health.set(CAMPAIGN_SERVICE_NAME, status)

    def _start_learner(self) -> None:
        """The embedded learner: a thread with its own Redis client; one replica at a time learns."""
        metrics = self.metrics
        learner_client = connect.sync_client(
            self.redis_target,
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.01), 3),
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
        )
        learner = Learner(
            learner_client,
            snapshot_every=self.settings.model_snapshot_every,
            block_ms=100,
            challenger_learning_rate=self.settings.challenger_learning_rate,
            snapshot_seconds=self.settings.model_snapshot_seconds,
            on_update=lambda version: metrics.model_publications.inc(),
            on_learned=metrics.model_updates.inc,
            on_redis_error=metrics.redis_errors.labels("learner").inc,
        )
        self._learner_stop = threading.Event()

        def run() -> None:
            try:
                learner.run(self._learner_stop)
            finally:
                learner_client.close()

        self._learner_thread = threading.Thread(target=run, name="nba-learner", daemon=True)
        self._learner_thread.start()

    async def _watch_policies(self) -> None:
        """Pick up newly published or rolled-back policy and model versions: pub/sub, plus a periodic check.

        Each round trip also tells whether the state store answers: after
        :data:`STORE_FAILURES_NOT_SERVING` failures in a row health says NOT_SERVING (a replica that cannot
        decide should get no traffic), and SERVING again at the first round trip that works.
        """
        assert self.dataplane is not None
        interval = self.settings.policy_check_seconds
        pubsub = connect.pubsub_for(self._async_redis)  # cluster mode: one node at a time
        subscribed = False
        failures = 0
        try:
            while True:
                try:
                    if not subscribed:
                        await pubsub.subscribe(keys.POLICY_CHANNEL, keys.MODEL_CHANNEL)
                        subscribed = True
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=interval)
                    if self.auth is not None:
                        self.auth.reload()  # a changed auth file (a Secret updated in place) takes effect
                    swapped = await self.dataplane.refresh_policy()
                    failures = 0
                    if swapped or not self.store_up:
                        await self._store_answers(True)
                    if await self.dataplane.refresh_models() or swapped:
                        self._beat_soon()
                except redis.RedisError as exc:
                    self.metrics.redis_errors.labels("policy_watch").inc()
                    failures += 1
                    if failures >= STORE_FAILURES_NOT_SERVING and self.store_up:
                        await self._store_answers(False, exc)
                    self._limited.warning("policy_watch", "policy watcher: %s; retrying in %.1fs", exc, interval)
                    subscribed = False
                    with contextlib.suppress(redis.RedisError):
                        await pubsub.aclose()
                    await asyncio.sleep(interval)
                except Exception:
                    log.exception("policy/model watcher failed; retrying in %.1fs", interval)
                    await asyncio.sleep(interval)
        finally:
            await pubsub.aclose()

    def _heartbeat_fields(self) -> dict[str, str | int | float]:
        """What ``nba status`` shows of this process (:mod:`~nba_service.store.heartbeats`)."""
        settings, dataplane = self.settings, self.dataplane
        snapshot = dataplane.snapshot if dataplane is not None else None
        models = dataplane.models.published_version if dataplane is not None else None
        return {
            "id": self.server_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "address": f"{settings.host}:{self.port}",
            "metrics": f"{settings.metrics_host}:{self.metrics_port}" if self._metrics_http else "",
            "transport": "mTLS" if self.tls and self.tls.mutual else "TLS" if self.tls else "plaintext",
            "version": __version__,
            "mode": str(settings.mode),
            "learner": str(settings.learner),
            "started_at": f"{self.started_at:.3f}",
            "seen_at": f"{time.time():.3f}",
            "policy_version": snapshot.version if snapshot is not None else "",
            "model_version": "" if models is None else str(models),
            "serving": "no" if self.stopping or not self.store_up or snapshot is None else "yes",
            "data_dir": str(self._embedded.data_dir) if self._embedded is not None else "",
            "redis": self.redis_target.describe(),
        }

    async def _beat(self) -> None:
        try:
            await heartbeats.beat(self._async_redis, self.server_id, self._heartbeat_fields())
        except redis.RedisError as exc:
            self._limited.warning("heartbeat", "heartbeat not written: %s", exc)

    def _beat_soon(self) -> None:
        if self._beat_now is not None:
            self._beat_now.set()

    async def _heartbeat(self) -> None:
        """Rewrite the heartbeat every :data:`~nba_service.store.heartbeats.HEARTBEAT_SECONDS`, and at once when
        a version is swapped."""
        assert self._beat_now is not None
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns instead of raising when the task is
            # cancelled just as the event is set (a version swapped as the server stops), and stop() then waited
            # for a heartbeat that kept beating
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(heartbeats.HEARTBEAT_SECONDS):
                    await self._beat_now.wait()
            self._beat_now.clear()
            await self._beat()

    async def _store_answers(self, up: bool, error: Exception | None = None) -> None:
        """Record whether the state store answers, and say so in health."""
        if up != self.store_up:
            if up:
                log.info("the state store answers again: health SERVING")
            else:
                log.warning("the state store does not answer (%s): health NOT_SERVING until it does", error)
        self.store_up = up
        self.metrics.store_up.set(1 if up else 0)
        await self._set_health()

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then stop: health NOT_SERVING at once; new calls held and then answered UNAVAILABLE (retryable);
        calls in flight given ``grace`` seconds (default ``grace_seconds``) to finish, those still running then
        answered UNAVAILABLE; then the gRPC server, the learner, the watchers and the rest stop."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_seconds if grace is None else grace
        began = time.monotonic()
        self.stopping = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # NOT_SERVING for "" and every service, from now on
        if self._server is not None:
            await self._drain(began, grace)
        if self.campaigns is not None:  # its runs are suspended: they stop after their batch
            await asyncio.to_thread(self.campaigns.stop, 30)
        if self._learner_thread is not None:
            self._learner_stop.set()
            await asyncio.to_thread(self._learner_thread.join, 30)
        for task in self._tasks:
            task.cancel()
        running = set(self._tasks)
        while running:  # a task that went on (a cancel swallowed where it was, seen in cluster mode) is cancelled again
            _, running = await asyncio.wait(running, timeout=1.0)
            for task in running:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._beat_now is not None and self.store_up:  # no longer serving: `nba status` stops listing it
            with contextlib.suppress(redis.RedisError, TimeoutError):  # else its heartbeat expires
                await asyncio.wait_for(heartbeats.remove(self._async_redis, self.server_id), 1.0)
        if self.dataplane is not None:
            await self.dataplane.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if hasattr(self, "_async_redis"):
            await self._async_redis.aclose()
            self._sync_redis.close()
        if self._recorder is not None:
            self._recorder.close()
        discovery.withdraw(self._advertisement)
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
        log.info("nba stopped")

    async def _drain(self, began: float, grace: float) -> None:
        """Let the calls in flight finish (holding new ones) until none runs and none has arrived for
        :data:`DRAIN_QUIET_SECONDS`, or until the grace period is nearly over; then stop the gRPC server
        (GOAWAY to every client, no new connection) and answer UNAVAILABLE to every call still open.

        New calls are held rather than refused at once so clients in a loop do not keep sending calls while
        the server waits: a call caught in gRPC's own queue when the server stops is answered CANCELLED,
        which clients do not retry.
        """
        assert self._server is not None
        calls, admission = self.calls, self.admission
        stop_grace = min(DRAIN_STOP_SECONDS, grace / 2)
        if grace > 0:
            calls.start_draining()
            if admission is not None:
                admission.draining = True
            until = began + grace - stop_grace
            while time.monotonic() < until:
                busy = calls.busy() + (admission.in_progress if admission is not None else 0)
                if not busy and time.monotonic() - calls.last_arrival >= DRAIN_QUIET_SECONDS:
                    break
                await asyncio.sleep(0.01)  # polling the calls in flight
        stopped = asyncio.ensure_future(self._server.stop(stop_grace))
        await asyncio.sleep(0)  # the server sends GOAWAY before the held calls are answered
        left = calls.release()
        await stopped
        log.info(
            "drained in %.2f s%s",
            time.monotonic() - began,
            f"; {left} calls still running were answered UNAVAILABLE" if left else "",
        )

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


def publish_if_changed(client: redis.Redis, directory: str) -> int | None:
    """Validate ``directory`` and publish it unless it is exactly what is live."""
    policy = load_policy_dir(directory)
    store = PolicyStore(client)
    live = store.load_live()
    if live is not None and live.digest == content_digest(policy.files):
        return None
    version = store.publish(policy.files, message=f"published at start-up from {directory}")
    log.info("published %s as policy version %d", directory, version)
    return version


def run(settings: Settings, ready: Callable[[NbaServer], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""

    async def main() -> None:
        server = NbaServer(settings)
        try:
            await server.start()
        except BaseException:
            await server.stop(0)
            raise
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_credentials)
        if ready is not None:
            ready(server)
        await stopping.wait()
        log.info("stopping (grace %.1fs)", settings.grace_seconds)
        await server.stop()

    asyncio.run(main())
