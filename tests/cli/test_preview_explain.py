"""`nba events generate`, `nba policy preview` and `nba explain` as a marketer runs them."""

from __future__ import annotations

import json
import math
import pathlib
import re
import shutil
import time

import pytest
import redis

from nba_service.api.event_log import read_requests, request_to_line, to_timed_request
from nba_service.cli import main
from nba_service.domain import CustomerProfile
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import codec, keys
from tests.conftest import SAMPLE_POLICIES, atm_decline, daytime_zone, profile

START = "2026-06-08T00:00:00Z"
EVENTS = 600


def nba(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def redis_state(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key and its serialized value: equal before and after means nothing was written."""
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


@pytest.fixture
def events(capsys, tmp_path) -> pathlib.Path:
    code, out, _ = nba(capsys, "events", "generate", "--count", str(EVENTS), "--seed", "3", "--start", START,
                       "--span", "7d", "--customers", str(SAMPLE_POLICIES / "customers.jsonl"))
    assert code == 0
    path = tmp_path / "events.jsonl"
    path.write_text(out)
    return path


@pytest.fixture
def customers(capsys, redis_url, published) -> None:
    code, _, _ = nba(capsys, "customers", "load", str(SAMPLE_POLICIES / "customers.jsonl"), "--redis-url", redis_url)
    assert code == 0


@pytest.fixture
def candidate(tmp_path) -> pathlib.Path:
    folder = tmp_path / "candidate"
    shutil.copytree(SAMPLE_POLICIES, folder)
    return folder


def edit(path: pathlib.Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def rows(out: str, prefix: str) -> tuple[int, int]:
    """Live and candidate totals of the 'decisions per offer and channel' rows of one offer."""
    live = candidate = 0
    for match in re.finditer(rf"^  {prefix} on \w+ +(\d+) +(\d+)", out, re.MULTILINE):
        live += int(match.group(1))
        candidate += int(match.group(2))
    return live, candidate


def section(out: str, title: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return [line.strip() for line in lines[start + 1:end]]


def test_generated_events_are_seeded_valid_and_spread(capsys, events):
    code, again, _ = nba(capsys, "events", "generate", "--count", str(EVENTS), "--seed", "3", "--start", START,
                         "--span", "7d", "--customers", str(SAMPLE_POLICIES / "customers.jsonl"))
    assert again == events.read_text()
    _, other, _ = nba(capsys, "events", "generate", "--count", str(EVENTS), "--seed", "4", "--start", START,
                      "--span", "7d", "--customers", str(SAMPLE_POLICIES / "customers.jsonl"))
    assert other != again

    moments = [to_timed_request(r) for r in read_requests(events)]  # every line passes the API's checks
    assert len(moments) == EVENTS
    times = [m.timestamp for m in moments]
    start = 1780876800.0  # 2026-06-08T00:00:00Z
    assert times == sorted(times) and start <= times[0] and times[-1] < start + 7 * 86400
    assert {m.request.event.type for m in moments} == {"atm_decline", "location", "cart_abandon", "app_open", "page_view",
                                               "agent_contact", "custom"}


def test_preview_of_a_raised_lever_shows_more_decisions_of_its_offers(capsys, redis_url, redis_client, customers,
                                                                      events, candidate):
    edit(candidate / "settings.yaml", "      savings: 1.1 ", "      savings: 2.0 ")
    before = redis_state(redis_client)

    code, out, err = nba(capsys, "policy", "preview", str(candidate), "--events", str(events),
                         "--customers-from-redis", "--redis-url", redis_url)

    assert code == 0, err
    assert redis_state(redis_client) == before  # read only: no contact counted, no journey written
    assert f"preview of {candidate} against policy version 1 (live)" in out
    assert re.search(r"customers: \d+ found in Redis, \d+ unknown", out)
    live, raised = rows(out, "savings_goal")
    assert raised > live
    assert section(out, "offers that became unreachable") == ["none"]
    changed = int(re.search(r"changed decisions: (\d+) of 600", out).group(1))
    assert 0 < changed < EVENTS
    assert "candidate: savings_goal on " in out  # the sample shows the new choices
    assert re.search(r"savings_goal: ranked lower, priority [\d.]+ on \w+", out)  # ... and why live did not pick it


def test_preview_of_a_paused_offer_shows_it_unreachable(capsys, redis_url, customers, events, candidate):
    bank = candidate / "bank.yaml"
    edit(bank, "    prior: 0.05\n    channels: [push, atm_screen, sms, email]", "    prior: 0.05\n    paused: true\n"
                                                                                "    channels: [push, atm_screen, sms, email]")

    code, out, _ = nba(capsys, "policy", "preview", str(candidate), "--events", str(events), "--customers-from-redis",
                       "--redis-url", redis_url)

    assert code == 0
    live, paused = rows(out, "overdraft_protection")
    assert live > 0 and paused == 0
    assert "overdraft_protection" in section(out, "offers that became unreachable")
    assert "overdraft_protection: not in this set (paused or removed)" in out


def test_preview_caps_bite_on_each_sides_own_decisions(capsys, redis_url, customers, events, candidate):
    edit(candidate / "settings.yaml", "    - {max: 4, per: 1d} ", "    - {max: 1, per: 1d} ")

    code, out, _ = nba(capsys, "policy", "preview", str(candidate), "--events", str(events), "--customers-from-redis",
                       "--redis-url", redis_url)

    assert code == 0
    summary = dict(re.findall(r"^(customers hitting a cap|with an action) +(\d+ +\d+)", out, re.MULTILINE))
    live_capped, candidate_capped = map(int, summary["customers hitting a cap"].split())
    live_actions, candidate_actions = map(int, summary["with an action"].split())
    assert candidate_capped > live_capped and candidate_actions < live_actions
    limits = dict((line.rsplit(maxsplit=3)[0], line.split()[-3:])
                  for line in section(out, "customers hitting a cap, by limit") if "more limits" not in line)
    assert limits["at most 1 per 1d"][0] == "0" and int(limits["at most 1 per 1d"][1]) > 0


def test_preview_without_stored_customers_uses_session_channels_only(capsys, redis_url, published, events, candidate):
    code, out, _ = nba(capsys, "policy", "preview", str(candidate), "--events", str(events), "--redis-url", redis_url)

    assert code == 0
    assert "customers: unknown-customer defaults" in out
    channels = set(re.findall(r"^  \w+ on (\w+) ", out, re.MULTILINE))
    assert channels and channels <= {"atm_screen", "web_banner", "agent_desktop"}
    assert "changed decisions: 0 of 600 (0.0%)" in out  # the same set decides the same


def test_preview_reports_refused_lines_and_a_missing_live_version(capsys, redis_url, redis_client, tmp_path, candidate):
    events = tmp_path / "events.jsonl"
    events.write_text('{"customer_id": "c00001", "origin_channel": "atm", "event": {"atm_decline": '
                      '{"amount": 100, "balance": 20, "currency": "EUR"}}}\n'
                      '{"customer_id": "c00001", "event": {"atm_decline": {"amount": -100}}}\n')
    code, _, err = nba(capsys, "policy", "preview", str(candidate), "--events", str(events), "--redis-url", redis_url)
    assert code == 1 and "no policy version is live yet" in err

    nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url)
    code, out, _ = nba(capsys, "policy", "preview", str(candidate), "--events", str(events), "--redis-url", redis_url)
    assert code == 2
    assert "1 line(s) of" in out and "line 2: event.atm_decline.amount: must not be negative" in out
    assert "decisions  1  1" in re.sub(" +", "  ", out)


MICRO_LOAN_LIMITS = "    limits:\n      - {max: 2, per: 30d}\n      - {channel: push, max: 1, per: 1d}\n"


def test_preview_suppresses_a_declined_offer_as_the_server_does(capsys, redis_url, redis_client, start_server,
                                                                  tmp_path):
    # micro_loan without its own limits (and lending not capped at 2 a week), so only its declines stop it;
    # live suppresses it after 2 declines in 30 days, the candidate only after 3
    sets = {}
    for name, declines in (("live", 2), ("candidate", 3)):
        folder = sets[name] = tmp_path / name
        shutil.copytree(SAMPLE_POLICIES, folder)
        edit(folder / "bank.yaml", MICRO_LOAN_LIMITS, f"    suppress_after: {{declines: {declines}, per: 30d}}\n")
        edit(folder / "settings.yaml", "{category: lending, max: 2, per: 7d}", "{category: lending, max: 9, per: 7d}")
    code, _, err = nba(capsys, "policy", "publish", str(sets["live"]), "--redis-url", redis_url)
    assert code == 0, err
    server = start_server()
    # a student with a fair score: the micro-loan is the best action for them at an ATM
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "s1", segment="student", channels=("push",), timezone=daytime_zone(), credit_score="600")), timeout=5)
    for _ in range(2):
        decision = server.stub.Decide(atm_decline("s1", amount=60, balance=10), timeout=5)
        assert decision.action.offer_id == "micro_loan"
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                    outcome=pb.OUTCOME_KIND_DECLINED), timeout=5)
    events = tmp_path / "events.jsonl"
    events.write_text(request_to_line(atm_decline("s1", amount=60, balance=10), time.time()) + "\n")

    code, out, err = nba(capsys, "policy", "preview", str(sets["candidate"]), "--events", str(events),
                         "--customers-from-redis", "--redis-url", redis_url)
    third = server.stub.Decide(atm_decline("s1", amount=60, balance=10), timeout=5)  # from the same stored state

    assert third.action.offer_id not in ("", "micro_loan")
    reason = next(r for r in third.reasons if r.offer_id == "micro_loan")
    assert (reason.code, reason.detail) == ("suppressed", "declined 2 times in 30d")
    assert code == 0, err
    assert "customers: 1 found in Redis, 0 unknown" in out
    assert rows(out, "micro_loan") == (0, 1)  # live (as the server) never chose it; the candidate still does
    assert rows(out, third.action.offer_id) == (1, 0)  # live chose what the server chose
    assert "changed decisions: 1 of 1" in out
    assert f"    v1: {third.action.offer_id} on {third.channel}, score " in out
    assert "      micro_loan: suppressed: declined 2 times in 30d" in out  # why live did not pick it
    assert re.search(r"^    candidate: micro_loan on \w+, score ", out, re.MULTILINE)  # channel: as the model learned


AT = "2026-06-10T14:00:00+02:00"  # afternoon in Madrid: no quiet hours


@pytest.fixture
def ana(redis_client, published) -> str:
    """A known customer who was offered overdraft protection two days ago."""
    profile = CustomerProfile("ana", "Ana", "mass", "push", frozenset({"push", "sms", "email"}),
                              {"push": True, "sms": False, "email": True}, "Europe/Madrid", {"credit_score": "720"})
    redis_client.set(keys.profile("ana"), codec.encode_profile(profile))
    two_days_ago = 1781092800.0 - 2 * 86400
    redis_client.zadd(keys.contacts("ana"), {codec.contact_member("d1", "overdraft_protection", "push", "lending"):
                                             two_days_ago})
    return "ana"


def test_explain_shows_each_candidate_what_filtered_it_and_the_numbers(capsys, redis_url, redis_client, ana):
    before = redis_state(redis_client)

    code, out, err = nba(capsys, "explain", "--customer", ana, "--event", "atm_decline", "--field", "amount=100",
                         "--field", "balance=20", "--field", "currency=EUR", "--origin", "atm", "--at", AT,
                         "--redis-url", redis_url)

    assert code == 0, err
    assert redis_state(redis_client) == before  # nothing recorded
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0].startswith("customer ana: Ana, segment mass, preferred channel push, local time Wed 2026-06-10 14:00")
    assert "1 contacts within the limit windows" in out
    status = {line.split()[1]: line for line in lines if re.match(r"^(\d+\.|-) \w+ ", line)}
    assert re.search(r"not_eligible +not profile\.known$", status["atm_open_account"])  # the rule's source
    # its limit (at most 1 per 30d) counts the push of two days ago and closes its outbound channels only:
    # it is still ranked on the ATM screen, and the limit is why not on push
    assert re.search(r"ranked +priority [\d.]+ on atm_screen$", status["overdraft_protection"])
    overdraft_arms = lines[lines.index(status["overdraft_protection"]) + 1:][:3]
    assert "push          closed: push: at most 1 per 30d" in overdraft_arms, overdraft_arms
    assert status["micro_loan"].startswith("1. micro_loan") and " chosen " in status["micro_loan"]
    assert "sms           closed: sms: no consent" in lines[lines.index(status["micro_loan"]) + 3]
    # under the decision: why the chosen offer is not on its other channels (the response's channel reasons)
    assert "not on sms: no_consent: no consent" in lines
    assert re.search(r"^  not on atm_screen: lower_priority: priority [\d.]+ < [\d.]+ on push$", out, re.MULTILINE)

    score = float(re.search(r"^decision: micro_loan on push, score ([\d.]+)$", out, re.MULTILINE).group(1))
    p, v, l, b, boost, priority = map(float, re.search(
        r"^push +P ([\d.]+) x V ([\d.]+) x L ([\d.]+) x B ([\d.]+) x ([\d.]+) = ([\d.]+)$",
        lines[lines.index(status["micro_loan"]) + 1]).groups())
    assert (p, l, b, boost) == (0.12, 1, 1, 1.2)
    assert v == pytest.approx(15 - 0.002)  # micro_loan's value less the push channel's cost
    assert math.isclose(p * v * l * b * boost, score, rel_tol=1e-3) and priority == score
    for line in lines:  # every open channel's numbers multiply to its priority
        numbers = re.search(r"P ([\d.]+) x V ([\d.]+) x L ([\d.]+) x B ([\d.]+)(?: x ([\d.]+))? = ([\d.]+)$", line)
        if numbers:
            p, v, l, b, boost, priority = (float(x) if x else 1.0 for x in numbers.groups())
            assert math.isclose(p * v * l * b * boost, priority, rel_tol=2e-3)


def test_explain_an_unknown_customer_with_a_candidate_set(capsys, redis_url, published, candidate):
    edit(candidate / "bank.yaml", "    prior: 0.02\n", "    prior: 0.02\n    paused: true\n")  # atm_open_account
    event = json.dumps({"atm_decline": {"amount": 60, "balance": 15}})

    code, out, _ = nba(capsys, "explain", "--customer", "walk-in-1", "--event", event, "--policies", str(candidate),
                       "--at", AT, "--redis-url", redis_url)

    assert code == 0
    assert "customer walk-in-1: no stored profile (unknown-customer defaults)" in out
    assert f"policy: {candidate}" in out
    assert re.search(r"^ +- atm_open_account +paused", out, re.MULTILINE)
    assert re.search(r"^decision: atm_smaller_withdrawal on atm_screen, score 0.6$", out, re.MULTILINE)


def test_explain_refuses_what_decide_refuses(capsys, redis_url, published):
    code, _, err = nba(capsys, "explain", "--customer", "c1", "--event", "atm_decline", "--field", "amount=-3",
                       "--redis-url", redis_url)
    assert code == 1 and "event.atm_decline.amount: must not be negative" in err
    code, _, err = nba(capsys, "explain", "--customer", "c1", "--event", "atm_decline", "--field", "amout=3",
                       "--redis-url", redis_url)
    assert code == 1 and "atm_decline has no field 'amout'" in err
    code, _, err = nba(capsys, "explain", "--customer", "c1", "--event", "app_open", "--at", "noon",
                       "--redis-url", redis_url)
    assert code == 1 and "'noon' is not an ISO 8601 date-time" in err

