"""Campaign runs over a real Redis: the segment, volume limits, caps, deliveries, night sends, kill and resume,
dry runs and learning (nba_service/campaigns/run.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from nba_service.campaigns.metrics import CampaignMetrics
from nba_service.campaigns.run import CampaignRunner, RunReport, RunStore, find_campaign
from nba_service.campaigns.session import campaign_session
from nba_service.domain import CustomerProfile, DecisionRequest, Event, OutcomeKind
from nba_service.domain.localtime import local_time
from nba_service.learning.learner import Learner
from nba_service.learning.models import ModelBank
from nba_service.policies.parser import read_policy_dir
from nba_service.settings import Settings
from nba_service.store import codec, keys
from nba_service.store.connect import RedisMode, RedisTarget
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, TEST_REDIS_MODE, daytime_zone, night_zone

SEGMENT = "holds('current_account') and holds('credit_card') and not holds('overdraft_protection')"
CHANNELS = ("push", "sms", "email", "app_inbox")


def campaign_yaml(
    campaign_id: str = "test_cross_sell", limits: str = "{}", window: str = '{start: "09:00", end: "20:00"}'
) -> str:
    return f"""campaigns:
  - id: {campaign_id}
    segment: "{SEGMENT}"
    offers: [overdraft_protection]
    event: atm_decline
    event_fields: {{balance: 0, currency: EUR}}
    limits: {limits}
    send_window: {window}
