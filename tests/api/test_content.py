"""Structured content over the real server: the sample overdraft_protection offer rendered for push, e-mail and
SMS, in Spanish for a customer whose language is ``es`` and in English otherwise; old clients still read the
text; ``nba explain`` shows the same content; a value in a link stays one parameter of it."""

from __future__ import annotations

import pathlib
import shutil
import urllib.parse

import pytest
import redis
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from nba_service.cli import main
from nba_service.policies.content import gsm7_length, is_gsm7
from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, atm_decline, daytime_zone, profile


def _customer(server, customer_id: str, channel: str, language: str | None) -> None:
    """A customer reachable and consenting on ``channel`` only (the ATM screen refused), who prefers it;
    a credit score that keeps the micro-loan and the credit-line raise out, so overdraft protection wins."""
    attributes = {"credit_score": "500", **({"language": language} if language is not None else {})}
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        customer_id, channels=(channel,), consent={channel: True, "atm_screen": False}, preferred=channel,
        timezone=daytime_zone(), **attributes)))


def _decide(server, customer_id: str) -> pb.DecideResponse:
    response = server.stub.Decide(atm_decline(customer_id, amount=100, balance=20), timeout=5)
    assert (response.action.offer_id, response.no_action) == ("overdraft_protection", False), response
    assert response.action.content == response.action.structured_content.body  # what an old client shows
    return response


@pytest.mark.parametrize(("language", "expected"), [("es", "es"), ("es-MX", "es"), ("en", "en"), (None, "en"),
                                                    ("fr", "en")])
def test_push_has_a_title_a_body_and_a_deep_link_in_the_customers_language(server, language, expected):
    _customer(server, "p1", "push", language)

    response = _decide(server, "p1")

    content = response.action.structured_content
    assert response.channel == "push" and content.language == expected
    if expected == "es":
        assert content.title == "Que no te vuelvan a rechazar"
        assert content.body == ("Ana, que no te vuelvan a rechazar: activa la protección de descubierto hasta 500"
                                " EUR en la app.")
        assert content.deep_link == "bank://overdraft?source=push&lang=es"
    else:
        assert content.title == "Never get declined again"
        assert content.body == ("Ana, never get declined again: turn on overdraft protection up to 500 EUR in the"
                                " app.")
        assert content.deep_link == "bank://overdraft?source=push"
    assert not content.subject and not content.html and not content.HasField("cta")


@pytest.mark.parametrize("language", ["es", "en"])
def test_email_has_a_subject_html_and_a_call_to_action(server, language):
    _customer(server, "e1", "email", language)

    content = _decide(server, "e1").action.structured_content

    assert content.language == language
    if language == "es":
        assert content.subject == "Ana, que no te vuelvan a rechazar en un cajero"
        assert content.html.startswith("<p>Ana:</p><p>Con la protección de descubierto")
        assert (content.cta.label, content.cta.action) == ("Activar la protección", "https://bank.example/es/overdraft")
    else:
        assert content.subject == "Ana, never get declined at an ATM again"
        assert content.html.startswith("<p>Ana,</p><p>With overdraft protection")
        assert (content.cta.label, content.cta.action) == ("Turn on overdraft protection",
                                                           "https://bank.example/overdraft")
    assert "<b>500 EUR</b>" in content.html
    assert content.body.startswith("Ana, ") and not content.title


@pytest.mark.parametrize(("language", "start"), [("es", "Ana, la proteccion de descubierto"),
                                                 ("en", "Ana, overdraft protection covers you")])
def test_sms_fits_one_gsm7_message(server, language, start):
    _customer(server, "s1", "sms", language)

    response = _decide(server, "s1")

    content = response.action.structured_content
    assert response.channel == "sms" and content.language == language
    assert content.body.startswith(start)
    assert is_gsm7(content.body) and gsm7_length(content.body) <= 160
    assert not (content.title or content.subject or content.html or content.deep_link)


