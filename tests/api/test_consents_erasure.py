"""Consents that change only when named, their audit, and erasure: real server, real Redis."""

from __future__ import annotations

import concurrent.futures
import json

import grpc
import pytest
import redis
from google.protobuf.field_mask_pb2 import FieldMask

from nba_service.api.auth import new_token
from nba_service.cli import main
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import keys
from tests.conftest import atm_decline, daytime_zone, profile, wait_until

WITHDRAWN = {"push": True, "sms": False, "email": True, "atm_screen": False, "web_banner": False}


def consents_of(server, customer_id: str) -> dict[str, bool]:
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id=customer_id), timeout=5)
    return {c.channel: c.granted for c in view.profile.consents}


def upsert(server, message: pb.CustomerProfile, *paths: str, request_id: str = "", **kwargs) -> pb.UpsertCustomerResponse:
    request = pb.UpsertCustomerRequest(profile=message, request_id=request_id)
    if paths:
        request.update_mask.CopyFrom(FieldMask(paths=list(paths)))
    return server.stub.UpsertCustomer(request, timeout=5, **kwargs)


def audit(capsys, redis_url: str, customer_id: str, *extra: str) -> str:
    code = main(["customers", "audit", customer_id, "--redis-url", redis_url, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_a_mask_without_consents_leaves_every_consent_as_it_was(server):
    upsert(server, profile("m1", segment="mass", consent=WITHDRAWN))

    # everything granted in the request, but only the segment is named
    response = upsert(server, profile("m1", segment="vip", consent=True, tier="gold"), "segment")
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="m1"), timeout=5)

    assert response.created is False
    assert view.profile.segment == "vip"
    assert {c.channel: c.granted for c in view.profile.consents} == WITHDRAWN
    assert dict(view.profile.attributes) == {"credit_score": "720"}  # attributes were not named either


def test_a_consent_path_changes_only_that_channel(server):
    upsert(server, profile("m2", segment="mass", consent=WITHDRAWN))

    upsert(server, pb.CustomerProfile(customer_id="m2", consents=[pb.Consent(channel="sms", granted=True)]),
           "consents.sms")
    assert consents_of(server, "m2") == {**WITHDRAWN, "sms": True}

    # named but not listed: that consent is removed (the channel's default applies again)
    upsert(server, pb.CustomerProfile(customer_id="m2"), "consents.email")
    expected = {**WITHDRAWN, "sms": True}
    del expected["email"]
    assert consents_of(server, "m2") == expected

    # attributes.<name> likewise; everything else is untouched
    upsert(server, pb.CustomerProfile(customer_id="m2", attributes={"tier": "gold"}), "attributes.tier")
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="m2"), timeout=5)
    assert dict(view.profile.attributes) == {"credit_score": "720", "tier": "gold"}
    assert (view.profile.segment, view.profile.first_name) == ("mass", "Ana")


def test_a_new_customer_with_a_mask_starts_from_an_empty_profile(server):
    created = upsert(server, profile("m3", segment="vip", consent={"sms": True}), "segment", "consents.sms")
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="m3"), timeout=5)

    assert created.created and view.known
    assert (view.profile.segment, view.profile.first_name, list(view.profile.reachable_channels)) == ("vip", "", [])
    assert {c.channel: c.granted for c in view.profile.consents} == {"sms": True}
    assert view.profile.timezone == "UTC"


@pytest.mark.parametrize(("path", "detail"), [
    ("nickname", "update_mask: unknown path 'nickname'"),
    ("consents.SMS Text", "update_mask: path 'consents.SMS Text'"),
    ("customer_id", "update_mask: customer_id identifies the profile"),
    ("consents.", "update_mask: unknown path 'consents.'"),
])
def test_an_unknown_mask_path_is_refused_naming_it(server, redis_client: redis.Redis, path, detail):
    upsert(server, profile("m4", consent=WITHDRAWN))
    before = redis_client.get(keys.profile("m4"))

    with pytest.raises(grpc.RpcError) as caught:
        upsert(server, profile("m4", consent=True, segment="vip"), "segment", path)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(detail)
    assert redis_client.get(keys.profile("m4")) == before