"""


def publish(client: redis.Redis, extra: str) -> None:
    files = read_policy_dir(SAMPLE_POLICIES)
    files["zz_campaigns.yaml"] = extra
    PolicyStore(client).publish(files, author="tests", message="campaign")


def customer(i: int, *, timezone: str, credit_score: str = "720", atm_consent: bool = True) -> CustomerProfile:
    holdings = {"current_account"}
    if i % 2 == 0:
        holdings.add("credit_card")
    if i % 20 == 0:
        holdings.add("overdraft_protection")
    consents = dict.fromkeys(CHANNELS, True) | {"atm_screen": atm_consent}
    return CustomerProfile(
        customer_id=f"k{i:06d}",
        first_name="Ana",
        segment="mass",
        preferred_channel="push",
        reachable_channels=frozenset(CHANNELS),
        consents=consents,
        timezone=timezone,
        attributes={"credit_score": credit_score},
        holdings=frozenset(holdings),
    )


def in_segment(i: int) -> bool:
    return i % 2 == 0 and i % 20 != 0


def load(client: redis.Redis, profiles: list[CustomerProfile]) -> None:
    pipe = client.pipeline(transaction=False)
    for p in profiles:
        pipe.set(keys.profile(p.customer_id), codec.encode_profile(p))
    pipe.execute()


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, redis_mode=TEST_REDIS_MODE, strategy="epsilon", epsilon=0.0, seed=1)


def target(redis_url: str) -> RedisTarget:
    return RedisTarget(url=redis_url, mode=RedisMode(TEST_REDIS_MODE))


def run_campaign(
    redis_url: str,
    name: str,
    *,
    dry_run: bool = False,
    resume: bool = False,
    batch_size: int = 1000,
    progress: Callable[[RunReport], None] | None = None,
    before: Callable[[Any], Any] | None = None,
    patch: Callable[[CampaignRunner], None] | None = None,
    **options: Any,
) -> RunReport:
    async def go() -> RunReport:
        async with campaign_session(settings(redis_url), target(redis_url)) as (dataplane, client):
            if before is not None:
                await before(dataplane)
            runner = CampaignRunner(
                dataplane,
                client,
                find_campaign(dataplane.snapshot, name),
                batch_size=batch_size,
                progress=progress,
                **options,
            )
            if patch is not None:
                patch(runner)
            return await runner.run(runner.resumable() if resume else None, dry_run=dry_run)

    return asyncio.run(go())


def deliveries(client: redis.Redis) -> dict[str, list[dict[str, str]]]:
    out = {}
    for channel in CHANNELS:
        entries = client.xrange(keys.deliveries(channel))
        out[channel] = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    return out


def delivered_customers(client: redis.Redis) -> list[str]:
    return [d["customer_id"] for entries in deliveries(client).values() for d in entries]


def redis_state(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in sorted(client.scan_iter(count=1000))}


def test_a_campaign_decides_exactly_the_segment_within_its_limits_and_caps(redis_client, redis_url):
    publish(redis_client, campaign_yaml(limits="{max_per_channel: {push: 5000}}"))
    zone = daytime_zone()
    n = 20_000
    profiles = [customer(i, timezone=zone) for i in range(n)]
    # customers in the segment contacted today by a live decision (overdraft protection on an outbound
    # channel after an ATM decline: no ATM-screen consent, a credit score too low for the loans)
    capped = [f"k{i:06d}" for i in range(2, 400, 20)]
    for i in range(2, 400, 20):
        profiles[i] = customer(i, timezone=zone, credit_score="540", atm_consent=False)
    load(redis_client, profiles)

    async def live_decisions(dataplane: Any) -> None:
        for cid in capped:
            event = Event("atm_decline", {"amount": 100.0, "balance": 20.0, "shortfall": 80.0, "currency": "EUR"})
            recorded = await dataplane.decide(DecisionRequest(cid, event, "atm"))
            assert (recorded.decision.offer_id, recorded.decision.channel in CHANNELS) == ("overdraft_protection", True)

    report = run_campaign(redis_url, "test_cross_sell", before=live_decisions)

    segment = {f"k{i:06d}" for i in range(n) if in_segment(i)}
    assert (report.status, report.scanned, report.in_segment, report.decided) == ("done", n, len(segment), len(segment))
    sent = deliveries(redis_client)
    customers = delivered_customers(redis_client)
    assert len(customers) == len(set(customers)) == report.total_delivered  # one delivery per customer at most
    assert set(customers) <= segment - set(capped)  # only the segment, never a customer capped today
    assert report.suppressed["already_reached"] == 0 and sum(report.suppressed.values()) == len(segment) - len(
        customers
    )
    assert len(sent["push"]) == report.delivered["push"] == 5000  # the volume limit of the channel ...
    assert report.delivered["email"] > 0  # ... then the customers' next best channel
    assert {c: len(e) for c, e in sent.items() if e} == dict(report.delivered)
    first = sent["email"][0]
    content = json.loads(first["content"])
    assert first["offer_id"] == "overdraft_protection" and "overdraft protection" in content["body"]
    assert content["subject"] and first["campaign"] == "test_cross_sell" and first["run_id"] == report.run_id
    decision = redis_client.hgetall(keys.decision(first["decision_id"]))
    assert decision[b"customer_id"].decode() == first["customer_id"] and decision[b"channel"] == b"email"
    assert json.loads(decision[b"meta"])["event_type"] == "campaign"
    assert float(first["deliver_after"]) <= report.updated  # daytime, inside the window: now

    # running it again delivers nothing new: every customer reached is claimed (no repeat_after)
    again = run_campaign(redis_url, "test_cross_sell")
    assert again.total_delivered == 0 and again.suppressed["already_reached"] == len(customers)
    assert len(delivered_customers(redis_client)) == len(customers)


def test_a_run_counts_its_figures_as_prometheus_metrics(redis_client, redis_url):
    publish(redis_client, campaign_yaml(limits="{max_per_channel: {push: 10}}"))
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(200)])
    metrics = CampaignMetrics(CollectorRegistry())
    report = run_campaign(redis_url, "test_cross_sell", metrics=metrics)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"campaign": "test_cross_sell", **labels})

    assert sample("nba_campaign_customers_total", stage="scanned") == report.scanned == 200
    assert sample("nba_campaign_customers_total", stage="decided") == report.decided
    assert sample("nba_campaign_deliveries_total", channel="push") == 10
    assert sum(sample("nba_campaign_deliveries_total", channel=c) or 0 for c in CHANNELS) == report.total_delivered
    assert sample("nba_campaign_running") == 0


def test_night_time_sends_are_deferred_to_each_customers_morning(redis_client, redis_url):
    publish(redis_client, campaign_yaml())
    zones = [night_zone(23), night_zone(2)]
    load(redis_client, [customer(i, timezone=zones[i % 4 // 2]) for i in range(400)])
    report = run_campaign(redis_url, "test_cross_sell")
    sent = [d for entries in deliveries(redis_client).values() for d in entries]
    assert len(sent) == report.total_delivered > 0
    zone_of = {f"k{i:06d}": zones[i % 4 // 2] for i in range(400)}
    for d in sent:
        zone = zone_of[d["customer_id"]]
        when = local_time(float(d["deliver_after"]), zone)
        assert (when.hour, when.minute) == (9, 0)  # the send window's start, not dropped
        hours = (float(d["deliver_after"]) - report.started) / 3600
        assert 0 < hours < 11  # the coming morning


def test_a_channel_that_drops_at_night_is_judged_at_the_morning_send(redis_client, redis_url):
    """SMS drops in its quiet hours (21:00-08:00, ``on_quiet_hours: drop``); a campaign run at 23:00 local
    time sends at 09:00, outside them: the SMS-only customers get their SMS then, they are not left out."""
    publish(redis_client, campaign_yaml())
    zone = night_zone(23)
    sms_only = {c: c == "sms" for c in CHANNELS} | {"atm_screen": False}
    load(redis_client, [dataclasses.replace(customer(i, timezone=zone), consents=sms_only) for i in range(0, 80, 2)])
    report = run_campaign(redis_url, "test_cross_sell")
    sent = deliveries(redis_client)["sms"]
    assert report.suppressed.get("nothing_allowed", 0) == 0
    assert len(sent) == report.total_delivered == sum(in_segment(i) for i in range(0, 80, 2))
    assert {(local_time(float(d["deliver_after"]), zone).hour) for d in sent} == {9}


def test_a_campaign_weights_no_deferred_push(redis_client, redis_url):
    """The sample's push has ``defer_weight: 0.5`` (a push read in the morning is worth half a message seen at a
    live moment). A campaign has no such moment: run at 23:00 with a send window open then, its push (preferred,
    2.4) still beats the e-mail (2), and waits for 08:00, as it would at any hour of the run."""
    publish(redis_client, campaign_yaml(window='{start: "20:00", end: "19:00"}'))
    zone = night_zone(23)
    load(redis_client, [customer(i, timezone=zone) for i in range(0, 80, 2)])
    report = run_campaign(redis_url, "test_cross_sell")
    sent = deliveries(redis_client)
    assert len(sent["push"]) == report.total_delivered == sum(in_segment(i) for i in range(0, 80, 2))
    assert {(local_time(float(d["deliver_after"]), zone).hour) for d in sent["push"]} == {8}  # quiet hours' end


@pytest.mark.parametrize("dies", ["after_checkpoint", "before_checkpoint", "before_checkpoint_read_later"])
def test_a_run_killed_mid_way_and_resumed_delivers_once_with_the_same_totals(redis_client, redis_url, dies):
    """Killed after a checkpoint, or with a batch written and its checkpoint not: the resumed run ends with the
    totals of an uninterrupted one. ``read_later``: the rescan returns that batch's push customers two pages later,
    after new customers (as a cluster node's rescan does when its table grew meanwhile): the push limit holds."""
    publish(redis_client, campaign_yaml(limits="{max_per_channel: {push: 300}}"))
    profiles = [customer(i, timezone=daytime_zone()) for i in range(3000)]
    load(redis_client, profiles)
    whole = run_campaign(redis_url, "test_cross_sell", batch_size=200)
    whole_sent = delivered_customers(redis_client)

    redis_client.flushall() if not hasattr(redis_client, "get_primaries") else redis_client.flushall(
        target_nodes=redis.RedisCluster.PRIMARIES
    )
    publish(redis_client, campaign_yaml(limits="{max_per_channel: {push: 300}}"))
    load(redis_client, profiles)
    batches = []

    def killed(report: RunReport) -> None:  # the process dies after its 4th checkpoint
        batches.append(report.scanned)
        if len(batches) == 4:
            raise KeyboardInterrupt("killed")

    def dies_before_checkpoint(runner: CampaignRunner) -> None:  # ... or with its 4th batch written, unsaved
        save = runner.store.save

        def save_or_die(report: RunReport, **how: Any) -> None:
            batches.append(report.scanned)
            if len(batches) == 5:  # the first save creates the run
                raise KeyboardInterrupt("killed")
            save(report, **how)

        runner.store.save = save_or_die  # type: ignore[method-assign]

    def read_push_later(runner: CampaignRunner) -> None:  # the batch's push customers come a page later
        scan, pages, held_back = runner._scan, [], []

        def scan_deferring(node: str, cursor: int) -> tuple[int, list[bytes]]:
            next_cursor, found = scan(node, cursor)
            pages.append(node)
            if len(pages) == 1:  # the unsaved batch, scanned again
                pipe = redis_client.pipeline(transaction=False)
                for key in found:
                    customer_id = key.decode().split("}:c:")[1].removesuffix(":profile")
                    pipe.get(keys.campaign_claim(customer_id, "test_cross_sell"))
                claims = pipe.execute()
                held_back.extend(k for k, claim in zip(found, claims, strict=True) if b"|push|" in (claim or b""))
                assert held_back and next_cursor
                return next_cursor, [k for k in found if k not in held_back]
            if len(pages) == 3:  # ... its push customers after the next page's new ones
                return next_cursor, found + held_back
            return next_cursor, found

        runner._scan = scan_deferring  # type: ignore[method-assign]

    options: dict[str, Any] = {"progress": killed} if dies == "after_checkpoint" else {"patch": dies_before_checkpoint}
    with pytest.raises(KeyboardInterrupt):
        run_campaign(redis_url, "test_cross_sell", batch_size=200, **options)
    stopped = RunStore(redis_client).latest("test_cross_sell")
    assert stopped is not None and stopped.status == "running" and 0 < stopped.decided < whole.decided
    if dies != "after_checkpoint":  # the unsaved batch's push actions are held against the limit
        assert stopped.held["push"] > 0 and stopped.delivered["push"] + stopped.held["push"] <= 300
    # the batch in flight when it died: its customers claimed, some delivered, the checkpoint not written
    later = {"patch": read_push_later} if dies == "before_checkpoint_read_later" else {}
    resumed = run_campaign(redis_url, "test_cross_sell", batch_size=200, resume=True, **later)
    sent = delivered_customers(redis_client)
    assert len(sent) == len(set(sent))  # no customer twice
    assert resumed.run_id == stopped.run_id and resumed.status == "done"
    figures = ("scanned", "in_segment", "decided", "total_delivered")
    assert [getattr(resumed, f) for f in figures] == [getattr(whole, f) for f in figures]
    assert resumed.delivered == whole.delivered and len(sent) == len(whole_sent)


def test_a_dry_run_writes_nothing_and_counts_by_offer_and_channel(redis_client, redis_url):
    publish(redis_client, campaign_yaml(limits="{max_per_channel: {push: 100}}"))
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(1000)])
    before = redis_state(redis_client)
    report = run_campaign(redis_url, "test_cross_sell", dry_run=True)
    assert redis_state(redis_client) == before
    assert report.dry_run and report.in_segment == sum(1 for i in range(1000) if in_segment(i))
    assert report.delivered["push"] == 100 and report.by_offer["overdraft_protection|push"] == 100
    assert report.total_delivered > 100  # the others on their next best channel


