"""The ``reasons`` section, offers' ``product``, ``accepted_window`` and ``agent_script``: read, checked with
file:line:column, compared by ``nba policy diff``."""

from __future__ import annotations

import textwrap

import pytest

from nba_service.cli import main
from nba_service.domain import CustomerContext, CustomerProfile, Event, OpenJourney
from nba_service.policies.compiler import CALL_COSTS
from nba_service.policies.content import ChannelContent, LocalizedContent
from nba_service.policies.diff import diff_policies
from nba_service.policies.model import LocalizedText, PolicyValidationError
from nba_service.policies.parser import load_policy_dir, parse_policy_files
from nba_service.policies.scope import build_scope, evaluation_globals
from tests.conftest import SAMPLE_POLICIES

CHANNELS = "channels: [{id: agent_desktop, needs_reachable: false, default_consent: true}]\n"
OFFER = textwrap.dedent("""\
    offers:
      - id: overdraft
        name: Overdraft protection
        category: lending
        events: [agent_contact]
        value: 40
        prior: 0.1
        channels: [agent_desktop]
        content: {default: "Propose overdraft protection"}
        product: overdraft_protection
        accepted_window: 30d
        agent_script:
          en: "{first_name}, shall I turn on overdraft protection?"
          es: "{first_name}, ¿le activo la protección de descubierto?"
    """)
REASONS = textwrap.dedent("""\
    reasons:
      - id: atm_declined
        event: atm_decline
        when: "event.shortfall > 0"
        within: 24h
        score: 100
        half_life: 2h
        text:
          en: "ATM withdrawal declined {ago}, short by {shortfall} {currency}"
          es: "Retirada rechazada {ago}; faltaban {shortfall} {currency}"
    """)


def _issues(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(files)
    return [str(i) for i in caught.value.issues]


def test_reasons_products_and_agent_scripts_are_read() -> None:
    policy = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER, "reasons.yaml": REASONS})
    [offer] = policy.offers
    assert (offer.product, offer.accepted_window_seconds) == ("overdraft_protection", 30 * 86400)
    assert offer.agent_script is not None and set(offer.agent_script.variants) == {"en", "es"}
    [reason] = policy.reasons
    assert (reason.id, reason.event, reason.within_seconds, reason.score, reason.half_life_seconds) == (
        "atm_declined",
        "atm_decline",
        86400.0,
        100.0,
        7200.0,
    )
    assert reason.when is not None and reason.when.source == "event.shortfall > 0"
    assert policy.settings.accepted_window_seconds == 90 * 86400  # the default


def test_the_sample_set_has_reasons_products_and_scripts() -> None:
    policy = load_policy_dir(SAMPLE_POLICIES)
    assert {"atm_declined", "cart_abandoned"} <= {r.id for r in policy.reasons}
    products = {o.id: o.product for o in policy.offers if o.product}
    assert products["overdraft_protection"] == products["agent_overdraft_followup"] == "overdraft_protection"
    scripts = {o.id for o in policy.offers if o.agent_script is not None}
    assert {"agent_overdraft_followup", "agent_resume_cart"} <= scripts


def test_a_bad_reasons_entry_is_refused_with_file_line_and_column() -> None:
    bad = textwrap.dedent("""\
        reasons:
          - id: declined
            event: atm_declined
            within: 24h
            score: 100
            text: "Declined"
          - id: cart
            event: cart_abandon
            when: "event.cart_total > 0"
            within: 2 days
            score: 0
            min_count: 0
            text:
              en: "Cart of {cart_total}"
              english: "Cart"
          - id: cart
            event: page_view
            within: 1d
            score: 5
            text: "Visited {url}"
          - id: no_text
            event: app_open
            within: 1d
            score: 5
            colour: red
        """)
    assert _issues({"channels.yaml": CHANNELS, "reasons.yaml": bad}) == [
        "reasons.yaml:3:12: reasons[0] (declined).event: unknown event type 'atm_declined' (known: atm_decline,"
        " location, cart_abandon, app_open, page_view, agent_contact, custom)",
        "reasons.yaml:9:12: reasons[1] (cart).when: unknown field event.cart_total (known here: cart_id,"
        " cart_value, currency, item_count, type)",
        "reasons.yaml:10:13: reasons[1] (cart).within: '2 days' is not a duration like 30m, 24h or 7d",
        "reasons.yaml:11:12: reasons[1] (cart).score: 0 must be > 0",
        "reasons.yaml:12:16: reasons[1] (cart).min_count: expected a whole number from 1 to 50, got 0",
        "reasons.yaml:14:11: reasons[1] (cart).text.en: unknown template field {cart_total} (known: ago, cart_id,"
        " cart_value, channel, count, currency, days_ago, first_name, hours_ago, item_count, minutes_ago,"
        " segment)",
        "reasons.yaml:15:7: reasons[1] (cart).text: 'english' is not a language tag such as en, es or pt-BR",
        "reasons.yaml:21:5: reasons[3]: missing required field 'text'",
        "reasons.yaml:25:5: reasons[3]: unknown field 'colour' (allowed: event, half_life, id, min_count, score,"
        " text, variables, when, within)",
    ]