def test_an_upsert_without_mask_or_consents_keeps_the_stored_consents(server):
    zone = daytime_zone()
    # withdrawn everywhere, including the screens that default to consent
    upsert(server, profile("m5", channels=(), consent={c: False for c in ("atm_screen", "web_banner", "push")},
                           timezone=zone))
    assert server.stub.Decide(atm_decline("m5"), timeout=5).channel != "atm_screen"

    # the CRM sends the profile again without its consents: it used to re-grant the screens
    message = profile("m5", segment="vip", channels=(), timezone=zone)
    del message.consents[:]
    upsert(server, message)
    control = pb.CustomerProfile()
    control.CopyFrom(message)
    control.customer_id = "m5-control"  # never had consents: the ATM screen's default applies
    upsert(server, control)
    assert server.stub.Decide(atm_decline("m5-control"), timeout=5).channel == "atm_screen"

    assert consents_of(server, "m5") == {"atm_screen": False, "web_banner": False, "push": False}
    assert server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="m5"), timeout=5).profile.segment == (
        "vip")
    assert server.stub.Decide(atm_decline("m5"), timeout=5).channel != "atm_screen"

    # channels it lists are set, the others kept
    message.consents.append(pb.Consent(channel="push", granted=True))
    upsert(server, message)
    assert consents_of(server, "m5") == {"atm_screen": False, "web_banner": False, "push": True}


