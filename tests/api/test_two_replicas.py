"""Two real server processes on one Redis: policy versions reach both within a second, a broken one
is refused by both, and a global budget holds across them."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.request

import grpc
import pytest

from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, TEST_REDIS_MODE, atm_decline, daytime_zone, profile, wait_until


class Replica:
    def __init__(self, redis_url: str, folder: pathlib.Path) -> None:
        ready = folder / "ready.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
        env.update({"NBA_REDIS_URL": redis_url, "NBA_REDIS_MODE": TEST_REDIS_MODE, "NBA_EPSILON": "0",
                    "NBA_LEARNER": "off"})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nba_service.cli", "serve", "--port", "0", "--metrics-port", "0",
             "--ready-file", str(ready)], env=env, stderr=subprocess.DEVNULL)
        wait_until(lambda: ready.exists() or self.process.poll() is not None, 30, "the replica to start")
        assert self.process.poll() is None, "the replica exited"
        info = json.loads(ready.read_text())
        self.metrics_url = f"http://127.0.0.1:{info['metrics_port']}/metrics"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{info['port']}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)

    def version(self) -> str:
        return self.stub.Decide(atm_decline("probe"), timeout=5).policy_version

    def refused(self) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith('nba_policy_reloads_total{result="failed"}'):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


@pytest.fixture
def replicas(redis_url, redis_client, tmp_path):
    PolicyStore(redis_client).publish(read_policy_dir(SAMPLE_POLICIES), message="first")
    started = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            started.append(Replica(redis_url, folder))
        yield started
    finally:
        for replica in started:
            replica.stop()


def _until_both_serve(replicas, version: str) -> float:
    return wait_until(lambda: all(r.version() == version for r in replicas), 5, f"version {version} on both")


def test_publish_rollback_and_refusal_reach_both_replicas(replicas, redis_client):
    store = PolicyStore(redis_client)
    files = read_policy_dir(SAMPLE_POLICIES)
    assert {r.version() for r in replicas} == {"1"}

    store.publish(files, message="second")
    assert _until_both_serve(replicas, "2") < 1.0
    store.rollback()
    assert _until_both_serve(replicas, "1") < 1.0

    broken = dict(files, **{"bank.yaml": files["bank.yaml"].replace("prior: 0.12", "prior: 12", 1)})
    store.publish(broken, message="broken")  # refused by each replica when it tries to compile it
    wait_until(lambda: all(r.refused() >= 1 for r in replicas), 5, "both replicas to refuse the broken version")
    assert {r.version() for r in replicas} == {"1"}


def test_a_budget_holds_across_two_processes(replicas, redis_client):
    files = read_policy_dir(SAMPLE_POLICIES)
    limits = "    limits:\n      - {max: 2, per: 30d}\n      - {channel: push, max: 1, per: 1d}\n"
    files["bank.yaml"] = files["bank.yaml"].replace(limits, "    budget: {max: 7, per: 1d}\n", 1)
    PolicyStore(redis_client).publish(files, message="budget")
    _until_both_serve(replicas, "2")
    customers = [f"p{i}" for i in range(60)]
    for customer in customers:
        replicas[0].stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
            customer, segment="student", channels=("push",), timezone=daytime_zone(), credit_score="600")), timeout=5)

    def decide(i: int) -> str:
        return replicas[i % 2].stub.Decide(atm_decline(customers[i], amount=60, balance=10), timeout=10).action.offer_id

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        chosen = list(pool.map(decide, range(len(customers))))
    assert chosen.count("micro_loan") == 7