def test_a_customer_name_outside_gsm7_does_not_turn_the_sms_into_ucs2(server):
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=pb.CustomerProfile(
        customer_id="s2", first_name="Łucía", segment="mass", preferred_channel="sms", reachable_channels=["sms"],
        consents=[pb.Consent(channel="sms", granted=True), pb.Consent(channel="atm_screen", granted=False)],
        timezone=daytime_zone(), attributes={"credit_score": "500", "language": "es"})))

    content = _decide(server, "s2").action.structured_content

    assert content.body.startswith("Lucia, la proteccion")
    assert is_gsm7(content.body)


def _old_action_class():
    """``Action`` as a client built from the .proto before structured content decodes it: fields 1 to 4."""
    proto = descriptor_pb2.FileDescriptorProto(name="old_nba.proto", package="old.nba.v1", syntax="proto3")
    action = proto.message_type.add(name="Action")
    for number, name in enumerate(("offer_id", "name", "category", "content"), 1):
        action.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("old.nba.v1.Action"))


def test_an_old_client_reads_the_same_text(server):
    _customer(server, "o1", "push", "es")
    response = _decide(server, "o1")

    old = _old_action_class().FromString(response.action.SerializeToString())

    assert (old.offer_id, old.name, old.category) == ("overdraft_protection", "Overdraft protection", "lending")
    assert old.content == response.action.structured_content.body
    assert old.content.startswith("Ana, que no te vuelvan a rechazar")


def test_explain_shows_the_structured_content(capsys, server, redis_url):
    _customer(server, "x1", "push", "es")

    code = main(["explain", "--customer", "x1", "--event", "atm_decline", "--field", "amount=100", "--field",
                 "balance=20", "--field", "currency=EUR", "--origin", "atm", "--redis-url", redis_url])
    out, err = capsys.readouterr()

    assert code == 0, err
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("decision: overdraft_protection on push")))
    assert lines[start + 1:start + 5] == [
        "  content: Ana, que no te vuelvan a rechazar: activa la protección de descubierto hasta 500 EUR en la app.",
        "  title: Que no te vuelvan a rechazar",
        "  deep_link: bank://overdraft?source=push&lang=es",
        "  language: es",
    ]


def test_a_cart_id_in_a_deep_link_cannot_add_a_parameter_to_it(start_server, redis_client: redis.Redis,
                                                                  tmp_path: pathlib.Path):
    folder = tmp_path / "policies"
    shutil.copytree(SAMPLE_POLICIES, folder)
    retail = folder / "retail.yaml"
    push = '      push: "{first_name}, your cart ({cart_value} {currency}) is saved in the app. Finish in one tap."'
    linked = push.replace('push: "', 'push: {body: "') + ', deep_link: "shop://cart?id={cart_id}&src=push"}'
    assert retail.read_text().count(push) == 1
    retail.write_text(retail.read_text().replace(push, linked))
    PolicyStore(redis_client).publish(read_policy_dir(folder), author="tests", message="a deep link")
    server = start_server()
    only_push = {channel: channel == "push" for channel in
                 ("push", "sms", "email", "app_inbox", "atm_screen", "web_banner", "agent_desktop")}
    server.stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile(
        "k1", channels=("push",), consent=only_push, timezone=daytime_zone())))
    cart_id = "k1&coupon=FREE100#x y"

    response = server.stub.Decide(pb.DecideRequest(customer_id="k1", origin_channel="web", event=pb.Event(
        cart_abandon=pb.CartAbandon(cart_id=cart_id, cart_value=25, currency="EUR", item_ids=["a"]))), timeout=5)

    assert (response.action.offer_id, response.channel) == ("continue_cart_in_app", "push"), response
    link = urllib.parse.urlsplit(response.action.structured_content.deep_link)
    assert urllib.parse.parse_qs(link.query) == {"id": [cart_id], "src": ["push"]}
    assert link.fragment == ""
