"""Exclusive runs: one process at a time runs or resumes a campaign (its lease in Redis), and a dead process's
lease lapses so ``resume`` continues its run (nba_service/campaigns/lease.py). Two real runners each time: one
in this process or a child, and ``nba campaign`` as a second process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from nba_service.campaigns.run import RunReport, RunStore
from nba_service.store import keys
from tests.campaigns.test_campaign_run import delivered_customers, run_campaign
from tests.conftest import ROOT, SAMPLE_POLICIES, TEST_REDIS_MODE, wait_until

CAMPAIGN = "overdraft_cross_sell"
IN_SEGMENT = 147  # of the 400 demo customers


def nba(*args: str) -> subprocess.CompletedProcess[str]:
    """``nba ARGS`` as a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "nba_service.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.fixture
def demo(redis_client: Any, redis_url: str) -> str:
    assert nba("policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url).returncode == 0
    loaded = nba("customers", "load", str(SAMPLE_POLICIES / "customers.jsonl"), "--redis-url", redis_url)
    assert loaded.returncode == 0, loaded.stderr
    return redis_url


def test_a_second_runner_is_refused_while_the_first_works_naming_the_run_and_its_process(demo, redis_client):
    paused, go_on = threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def hold(report: RunReport) -> None:  # the first runner stops after its first batch until told to go on
        result.setdefault("run_id", report.run_id)
        paused.set()
        assert go_on.wait(60)

    def first() -> None:
        try:
            result["report"] = run_campaign(demo, CAMPAIGN, batch_size=50, progress=hold)
        except BaseException as exc:
            result["error"] = exc
            paused.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert paused.wait(60) and "error" not in result, result.get("error")
        run_id = result["run_id"]
        holder = redis_client.get(keys.campaign_lease(CAMPAIGN)).decode()
        assert holder.partition("#")[0].endswith(f":{os.getpid()}")  # this process holds it
        for command in ("run", "resume"):
            second = nba("campaign", command, CAMPAIGN, "--redis-url", demo)
            assert second.returncode == 1
            assert f"run {run_id} of {CAMPAIGN} is running in process " in second.stderr
            assert f":{os.getpid()}: wait for it to end" in second.stderr
        previewed = nba("campaign", "run", CAMPAIGN, "--dry-run", "--redis-url", demo)  # a dry run writes nothing
        assert previewed.returncode == 0 and "dry run (nothing written)" in previewed.stdout
    finally:
        go_on.set()
        thread.join(120)
    report = result["report"]
    assert report.status == "done" and report.decided == IN_SEGMENT
    assert not redis_client.exists(keys.campaign_lease(CAMPAIGN))  # released at the end
    assert len(delivered_customers(redis_client)) == len(set(delivered_customers(redis_client)))
    again = nba("campaign", "run", CAMPAIGN, "--redis-url", demo)  # a new run may start: it reaches nobody new
    assert again.returncode == 0 and "already_reached" in again.stdout


KILLED_RUNNER = textwrap.dedent(
    """
    import asyncio, sys, threading
    from nba_service.campaigns.run import CampaignRunner, find_campaign
    from nba_service.campaigns.session import campaign_session
    from nba_service.settings import Settings
    from nba_service.store.connect import RedisMode, RedisTarget

    url, mode = sys.argv[1], sys.argv[2]

    def stall(report):
        print(report.run_id, flush=True)
        threading.Event().wait()  # after the first batch: until killed

    async def go():
        settings = Settings(redis_url=url, redis_mode=mode, strategy="epsilon", epsilon=0.0, seed=1)
        async with campaign_session(settings, RedisTarget(url=url, mode=RedisMode(mode))) as (dataplane, client):
            runner = CampaignRunner(dataplane, client, find_campaign(dataplane.snapshot, "overdraft_cross_sell"),
                                    batch_size=50, progress=stall, lease_ttl_ms=1000)
            await runner.run()

    asyncio.run(go())
    """
)


def test_a_killed_runners_lease_lapses_and_resume_continues_its_run(demo, redis_client):
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUNNER, demo, TEST_REDIS_MODE], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()  # its first batch is checkpointed
        assert run_id, "the runner ended before its first batch"
        refused = nba("campaign", "resume", CAMPAIGN, "--redis-url", demo)
        assert refused.returncode == 1  # the child renews its lease every 1/3 s while it lives
        assert f"run {run_id} of {CAMPAIGN} is running in process " in refused.stderr
        assert f":{child.pid}: wait for it to end" in refused.stderr
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    wait_until(lambda: not redis_client.exists(keys.campaign_lease(CAMPAIGN)), 30, "the dead runner's lease to lapse")
    stored = RunStore(redis_client).load(CAMPAIGN, run_id)
    assert stored is not None and stored.status == "running" and stored.decided < IN_SEGMENT
    resumed = nba("campaign", "resume", CAMPAIGN, "--redis-url", demo)
    assert resumed.returncode == 0, resumed.stderr
    assert "status: done" in resumed.stdout and f"in segment {IN_SEGMENT}  decided {IN_SEGMENT}" in resumed.stdout
    customers = delivered_customers(redis_client)
    assert len(customers) == len(set(customers))
    final = RunStore(redis_client).load(CAMPAIGN, run_id)
    assert final is not None and final.total_delivered == len(customers)