def test_simultaneous_consent_changes_are_all_kept_and_audited(start_server, published, redis_url, capsys):
    replicas = [start_server(), start_server()]
    upsert(replicas[0], profile("m6", consent={}))
    channels = [f"ch{i}" for i in range(16)]

    def grant(i: int) -> None:
        message = pb.CustomerProfile(customer_id="m6", consents=[pb.Consent(channel=channels[i], granted=True)])
        upsert(replicas[i % 2], message, f"consents.{channels[i]}", request_id=f"r{i}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(grant, range(len(channels))))

    assert consents_of(replicas[0], "m6") == dict.fromkeys(channels, True)
    out = audit(capsys, redis_url, "m6")
    assert sum("unset -> granted" in line for line in out.splitlines()) == len(channels)


def test_a_consent_change_shows_in_the_audit_with_caller_and_request_id(server, redis_url, redis_client, capsys,
                                                                       tmp_path):
    upsert(server, profile("m7", consent={"sms": True, "push": True}), request_id="crm-1")
    upsert(server, pb.CustomerProfile(customer_id="m7", consents=[pb.Consent(channel="sms", granted=False)]),
           "consents.sms", request_id="crm-2")
    upsert(server, pb.CustomerProfile(customer_id="m7", segment="vip"), "segment", request_id="crm-3")  # no consent

    out = audit(capsys, redis_url, "m7", "--json", str(tmp_path / "audit.json"))
    lines = out.splitlines()

    assert lines[0].split() == ["time", "(UTC)", "channel", "change", "caller", "request", "id"]
    assert [line.split()[2:] for line in lines[1:]] == [
        ["push", "unset", "->", "granted", "local", "crm-1"],
        ["sms", "unset", "->", "granted", "local", "crm-1"],
        ["sms", "granted", "->", "denied", "local", "crm-2"],
    ]
    entries = json.loads((tmp_path / "audit.json").read_text())
    assert [(e["action"], e["channel"], e["old"], e["new"]) for e in entries][-1] == ("consent", "sms", "granted",
                                                                                       "denied")
    # the stream names no customer: only its pseudonym
    raw = redis_client.xrange(keys.consent_audit(keys.bucket_of("m7")))
    assert raw and all(b"m7" not in value for _, fields in raw for value in fields.values())
    assert "no audit entries for customer nobody" in audit(capsys, redis_url, "nobody")


def test_the_audit_names_the_authenticated_caller(start_server, published, redis_url, capsys, tmp_path):
    made = {name: new_token() for name in ("crm-sync", "atm")}
    (tmp_path / "auth.yaml").write_text(
        "clients:\n"
        f'  - name: crm-sync\n    token_sha256: "{made["crm-sync"][1]}"\n    roles: [crm]\n'
        f'  - name: atm\n    token_sha256: "{made["atm"][1]}"\n    roles: [decide]\n'
    )
    server = start_server(auth_file=str(tmp_path / "auth.yaml"))
    crm = (("authorization", f"Bearer {made['crm-sync'][0]}"),)
    atm = (("authorization", f"Bearer {made['atm'][0]}"),)

    upsert(server, profile("m8", consent={"sms": False}), request_id="r-1", metadata=crm)
    with pytest.raises(grpc.RpcError) as denied:
        server.stub.DeleteCustomer(pb.DeleteCustomerRequest(customer_id="m8"), metadata=atm, timeout=5)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    server.stub.DeleteCustomer(pb.DeleteCustomerRequest(customer_id="m8", request_id="r-2"), metadata=crm, timeout=5)

    rows = [line.split()[2:] for line in audit(capsys, redis_url, "m8").splitlines()[1:]]
    assert rows == [["sms", "unset", "->", "denied", "crm-sync", "r-1"],
                    ["(erased)", "customer", "erased", "crm-sync", "r-2"]]


# --- erasure -----------------------------------------------------------------------------------

ERASED = "erase-me-7f3a9c"


def every_value(client: redis.Redis) -> list[tuple[bytes, bytes]]:
    """(key, piece) for every key in Redis and every name and value it holds, whatever its type."""
    found: list[tuple[bytes, bytes]] = []
    for key in client.scan_iter(count=1000):
        found.append((key, key))
        kind = client.type(key)
        if kind == b"string":
            found.append((key, client.get(key) or b""))
        elif kind == b"hash":
            found += [(key, piece) for pair in client.hgetall(key).items() for piece in pair]
        elif kind == b"list":
            found += [(key, item) for item in client.lrange(key, 0, -1)]
        elif kind == b"set":
            found += [(key, item) for item in client.smembers(key)]
        elif kind == b"zset":
            found += [(key, item) for item in client.zrange(key, 0, -1)]
        elif kind == b"stream":
            for entry_id, fields in client.xrange(key):
                found.append((key, entry_id))
                found += [(key, piece) for pair in fields.items() for piece in pair]
            for group in client.xinfo_groups(key):
                found.append((key, group["name"]))
        else:
            raise AssertionError(f"{key!r}: unexpected type {kind!r}")
    return found


def naming(client: redis.Redis, customer_id: str) -> list[bytes]:
    needle = customer_id.encode()
    return sorted({key for key, piece in every_value(client) if needle in piece})


def test_erasure_leaves_nothing_in_redis_that_names_the_customer(server, redis_client, redis_url, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr("nba_service.store.state.ERASE_BATCH", 7)  # decisions erased in batches, then the rest
    zone = daytime_zone()
    upsert(server, profile(ERASED, timezone=zone, consent=WITHDRAWN | {"app_inbox": True}), request_id="crm-1")
    decisions = [server.stub.Decide(pb.DecideRequest(customer_id=ERASED, origin_channel="web", event=pb.Event(
        cart_abandon=pb.CartAbandon(cart_id="k1", cart_value=80, currency="EUR", item_ids=["sku1"]))), timeout=5)]
    # a free attribute quoting the customer id: it reaches the features the learner gets
    quoting = atm_decline(ERASED)
    quoting.attributes["crm_ref"] = ERASED
    decisions.append(server.stub.Decide(quoting, timeout=5))
    decisions += [server.stub.Decide(atm_decline(ERASED, amount=50 + i), timeout=5) for i in range(24)]
    acted = [d for d in decisions if not d.no_action]
    assert len(acted) >= 3  # the contact caps leave the rest "no action"
    assert decisions[1] in acted[:-1]  # the quoting one gets an outcome
    outcomes = [pb.OUTCOME_KIND_ACCEPTED, pb.OUTCOME_KIND_DECLINED]
    for decision, outcome in zip(acted[:-1], outcomes, strict=False):
        server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id, outcome=outcome), timeout=5)
    pending = acted[-1].decision_id
    assert redis_client.zscore(keys.pending(keys.bucket_of(ERASED)), pending) is not None
    assert redis_client.zcard(keys.decision_index(ERASED)) == 26  # beyond the 20 the agent desktop lists
    stream_before = redis_client.xlen(keys.outcome_stream(keys.bucket_of(ERASED)))
    assert stream_before >= 2
    # the logged features replace the quoted id: the outcome stream never named the customer
    logged = [fields[b"features"] for _, fields in redis_client.xrange(keys.outcome_stream(keys.bucket_of(ERASED)))]
    assert any(b'"req:crm_ref=<customer>"' in features for features in logged)
    assert not [features for features in logged if ERASED.encode() in features]
    assert naming(redis_client, ERASED)  # the scan finds the customer before the erasure
    another = server.stub.Decide(atm_decline("bystander"), timeout=5)

    response = server.stub.DeleteCustomer(pb.DeleteCustomerRequest(customer_id=ERASED, request_id="gdpr-17"),
                                          timeout=5)

    assert (response.customer_id, response.erased) == (ERASED, True)
    assert redis_client.xrange(keys.consent_audit(keys.bucket_of(ERASED)))[-1][1][b"action"] == b"erased"  # one entry, after the batches
    assert sum(fields[b"action"] == b"erased" for _, fields in redis_client.xrange(keys.consent_audit(keys.bucket_of(ERASED)))) == 1
    assert naming(redis_client, ERASED) == []
    assert redis_client.zscore(keys.pending(keys.bucket_of(ERASED)), pending) is None
    assert redis_client.xlen(keys.outcome_stream(keys.bucket_of(ERASED))) == stream_before  # what the learner needs stays
    assert redis_client.exists(keys.decision(another.decision_id))  # other customers are untouched
    for decision in decisions:
        with pytest.raises(grpc.RpcError) as gone:
            server.stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                        outcome=pb.OUTCOME_KIND_CONVERTED), timeout=5)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    rows = [line.split()[2:] for line in audit(capsys, redis_url, ERASED).splitlines()[1:]]
    assert rows[-1] == ["(erased)", "customer", "erased", "local", "gdpr-17"]
    assert ["sms", "unset", "->", "denied", "local", "crm-1"] in rows  # the consent history is still readable

    # the customer is now unknown: decided from defaults, exactly like one never seen
    after = server.stub.Decide(atm_decline(ERASED), timeout=5)
    stranger = server.stub.Decide(atm_decline("never-seen"), timeout=5)
    assert (after.no_action, after.action.offer_id, after.channel) == (
        stranger.no_action, stranger.action.offer_id, stranger.channel)
    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id=ERASED), timeout=5)
    assert not view.known
    assert [d.decision_id for d in view.recent_decisions] == [after.decision_id]
    assert len(view.journey) == 1 and not view.open_journeys


