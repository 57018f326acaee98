"""The ``reasons`` section, offers' ``product``, ``accepted_window`` and ``agent_script``: read, checked with
file:line:column, compared by ``nba policy diff``."""

from __future__ import annotations

import textwrap

import pytest

from nba_service.cli import main
from nba_service.policies.diff import diff_policies
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import load_policy_dir, parse_policy_files
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