def test_an_outcome_of_a_campaign_decision_is_learned_like_a_live_one(redis_client, redis_url):
    publish(redis_client, campaign_yaml())
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(40)])
    run_campaign(redis_url, "test_cross_sell")
    first = next(d for entries in deliveries(redis_client).values() for d in entries)

    async def report_outcome() -> None:
        async with campaign_session(settings(redis_url), target(redis_url)) as (dataplane, _):
            recorded = await dataplane.report_outcome(first["decision_id"], OutcomeKind.ACCEPTED, 1.0)
            assert recorded.learn and recorded.offer_id == "overdraft_protection"

    asyncio.run(report_outcome())
    learner = Learner(redis_client, name="l", snapshot_every=1, block_ms=1)
    assert learner.step() == 1
    learner.publish()
    models = ModelBank.from_bytes(ModelStore(redis_client).load())
    assert models.updates == 1
    assert datetime.datetime.now(datetime.UTC)  # the learner published a version with the campaign's outcome


def test_a_suspend_written_while_a_batch_works_stops_the_run_after_that_batch(redis_client, redis_url):
    """``nba campaign suspend`` from another process lands while a batch is being decided: the batch's
    checkpoint must not write the run's status back to running, and the run stops after it."""
    publish(redis_client, campaign_yaml())
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(2000)])
    pages = []

    def suspend_during_second_batch(runner: CampaignRunner) -> None:
        scan = runner._scan

        def scan_then_suspend(node: str, cursor: int) -> tuple[int, list[bytes]]:
            pages.append(cursor)
            if len(pages) == 2:  # as another process would, while this batch is decided
                RunStore(redis_client).set_status("test_cross_sell", "suspended", expect=("running",))
            return scan(node, cursor)

        runner._scan = scan_then_suspend  # type: ignore[method-assign]

    report = run_campaign(redis_url, "test_cross_sell", batch_size=200, patch=suspend_during_second_batch)
    assert report.status == "suspended" and 0 < report.scanned < 2000
    stored = RunStore(redis_client).latest("test_cross_sell")
    assert stored is not None and stored.status == "suspended" and stored.scanned == report.scanned
    resumed = run_campaign(redis_url, "test_cross_sell", resume=True, batch_size=200)
    assert resumed.status == "done" and resumed.scanned == 2000


