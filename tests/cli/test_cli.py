"""The `nba` command as a user runs it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import grpc
import psutil
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nba_service.store import keys
from nba_service.cli import main
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, wait_until


def nba(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def broken_policies(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "broken"
    shutil.copytree(SAMPLE_POLICIES, folder)
    bank = folder / "bank.yaml"
    text = bank.read_text()
    assert "prior: 0.12" in text
    bank.write_text(text.replace("prior: 0.12", "prior: twelve", 1))
    return folder


def test_validate_reports_file_line_and_exit_code(capsys, broken_policies):
    code, out, err = nba(capsys, "policy", "validate", str(broken_policies))
    line = next(i for i, text in enumerate((broken_policies / "bank.yaml").read_text().splitlines(), 1)
                if "prior: twelve" in text)
    assert code == 1
    assert f"bank.yaml:{line}:" in err
    assert "prior: expected a number, got 'twelve'" in err

    code, out, _ = nba(capsys, "policy", "validate", str(SAMPLE_POLICIES))
    assert code == 0 and "valid" in out


def test_broken_publish_changes_nothing(capsys, redis_url, redis_client, broken_policies):
    code, out, _ = nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url, "-m", "first")
    assert code == 0 and "policy version 1" in out

    code, _, err = nba(capsys, "policy", "publish", str(broken_policies), "--redis-url", redis_url)

    assert code == 1
    assert "bank.yaml:" in err and "nothing was published" in err
    store = PolicyStore(redis_client)
    assert store.live() == 1
    assert [p.version for p in store.history()] == [1]


def test_history_and_rollback(capsys, redis_url, redis_client):
    for message in ("first", "second"):
        nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url, "-m", message,
            "--author", "maria")
    code, out, _ = nba(capsys, "policy", "history", "--redis-url", redis_url)
    assert code == 0
    lines = out.splitlines()
    assert "maria" in lines[1] and "first" in lines[1] and not lines[1].startswith("*")
    assert lines[2].startswith("*") and "second" in lines[2]

    code, out, _ = nba(capsys, "policy", "rollback", "--redis-url", redis_url)
    assert code == 0 and "version 1 is live" in out
    assert PolicyStore(redis_client).live() == 1

    code, _, err = nba(capsys, "policy", "rollback", "9", "--redis-url", redis_url)
    assert code == 1 and "does not exist" in err
    assert PolicyStore(redis_client).live() == 1


def test_history_shows_the_whole_author(capsys, redis_url, redis_client):
    for author, message in (("marketing-analytics-team", "first"), ("maria", "second")):
        nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url, "-m", message,
            "--author", author)
    code, out, _ = nba(capsys, "policy", "history", "--redis-url", redis_url)
    assert code == 0
    header, first, second = out.splitlines()
    assert "marketing-analytics-team" in first  # not cut to "marketing-an"
    # the author column is as wide as its longest value: the messages still line up under their header
    assert header.index("message") == first.index("first") == second.index("second")


def test_customers_load_counts_and_names_refused_lines(capsys, redis_url, redis_client, tmp_path):
    export = tmp_path / "crm.jsonl"
    export.write_text("\n".join([
        json.dumps({"customer_id": "a1", "segment": "mass", "reachable_channels": ["push"], "consents": {"push": True},
                    "timezone": "Europe/Madrid", "attributes": {"income": "40000"}}),
        json.dumps({"customer_id": "a2", "timezone": "Nowhere/City"}),
        "{not json",
        json.dumps({"segment": "vip"}),
        json.dumps({"customer_id": "a3", "first_name": "Li"}),
    ]) + "\n")

    code, out, _ = nba(capsys, "customers", "load", str(export), "--redis-url", redis_url)

    assert code == 2  # some rows refused
    assert "2 rows loaded (2 new customers, 1 consent changes audited), 3 refused, 0 duplicate ids" in out
    assert "line 2: profile.timezone" in out
    assert "line 3: json" in out
    assert "line 4: customer_id: is required" in out
    stored = json.loads(redis_client.get(keys.profile("a1")))
    assert stored["consents"] == {"push": True} and stored["attributes"] == {"income": "40000"}
    assert redis_client.exists(keys.profile("a3")) and not redis_client.exists(keys.profile("a2"))


def test_customers_load_csv(capsys, redis_url, redis_client, tmp_path):
    export = tmp_path / "crm.csv"
    export.write_text("customer_id,first_name,segment,reachable_channels,consent_push,consent_sms,timezone,city\n"
                      "b1,Ana,young,push;sms,yes,no,Europe/Madrid,Madrid\n"
                      "b2,Bo,vip,push,maybe,no,UTC,Oslo\n")
    code, out, _ = nba(capsys, "customers", "load", str(export), "--redis-url", redis_url)
    assert code == 2
    assert "1 rows loaded" in out and "line 3: consent_push: 'maybe' is not yes/no" in out
    stored = json.loads(redis_client.get(keys.profile("b1")))
    assert stored["reachable_channels"] == ["push", "sms"]
    assert stored["consents"] == {"push": True, "sms": False}
    assert stored["attributes"] == {"city": "Madrid"}


def _wait_for(path: pathlib.Path, process: subprocess.Popen, timeout: float = 30.0) -> dict:
    wait_until(lambda: path.exists() or process.poll() is not None, timeout, "nba serve to become ready")
    if not path.exists():
        raise AssertionError(f"nba serve exited with {process.returncode}: {process.stderr.read()}")
    return json.loads(path.read_text())


def test_serve_runs_its_own_redis_and_stops_it(tmp_path, capsys):
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "nba_service.cli", "serve", "--port", "0", "--metrics-port", "-1",
         "--data-dir", str(tmp_path / "data"), "--policies", str(SAMPLE_POLICIES), "--ready-file", str(ready)],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        info = _wait_for(ready, process)
        assert info["redis_url"].startswith("unix://")
        redis_pid = int((pathlib.Path(info["redis_url"][len("unix://"):]).parent / "redis.pid").read_text())
        with grpc.insecure_channel(f"127.0.0.1:{info['port']}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING

        # another command finds the running embedded Redis by itself
        code, out, _ = nba(capsys, "policy", "history", "--data-dir", str(tmp_path / "data"))
        assert code == 0 and "published at start-up" in out
        assert psutil.pid_exists(redis_pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        process.stderr.close()
    assert process.returncode == 0
    assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE

    # state persisted: the next start serves the same version without publishing again
    client_code, out, _ = nba(capsys, "policy", "history", "--data-dir", str(tmp_path / "data"))
    assert client_code == 0 and out.count("published at start-up") == 1


def test_serve_refuses_a_broken_policy_directory(tmp_path, broken_policies):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    result = subprocess.run(
        [sys.executable, "-m", "nba_service.cli", "serve", "--port", "0", "--metrics-port", "-1",
         "--data-dir", str(tmp_path / "data"), "--policies", str(broken_policies)],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "bank.yaml:" in result.stderr and "nothing published" in result.stderr


def test_unreachable_redis_is_a_clear_error(capsys):
    code, _, err = nba(capsys, "policy", "history", "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 3
    assert "Redis" in err
    assert isinstance(redis.ConnectionError("x"), redis.RedisError)


def test_serve_with_two_workers_shares_one_port_and_one_metrics_endpoint(tmp_path):
    import urllib.request

    from nba_service.proto.nba.v1 import decision_pb2 as pb
    from nba_service.proto.nba.v1 import decision_pb2_grpc as pb_grpc
    from tests.conftest import atm_decline

    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "nba_service.cli", "serve", "--workers", "2", "--port", "0", "--metrics-port", "0",
         "--data-dir", str(tmp_path / "data"), "--policies", str(SAMPLE_POLICIES), "--ready-file", str(ready)],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        info = _wait_for(ready, process, timeout=60)
        workers = [c for c in psutil.Process(process.pid).children() if "serve" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for i in range(8):  # a channel each: the kernel spreads connections over the workers
            with grpc.insecure_channel(f"127.0.0.1:{info['port']}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                assert pb_grpc.DecisionServiceStub(channel).Decide(atm_decline(f"w{i}"), timeout=5).decision_id
        with urllib.request.urlopen(f"http://127.0.0.1:{info['metrics_port']}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("nba_decisions_total{"))
        assert total == 8  # both workers' counts, aggregated
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        process.stderr.close()
    assert process.returncode == 0
    assert not any(psutil.pid_exists(w.pid) and psutil.Process(w.pid).status() != psutil.STATUS_ZOMBIE
                   for w in workers)


def test_customers_load_skips_lines_that_are_not_utf8_and_reports_duplicates(capsys, redis_url, redis_client,
                                                                             tmp_path):
    export = tmp_path / "crm.jsonl"
    lines = [
        json.dumps({"customer_id": "u1", "first_name": "Ana"}).encode(),
        b'{"customer_id": "u2", "first_name": "Jos\xe9"}',  # Latin-1, not UTF-8
        json.dumps({"customer_id": "u3", "first_name": "Bo"}).encode(),
        json.dumps({"customer_id": "u1", "first_name": "Ana Maria"}).encode(),
    ]
    export.write_bytes(b"\n".join(lines) + b"\n")
    code, out, _ = nba(capsys, "customers", "load", str(export), "--redis-url", redis_url)
    assert code == 2
    assert "3 rows loaded (2 new customers, 0 consent changes audited), 1 refused, 1 duplicate ids" in out
    assert "line 2: encoding: not UTF-8 (byte 0xe9 at column 41)" in out
    assert "line 4: customer 'u1' was already on line 1; this later line wins" in out
    assert json.loads(redis_client.get(keys.profile("u1")))["first_name"] == "Ana Maria"
    assert redis_client.exists(keys.profile("u3")) and not redis_client.exists(keys.profile("u2"))

    csv_export = tmp_path / "crm.csv"
    csv_export.write_bytes(b"customer_id,first_name\nv1,Ana\nv2,Jos\xe9\nv3,Bo\n")
    code, out, _ = nba(capsys, "customers", "load", str(csv_export), "--redis-url", redis_url)
    assert "2 rows loaded" in out and "line 3: encoding: not UTF-8" in out
    assert redis_client.exists(keys.profile("v3")) and not redis_client.exists(keys.profile("v2"))


def test_customers_load_keeps_consents_a_row_does_not_list_and_audits_changes(capsys, redis_url, redis_client,
                                                                              tmp_path):
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"customer_id": "k1", "consents": {"sms": False, "push": True}}) + "\n")
    nba(capsys, "customers", "load", str(first), "--redis-url", redis_url)
    # a later export without consents (or with only push) never re-grants the withdrawn SMS consent
    later = tmp_path / "later.jsonl"
    later.write_text(json.dumps({"customer_id": "k1", "segment": "vip", "consents": {"push": False}}) + "\n")
    code, out, _ = nba(capsys, "customers", "load", str(later), "--redis-url", redis_url)
    assert code == 0 and "1 consent changes audited" in out
    stored = json.loads(redis_client.get(keys.profile("k1")))
    assert stored["consents"] == {"sms": False, "push": False} and stored["segment"] == "vip"
    code, out, _ = nba(capsys, "customers", "audit", "k1", "--redis-url", redis_url)
    assert "push" in out and "granted -> denied" in out and "unset -> denied" in out and "cli" in out


def test_a_profile_with_too_many_channels_is_refused_naming_the_field(server):
    from nba_service.proto.nba.v1 import decision_pb2 as pb
    from tests.conftest import profile

    huge = profile("wide", channels=tuple(f"c{i}" for i in range(200_000)))
    with pytest.raises(grpc.RpcError) as failure:
        server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=huge), timeout=10)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "reachable_channels: has 200000 channels, at most 32 are allowed" in failure.value.details()