def test_erasing_an_unknown_customer_says_so_and_is_audited(server, redis_url, capsys):
    response = server.stub.DeleteCustomer(pb.DeleteCustomerRequest(customer_id="ghost"), timeout=5)

    assert (response.customer_id, response.erased) == ("ghost", False)
    assert "customer erased" in audit(capsys, redis_url, "ghost")
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.DeleteCustomer(pb.DeleteCustomerRequest(customer_id=""), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "customer_id: is required"


def test_the_agent_desktop_lists_the_newest_decisions_first(server):
    upsert(server, profile("m9", timezone=daytime_zone()))
    made = [server.stub.Decide(atm_decline("m9", amount=50 + i), timeout=5).decision_id for i in range(12)]

    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="m9"), timeout=5)

    assert [d.decision_id for d in view.recent_decisions] == made[::-1][:10]


def test_decisions_listed_before_the_index_are_still_shown_and_erased(server, redis_client):
    """A customer's decisions recorded by an earlier version (a list of ids) until it expires."""
    customer = "legacy-list-4d1e"
    upsert(server, profile(customer, timezone=daytime_zone()))
    first = server.stub.Decide(atm_decline(customer), timeout=5).decision_id
    # as the previous version recorded it: a list, not the index
    redis_client.delete(keys.decision_index(customer))
    redis_client.rpush(keys.decisions(customer), first)
    second = server.stub.Decide(atm_decline(customer), timeout=5).decision_id

    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id=customer), timeout=5)
    assert [d.decision_id for d in view.recent_decisions] == [second, first]

    server.stub.DeleteCustomer(pb.DeleteCustomerRequest(customer_id=customer), timeout=5)
    assert naming(redis_client, customer) == []
    assert not redis_client.exists(keys.decision(first), keys.decision(second))

