"""Places and payday end to end: real gRPC server, real Redis, the sample policies (issue 14, items 5 and 8)."""

from __future__ import annotations

import json

import grpc
import pytest

from nba_service.store import keys
from nba_service.cli import main
from nba_service.proto.nba.v1 import decision_pb2 as pb
from tests.conftest import daytime_zone, profile

STORE_OFFERS = {"instore_coupon", "click_collect_cart"}
NEAR_SOL = (40.4180, -3.7045)  # about 100 m from the sample's Store Puerta del Sol
MID_ATLANTIC = (35.0, -40.0)


def _ping(customer_id: str, position: tuple[float, float] | None = None, place_id: str = "") -> pb.DecideRequest:
    location = pb.Location(accuracy_m=20.0, place_id=place_id)
    if position is not None:
        location.latitude, location.longitude = position
    return pb.DecideRequest(customer_id=customer_id, origin_channel="app", event=pb.Event(location=location))


def _customer(server, customer_id: str) -> None:
    # a mass customer never declined at an ATM: the branch appointment is not for them, the store offers are
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(customer_id, timezone=daytime_zone())),
                               timeout=5)


def _store_reasons(response: pb.DecideResponse) -> dict[str, str]:
    return {r.offer_id: r.code for r in response.reasons if r.offer_id in STORE_OFFERS}


def test_a_ping_far_from_every_place_gets_no_nearby_store_offer(server):
    for customer in ("g1", "g2", "g3"):
        _customer(server, customer)

    far = server.stub.Decide(_ping("g1", MID_ATLANTIC), timeout=5)
    outside = server.stub.Decide(_ping("g2", (40.4125, -3.7040)), timeout=5)  # 520 m from the nearest store
    near = server.stub.Decide(_ping("g3", NEAR_SOL), timeout=5)

    for response in (far, outside):
        assert response.action.offer_id not in STORE_OFFERS
        assert _store_reasons(response)["instore_coupon"] == "not_eligible"
        assert "nearest_km('store') <= 0.3" in next(r.detail for r in response.reasons
                                                    if r.offer_id == "instore_coupon")
    assert (near.action.offer_id, near.channel) == ("instore_coupon", "push")
    assert "Store Puerta del Sol" in near.action.content


def test_a_ping_naming_a_place_of_the_set_is_at_that_place(server):
    for customer in ("g4", "g5", "g6"):
        _customer(server, customer)

    at_store = server.stub.Decide(_ping("g4", place_id="store_gran_via"), timeout=5)  # no coordinates
    # the geofence's place wins over a GPS fix that is off (a place the client names is surer)
    stale_fix = server.stub.Decide(_ping("g5", MID_ATLANTIC, place_id="store_serrano"), timeout=5)
    unknown_place = server.stub.Decide(_ping("g6", place_id="store-42"), timeout=5)  # not a place of the set

    assert at_store.action.offer_id == "instore_coupon" and "Store Gran Via" in at_store.action.content
    assert stale_fix.action.offer_id == "instore_coupon" and "Store Serrano" in stale_fix.action.content
    assert unknown_place.action.offer_id not in STORE_OFFERS
    assert _store_reasons(unknown_place)["instore_coupon"] == "not_eligible"

    view = server.stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="g4"), timeout=5)
    fields = view.journey[0].fields
    assert fields["place_id"] == "store_gran_via"
    assert "latitude" not in fields and "longitude" not in fields  # the journey keeps what was sent


def test_a_profile_with_a_bad_payday_is_refused_naming_the_field(server):
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("p1", payday="32")), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "profile.attributes['payday']: must be a day of the month from 1 to 31, got '32'" in refused.value.details()

    created = server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("p1", payday="25")), timeout=5)
    assert created.created


def test_customers_load_names_the_line_of_a_bad_payday(capsys, redis_url, redis_client, tmp_path):
    export = tmp_path / "crm.jsonl"
    export.write_text("".join(json.dumps({"customer_id": f"p{i}", "attributes": {"payday": payday}}) + "\n"
                              for i, payday in enumerate(["25", "last", "1"])))

    code = main(["customers", "load", str(export), "--redis-url", redis_url])
    out = capsys.readouterr().out

    assert code == 2
    assert "line 2: profile.attributes['payday']: must be a day of the month from 1 to 31, got 'last'" in out
    assert redis_client.exists(keys.profile("p0")) and not redis_client.exists(keys.profile("p1"))
