"""``nba campaign``: run the sample campaign over the demo customers; status, history, suspend, resume, export."""

from __future__ import annotations

import json

import pytest

from nba_service.campaigns.run import RunReport
from nba_service.cli import main
from nba_service.store import keys
from tests.campaigns.test_campaign_run import run_campaign
from tests.conftest import SAMPLE_POLICIES


def nba(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def demo(capsys, redis_client, redis_url) -> str:
    assert nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url)[0] == 0
    code, out, _ = nba(capsys, "customers", "load", str(SAMPLE_POLICIES / "customers.jsonl"), "--redis-url", redis_url)
    assert code == 0 and "400 rows loaded" in out
    return redis_url


def test_the_sample_campaign_previews_runs_and_reports(capsys, demo, redis_client, tmp_path):
    code, out, err = nba(capsys, "campaign", "run", "overdraft_cross_sell", "--dry-run", "--redis-url", demo)
    assert code == 0, err
    assert "dry run (nothing written)" in out and "in segment 147  decided 147" in out
    assert "overdraft_protection" in out and "scanned 400" in err  # the progress line
    assert not redis_client.exists(keys.deliveries("push"), keys.deliveries("email"), keys.deliveries("sms"))

    figures = tmp_path / "run.json"
    code, out, _ = nba(
        capsys,
        "campaign",
        "run",
        "overdraft_cross_sell",
        "--limit",
        "30",
        "--export",
        str(tmp_path / "out"),
        "--json",
        str(figures),
        "--redis-url",
        demo,
    )
    assert code == 0 and "status: done (--limit)" in out
    report = json.loads(figures.read_text())
    assert report["decided"] == 30 and report["delivered_total"] > 0
    exported = {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in (tmp_path / "out").iterdir()}
    assert {c: len(rows) for c, rows in exported.items()} == report["delivered"]
    for channel, rows in exported.items():
        assert len(rows) == redis_client.xlen(keys.deliveries(channel))
        assert all(r["channel"] == channel and r["content"]["body"] for r in rows)

    code, out, _ = nba(capsys, "campaign", "status", "--redis-url", demo)
    assert code == 0 and f"run {report['run_id']}" in out and "decided 30" in out
    code, out, _ = nba(capsys, "campaign", "history", "overdraft_cross_sell", "--redis-url", demo)
    assert code == 0 and report["run_id"] in out and " done " in out
    code, _, err = nba(capsys, "campaign", "resume", "overdraft_cross_sell", "--redis-url", demo)
    assert code == 1 and "no run to resume" in err
    code, _, err = nba(capsys, "campaign", "run", "no_such", "--redis-url", demo)
    assert code == 1 and "no campaign 'no_such'" in err


def test_suspend_and_resume(capsys, demo, redis_client):
    def interrupted(report: RunReport) -> None:
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        run_campaign(demo, "overdraft_cross_sell", batch_size=50, progress=interrupted)
    code, out, _ = nba(capsys, "campaign", "suspend", "overdraft_cross_sell", "--redis-url", demo)
    assert code == 0 and "suspended" in out
    code, _, err = nba(capsys, "campaign", "run", "overdraft_cross_sell", "--redis-url", demo)
    assert code == 1 and "is suspended: `nba campaign resume overdraft_cross_sell` continues it" in err
    code, out, _ = nba(capsys, "campaign", "resume", "overdraft_cross_sell", "--redis-url", demo)
    assert code == 0 and "status: done" in out and "in segment 147  decided 147" in out
    code, _, err = nba(capsys, "campaign", "suspend", "overdraft_cross_sell", "--redis-url", demo)
    assert code == 1 and "is done" in err
