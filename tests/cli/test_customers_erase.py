"""`nba customers erase` and `nba customers audit` as an operator runs them."""

from __future__ import annotations

import io
import json

import pytest

from nba_service.cli import main
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from tests.conftest import atm_decline, daytime_zone, profile

CUSTOMER = "cli-erase-5b2e"


def nba(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def stored(server, redis_client):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(CUSTOMER, timezone=daytime_zone()),
                                                        request_id="crm-1"), timeout=5)
    decisions = [server.stub.Decide(atm_decline(CUSTOMER), timeout=5).decision_id for _ in range(3)]
    assert redis_client.exists(keys.profile(CUSTOMER), *(keys.decision(d) for d in decisions)) == 4
    return decisions


def test_erase_with_yes_erases_and_audits(capsys, redis_url, redis_client, stored, tmp_path, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "dpo")
    code, out, err = nba(capsys, "customers", "erase", CUSTOMER, "--yes", "--request-id", "ticket-9",
                         "--redis-url", redis_url)

    assert code == 0, err
    assert out.strip() == f"customer {CUSTOMER} erased (3 decisions deleted); the erasure is in the audit"
    assert not redis_client.keys(f"*{CUSTOMER}*")
    assert not redis_client.exists(*(keys.decision(d) for d in stored))

    code, out, _ = nba(capsys, "customers", "audit", CUSTOMER, "--redis-url", redis_url,
                       "--json", str(tmp_path / "audit.json"))
    assert code == 0
    assert out.splitlines()[-1].split()[2:] == ["(erased)", "customer", "erased", "cli:dpo", "ticket-9"]
    entries = json.loads((tmp_path / "audit.json").read_text())
    assert [e["action"] for e in entries][-1] == "erased"
    assert {e["request_id"] for e in entries if e["action"] == "consent"} == {"crm-1"}

    # again: nothing left to erase, and said so
    code, out, _ = nba(capsys, "customers", "erase", CUSTOMER, "--yes", "--redis-url", redis_url)
    assert (code, out.strip()) == (0, f"customer {CUSTOMER}: nothing was stored; the erasure request is in the audit")


def test_erase_without_yes_refuses_when_not_on_a_terminal(capsys, redis_url, redis_client, stored, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(CUSTOMER + "\n"))

    code, out, err = nba(capsys, "customers", "erase", CUSTOMER, "--redis-url", redis_url)

    assert code == 1
    assert "stdin is not a terminal" in err and "--yes" in err
    assert redis_client.exists(keys.profile(CUSTOMER))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_erase_on_a_terminal_asks_for_the_customer_id(capsys, redis_url, redis_client, stored, monkeypatch):
    monkeypatch.setattr("sys.stdin", _Terminal("no\n"))
    code, _, err = nba(capsys, "customers", "erase", CUSTOMER, "--redis-url", redis_url)
    assert code == 1 and "not confirmed" in err
    assert redis_client.exists(keys.profile(CUSTOMER))

    monkeypatch.setattr("sys.stdin", _Terminal(CUSTOMER + "\n"))
    code, out, err = nba(capsys, "customers", "erase", CUSTOMER, "--redis-url", redis_url)
    assert code == 0, err
    assert "erased (3 decisions deleted)" in out
    assert not redis_client.exists(keys.profile(CUSTOMER))