def test_a_duplicate_reason_id_names_the_first() -> None:
    twice = REASONS + REASONS.removeprefix("reasons:\n")
    assert _issues({"channels.yaml": CHANNELS, "reasons.yaml": twice}) == [
        "reasons.yaml:11:5: reasons: duplicate reason id 'atm_declined' (first in reasons.yaml:2)"
    ]


def test_bad_products_windows_and_agent_scripts_are_refused() -> None:
    offer = (
        OFFER.replace("product: overdraft_protection", "product: Overdraft")
        .replace("accepted_window: 30d", "accepted_window: 400d")
        .replace("shall I turn", "shall I {verb}")
    )
    no_product = OFFER.replace("    product: overdraft_protection\n", "").replace("es: ", "EN-gb!: ")
    settings = "settings: {accepted_window: 2w, default_language: en}\n"
    assert _issues({"channels.yaml": CHANNELS, "offers.yaml": offer}) == [
        "offers.yaml:10:14: offers[0] (overdraft).product: 'Overdraft' is not an id (lower case letters, digits"
        " and _, starting with a letter)",
        "offers.yaml:11:22: offers[0] (overdraft).accepted_window: at most 365d (accepted offers are kept for a year)",
        "offers.yaml:13:11: offers[0] (overdraft).agent_script.en: unknown template field {verb} (known: agent_id,"
        " first_name, reason, segment)",
    ]
    assert _issues({"channels.yaml": CHANNELS, "offers.yaml": no_product, "settings.yaml": settings}) == [
        "offers.yaml:10:22: offers[0] (overdraft).accepted_window: only an offer that declares the product it"
        " sells has one",
        "offers.yaml:13:7: offers[0] (overdraft).agent_script: 'EN-gb!' is not a language tag such as en, es or pt-BR",
    ]
    policy = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER, "settings.yaml": settings})
    assert policy.settings.accepted_window_seconds == 14 * 86400


def test_validate_refuses_a_bad_reason_at_its_line(tmp_path, capsys) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "channels.yaml").write_text(CHANNELS)
    (folder / "reasons.yaml").write_text(REASONS.replace("{shortfall}", "{shortfal}"))
    assert main(["policy", "validate", str(folder)]) == 1
    out = capsys.readouterr()
    assert f"{folder}/reasons.yaml:9:11: reasons[0] (atm_declined).text.en: unknown template field {{shortfal}}" in (
        out.out + out.err
    )


def test_diff_shows_reasons_products_windows_and_scripts() -> None:
    before = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER, "reasons.yaml": REASONS})
    after = parse_policy_files(
        {
            "channels.yaml": CHANNELS,
            "offers.yaml": OFFER.replace("30d", "60d").replace("shall I turn", "may I turn"),
            "reasons.yaml": REASONS.replace("score: 100", "score: 90")
            + "  - {id: cart, event: cart_abandon, within: 7d, score: 50, text: 'Cart of {cart_value}'}\n",
            "settings.yaml": "settings: {accepted_window: 30d}\n",
        }
    )
    assert [str(c) for c in diff_policies(before, after).changes] == [
        "settings.accepted_window: 90d -> 30d",
        "overdraft.accepted_window: 30d -> 60d",
        'overdraft.agent_script.en: "{first_name}, shall I turn on overdraft protection?" -> "{first_name}, may I'
        ' turn on overdraft protection?"',
        "+ reason cart: cart_abandon within 7d, score 50",
        "atm_declined.score: 100 -> 90",
    ]


# --- cart_open(...) and the language a text is read in ------------------------------------------------------

CART_RULES = textwrap.dedent("""\
    offers:
      - id: help_with_order
        name: Help with the order
        category: service
        events: [custom]
        eligible_when: "event.name == 'order_question' and cart_open(event_attr('cart_id'))"
        value: 5
        prior: 0.1
        channels: [agent_desktop]
        content: {default: "Help with the order"}
    reasons:
      - id: cart
        event: cart_abandon
        when: "cart_open(event.cart_id)"
        within: 7d
        score: 50
        text: "Cart of {cart_value} {currency} abandoned {ago} ({channel})"
    """)


