"""A campaign run over several worker processes (``--workers``): the same totals and exact volume limits as
one process, no customer twice, and a run whose worker dies resumed to the same totals
(nba_service/campaigns/workers.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis

from nba_service.campaigns.run import CampaignRunner, RunReport, RunStateError, RunStore
from nba_service.campaigns.workers import share_pattern
from nba_service.store import keys
from tests.campaigns.test_campaign_run import (
    campaign_yaml,
    customer,
    daytime_zone,
    delivered_customers,
    load,
    publish,
    run_campaign,
    target,
)


def flush(client: redis.Redis) -> None:
    if hasattr(client, "get_primaries"):
        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.flushall()


def claims(client: redis.Redis, campaign: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{keys.PREFIX}*:campaign:{campaign}", count=1000))


def test_the_shares_split_every_bucket_once():
    for shares in (1, 2, 3, 16):
        digits = [share_pattern(i, shares).split("[")[1].split("]")[0] for i in range(shares)]
        assert sorted("".join(digits)) == sorted("0123456789abcdef")  # each first hex digit in one share
    assert all(tag[0] in "02468ace" for tag in keys.BUCKET_TAGS[0::32])  # buckets 0, 32, ... start even


@pytest.mark.parametrize(
    ("limits", "figures"),
    [
        ("{max_per_channel: {push: 300, sms: 150}}", ("scanned", "in_segment", "decided", "delivered")),
        ("{max_per_channel: {push: 200}, max_total: 500}", ("decided", "delivered", "ended")),
    ],
    ids=["channel_limits", "max_total"],
)
def test_workers_reach_the_totals_and_exact_limits_of_one_process(redis_client, redis_url, limits, figures):
    profiles = [customer(i, timezone=daytime_zone()) for i in range(3000)]
    results: list[tuple[RunReport, list[str], int]] = []
    for workers in (1, 2):
        flush(redis_client)
        publish(redis_client, campaign_yaml(limits=limits))
        load(redis_client, profiles)
        report = run_campaign(redis_url, "test_cross_sell", batch_size=200, workers=workers, target=target(redis_url))
        results.append((report, delivered_customers(redis_client), claims(redis_client, "test_cross_sell")))
    (one, one_sent, one_claims), (two, two_sent, two_claims) = results
    assert len(one_sent) == len(set(one_sent)) == one.total_delivered
    assert list(two.cursors) == [f"{node}|{i}/2" for i in range(2) for node in one.cursors]  # a checkpoint a share
    assert one.delivered["push"] == two.delivered["push"] == (300 if "sms" in limits else 200)
    assert [getattr(two, f) for f in figures] == [getattr(one, f) for f in figures]
    assert two.status == "done" and len(two_sent) == len(set(two_sent)) == two.total_delivered  # no one twice
    assert two_claims == one_claims == len(two_sent)  # every customer delivered to holds the claim
    stored = RunStore(redis_client).latest("test_cross_sell")
    assert stored is not None and stored.delivered == two.delivered and stored.decided == two.decided


@pytest.mark.parametrize("dies", ["before_its_batch", "after_its_batch"])
def test_a_run_whose_worker_dies_is_resumed_to_the_same_totals(redis_client, redis_url, monkeypatch, dies):
    limits = "{max_per_channel: {push: 300}}"
    profiles = [customer(i, timezone=daytime_zone()) for i in range(3000)]
    publish(redis_client, campaign_yaml(limits=limits))
    load(redis_client, profiles)
    whole = run_campaign(redis_url, "test_cross_sell", batch_size=200, workers=2, target=target(redis_url))

    flush(redis_client)
    publish(redis_client, campaign_yaml(limits=limits))
    load(redis_client, profiles)
    batch = CampaignRunner._batch
    calls = []

    async def dying(runner: CampaignRunner, *args: Any) -> Any:  # the worker of share 1 dies at its 3rd batch:
        calls.append(1)  # scanned, nothing claimed yet; or recorded and delivered, its checkpoint not sent
        last = runner._match == share_pattern(1, 2) and len(calls) == 3
        if last and dies == "before_its_batch":
            os._exit(9)
        result = await batch(runner, *args)
        if last:
            os._exit(9)
        return result

    monkeypatch.setattr(CampaignRunner, "_batch", dying)  # the workers are forked with it
    with pytest.raises(RunStateError, match=r"worker 1 died .*nba campaign resume test_cross_sell"):
        run_campaign(redis_url, "test_cross_sell", batch_size=200, workers=2, target=target(redis_url))
    monkeypatch.setattr(CampaignRunner, "_batch", batch)
    stopped = RunStore(redis_client).latest("test_cross_sell")
    assert stopped is not None and stopped.status == "running" and 0 < stopped.decided < whole.decided
    resumed = run_campaign(redis_url, "test_cross_sell", batch_size=200, resume=True, target=target(redis_url))
    sent = delivered_customers(redis_client)
    assert len(sent) == len(set(sent))  # no customer twice
    assert resumed.run_id == stopped.run_id and resumed.status == "done"
    streams = {c: redis_client.xlen(keys.deliveries(c)) for c in ("push", "sms", "email", "app_inbox")}
    assert {c: n for c, n in streams.items() if n} == dict(resumed.delivered)  # the figures are the deliveries
    figures = ("scanned", "in_segment", "decided", "total_delivered")
    assert [getattr(resumed, f) for f in figures] == [getattr(whole, f) for f in figures]
    assert resumed.delivered == whole.delivered and resumed.delivered["push"] == 300


def test_a_suspended_run_over_workers_stops_and_resumes_each_share(redis_client, redis_url):
    publish(redis_client, campaign_yaml(limits="{max_per_channel: {push: 300}}"))
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(3000)])
    seen: list[int] = []

    def suspend_after_two(report: RunReport) -> None:
        seen.append(report.scanned)
        if len(seen) == 2:
            RunStore(redis_client).set_status("test_cross_sell", "suspended", expect=("running",))

    suspended = run_campaign(
        redis_url, "test_cross_sell", batch_size=200, workers=2, target=target(redis_url), progress=suspend_after_two
    )
    assert suspended.status == "suspended" and any(c > 0 for c in suspended.cursors.values())
    assert suspended.decided < 1350
    resumed = run_campaign(redis_url, "test_cross_sell", batch_size=200, resume=True, target=target(redis_url))
    sent = delivered_customers(redis_client)
    assert resumed.status == "done" and resumed.in_segment == resumed.decided == 1350  # every other one, not 20th
    assert len(sent) == len(set(sent)) == resumed.total_delivered == 1350 and resumed.delivered["push"] == 300
