"""Measure the Redis memory nba needs per customer and per decision.

Starts a Redis on loopback (Debian's /usr/bin/redis-server by default: jemalloc,
as in the redis:7.2 image) and ``nba serve`` on it, publishes policies/, loads
N generated customers, sends every customer two ATM-decline Decide calls (two
rounds) and an "impressed" outcome for the second, and reads ``INFO memory``
(used_memory) after each step and ``MEMORY USAGE`` of one customer's keys.
Stops everything it started. From the repository root::

    .venv/bin/python deploy/redis-memory.py --customers 10000

deploy/README.md ("Choosing and sizing Redis") quotes its output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nba_service.proto.nba.v1 import decision_pb2 as pb  # noqa: E402
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc  # noqa: E402
from nba_service.store import keys  # noqa: E402
from nba_service.tools.traffic import generate_customers  # noqa: E402

CUSTOMER_KEYS = ("profile", "journey", "contacts", "decision_index")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def measure(customers: int, redis_server: str, work: pathlib.Path, seed: int = 1) -> dict:
    nba = str(pathlib.Path(sys.executable).with_name("nba"))
    redis_port, grpc_port = _free_port(), _free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = {**os.environ, "NBA_REDIS_URL": url, "NBA_REDIS_MODE": "standalone", "NBA_REDIS_SENTINELS": ""}
    server = subprocess.Popen(
        [
            redis_server,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
    )
    serve = None
    try:
        client = redis.Redis(port=redis_port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        _wait(answers, "redis-server")

        def used() -> int:
            return int(client.info("memory")["used_memory"])

        steps = {"empty": used()}
        subprocess.run(
            [nba, "policy", "publish", str(ROOT / "policies"), "-m", "memory"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        steps["policies"] = used()
        records = generate_customers(customers, seed=seed, prefix="m")
        export = work / "customers.jsonl"
        export.write_text("".join(json.dumps(record) + "\n" for record in records))
        subprocess.run([nba, "customers", "load", str(export)], env=env, check=True, stdout=subprocess.DEVNULL)
        steps["customers"] = used()

        ready = work / "ready"
        serve = subprocess.Popen(
            [
                nba,
                "serve",
                "--port",
                str(grpc_port),
                "--metrics-port",
                "-1",
                "--insecure-no-auth",
                "--ready-file",
                str(ready),
                "--seed",
                str(seed),
            ],
            env=env,
            stdout=(work / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        _wait(lambda: ready.exists() or serve.poll() is not None, "nba serve")
        if serve.poll() is not None:
            raise SystemExit(f"nba serve exited:\n{(work / 'serve.log').read_text()[-3000:]}")
        stub = pb_grpc.DecisionServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        ids = [str(record["customer_id"]) for record in records]

        def decide(customer_id: str) -> pb.DecideResponse:
            event = pb.Event(atm_decline=pb.AtmDecline(amount=100, balance=20, currency="EUR", atm_id="atm-7"))
            return stub.Decide(pb.DecideRequest(customer_id=customer_id, origin_channel="atm", event=event), timeout=10)

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            first = list(pool.map(decide, ids))
            steps["first decisions"] = used()
            second = list(pool.map(decide, ids))
            steps["second decisions"] = used()
            recorded = [d for d in second if d.decision_id]
            list(
                pool.map(
                    lambda d: stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=d.decision_id, outcome=pb.OUTCOME_KIND_IMPRESSED), timeout=10
                    ),
                    recorded,
                )
            )
            steps["outcomes"] = used()

        sample = ids[0]
        usage = {name: client.memory_usage(getattr(keys, name)(sample), samples=0) for name in CUSTOMER_KEYS}
        usage["decision"] = client.memory_usage(keys.decision(recorded[0].decision_id), samples=0)
        return {
            "redis": client.info("server")["redis_version"],
            "customers": customers,
            "decisions per round": sum(1 for d in first if d.decision_id),
            "used_memory": steps,
            "bytes per customer (profile)": round((steps["customers"] - steps["policies"]) / customers),
            "bytes per first decision of a customer": round(
                (steps["first decisions"] - steps["customers"]) / customers
            ),
            "bytes per further decision": round((steps["second decisions"] - steps["first decisions"]) / customers),
            "bytes per outcome": round((steps["outcomes"] - steps["second decisions"]) / max(len(recorded), 1)),
            f"MEMORY USAGE of customer {sample}'s keys and a decision": usage,
        }
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000, help="customers loaded (default 10000)")
    default_server = (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else shutil.which("redis-server")
    )
    parser.add_argument(
        "--redis-server", default=default_server, help=f"redis-server binary (default {default_server})"
    )
    args = parser.parse_args()
    if not args.redis_server:
        parser.error("--redis-server: no redis-server found; give its path")
    with tempfile.TemporaryDirectory(prefix="nba-redis-memory-") as folder:
        print(json.dumps(measure(args.customers, args.redis_server, pathlib.Path(folder)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