def _holds_for(rule, event: Event, *open_carts: str) -> bool:
    journeys = tuple(OpenJourney("cart", cart_id, 0.0, {"cart_value": 10.0}) for cart_id in open_carts)
    ctx = CustomerContext(CustomerProfile("c1"), 0.0, open_journeys=(OpenJourney("loan", "k1", 0.0), *journeys))
    return bool(eval(rule.code, evaluation_globals(), build_scope(ctx, event)))


def test_cart_open_asks_about_one_cart_in_a_reason_and_in_an_offers_rule() -> None:
    policy = parse_policy_files({"channels.yaml": CHANNELS, "rules.yaml": CART_RULES})
    [reason], [offer] = policy.reasons, policy.offers
    assert reason.when is not None and offer.eligible_when is not None

    k2 = Event("cart_abandon", {"cart_id": "k2", "cart_value": 30.0, "currency": "EUR"})
    assert _holds_for(reason.when, k2, "k1", "k2")
    assert not _holds_for(reason.when, k2, "k1")  # k2 bought: another open cart does not make it open
    assert not _holds_for(reason.when, k2)
    no_id = Event("cart_abandon", {"cart_id": "", "cart_value": 30.0})
    assert _holds_for(reason.when, no_id, "cart")  # a cart left without an id is kept as "cart"
    assert not _holds_for(reason.when, Event("cart_abandon", {"cart_id": "k1"}))  # a loan "k1" is no cart

    question = Event("custom", {"name": "order_question"}, {"cart_id": "k1"})
    assert _holds_for(offer.eligible_when, question, "k1")
    assert not _holds_for(offer.eligible_when, question, "k2")
    assert not _holds_for(offer.eligible_when, Event("custom", {"name": "order_question"}), "k1")  # no cart_id

    assert reason.when.cost == 2 + CALL_COSTS["cart_open"]  # the call and its argument, and the lookup


def test_a_misused_cart_open_is_refused_at_its_line() -> None:
    bad = (
        CART_RULES.replace("cart_open(event.cart_id)", "cart_open()")
        .replace("events: [custom]", "events: [atm_decline]")
        .replace("event.name == 'order_question' and cart_open(event_attr('cart_id'))", "cart_open(event.cart_id)")
    )
    assert _issues({"channels.yaml": CHANNELS, "rules.yaml": bad}) == [
        "rules.yaml:6:31: offers[0] (help_with_order).eligible_when: unknown field event.cart_id (known here:"
        " amount, atm_id, balance, currency, latitude, longitude, shortfall, type)",
        "rules.yaml:14:12: reasons[0] (cart).when: cart_open() takes 1 argument(s), got 0",
    ]


def test_the_sample_cart_reason_asks_whether_its_own_cart_is_open() -> None:
    [reason] = [r for r in load_policy_dir(SAMPLE_POLICIES).reasons if r.id == "cart_abandoned"]
    assert reason.when is not None and reason.when.source == "cart_open(event.cart_id)"


@pytest.mark.parametrize("default", ["en", "es", ""])
@pytest.mark.parametrize("written", [("en", "es", "pt-br"), ("pt-br", "en"), ("es-es", "en", "es-mx"), ("",)])
def test_reasons_scripts_and_content_choose_the_same_language(written: tuple[str, ...], default: str) -> None:
    text = LocalizedText({language: f"text in {language}" for language in written})
    content = ChannelContent(tuple(LocalizedContent(language, {}) for language in written))
    for wanted in ("pt", "PT_br", "pt-PT", "es", "es-MX", "ES-ar", "en-GB", "de", ""):
        chosen, template = text.pick(wanted, default)
        assert (chosen or default, template) == (
            content.pick(wanted, default).language or default,
            f"text in {content.pick(wanted, default).language}",
        ), wanted


def test_a_language_reads_a_region_written_for_it() -> None:
    text = LocalizedText({"en": "Your cart", "pt-br": "Seu carrinho", "es-mx": "Tu carrito"})
    assert text.pick("pt", "en") == ("pt-br", "Seu carrinho")
    assert text.pick("es-ES", "en") == ("es-mx", "Tu carrito")  # another region of the language
    assert text.pick("fr", "pt") == ("pt-br", "Seu carrinho")  # the default language, the same way
    assert text.pick("fr", "") == ("en", "Your cart")  # else the first written