@pytest.mark.parametrize("budgeted", [False, True])
def test_a_write_redis_fails_leaves_its_customer_for_a_later_run_and_the_batch_is_delivered(
    redis_client, redis_url, caplog, budgeted
):
    """One customer's write answers an error (here WRONGTYPE: their decision index is a string): that customer
    is not delivered, counted as ``write_failed`` and their claim released; the rest of the batch is delivered
    once. Once the key is fixed, the next run reaches them and nobody else. With a budget on the offer (each
    write reserves its unit first), the failed write's unit is given back."""
    if budgeted:
        files = read_policy_dir(SAMPLE_POLICIES)
        anchor = "    prior: 0.05\n    channels: [push, atm_screen, sms, email]\n"
        files["bank.yaml"] = files["bank.yaml"].replace(anchor, anchor + "    budget: {max: 1000, per: 1d}\n")
        files["zz_campaigns.yaml"] = campaign_yaml()
        PolicyStore(redis_client).publish(files, author="tests", message="campaign with a budget")
    else:
        publish(redis_client, campaign_yaml())
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(40)])
    segment = {f"k{i:06d}" for i in range(40) if in_segment(i)}
    poisoned = ["k000004", "k000006"]
    for cid in poisoned:
        redis_client.set(keys.decision_index(cid), "not a sorted set")

    def budget_used(report: RunReport) -> int:
        windows = range(int(report.started // 86400), int(report.updated // 86400) + 1)
        return sum(int(redis_client.get(keys.budget("overdraft_protection", w)) or 0) for w in windows)

    with caplog.at_level("WARNING", logger="nba_service.campaigns.run"):
        report = run_campaign(redis_url, "test_cross_sell")
    assert report.status == "done" and report.in_segment == len(segment)
    assert report.suppressed["write_failed"] == 2 and report.decided == report.total_delivered == len(segment) - 2
    sent = delivered_customers(redis_client)
    assert sorted(sent) == sorted(segment - set(poisoned))  # every other customer, once
    claims = {cid: redis_client.get(keys.campaign_claim(cid, "test_cross_sell")) for cid in segment}
    assert sorted(cid for cid, claim in claims.items() if claim is None) == poisoned  # released
    failures = [r.getMessage() for r in caplog.records if "WRONGTYPE" in r.getMessage()]
    assert len(failures) == 1 and any(cid in failures[0] for cid in poisoned)  # one line, not one per customer
    if budgeted:
        assert budget_used(report) == len(segment) - 2  # the failed writes' units given back

    for cid in poisoned:
        redis_client.delete(keys.decision_index(cid))
    again = run_campaign(redis_url, "test_cross_sell")
    assert again.total_delivered == again.decided == 2 and again.suppressed["already_reached"] == len(segment) - 2
    sent = delivered_customers(redis_client)
    assert sorted(sent) == sorted(segment) and len(sent) == len(set(sent))  # the two reached, nobody twice
    if budgeted:
        assert budget_used(again) == len(segment)


def test_a_segment_reading_open_carts_sees_them(redis_client, redis_url):
    """``cart_open(...)`` reads the customer's open journeys: a segment using it is judged on the full context,
    not the profile alone (where no cart is ever open)."""
    publish(
        redis_client,
        """campaigns:
  - id: cart_recovery
    segment: "cart_open('c1')"
    offers: [overdraft_protection]
    event: atm_decline
    event_fields: {balance: 0, currency: EUR}
    limits: {}
    send_window: {start: "00:00", end: "23:59"}
""",
    )
    load(redis_client, [customer(i, timezone=daytime_zone()) for i in range(4)])

    async def cart_left(dataplane: Any) -> None:  # k000000 leaves cart c1 on the web; k000001 a cart c2
        for customer_id, cart in (("k000000", "c1"), ("k000001", "c2")):
            fields = {"cart_id": cart, "cart_value": 50.0, "currency": "EUR", "item_count": 1}
            await dataplane.decide(DecisionRequest(customer_id, Event("cart_abandon", fields), "web"))

    report = run_campaign(redis_url, "cart_recovery", dry_run=True, before=cart_left)

    assert (report.scanned, report.in_segment) == (4, 1)
