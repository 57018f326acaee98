"""Structured content per channel and language: its YAML shape, the channels' limits checked at publish
(file:line:column), and the rendering that keeps the limits."""

from __future__ import annotations

import html.parser
import pathlib
import shutil
import textwrap
import urllib.parse

import pytest
import redis

from nba_service.cli import main
from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.engine.pipeline import render_content
from nba_service.policies.content import gsm7_length, is_gsm7
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import load_policy_dir, parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES

CHANNELS = textwrap.dedent("""\
    channels:
      - id: push
        content:
          title: {max_chars: 50}
          body: {max_chars: 178}
          deep_link:
      - id: sms
        content:
          body: {max_chars: 160, encoding: gsm7}
      - id: email
      - id: atm_screen
        needs_reachable: false
        default_consent: true
    """)

OFFER = textwrap.dedent("""\
    offers:
      - id: loan
        name: Loan
        category: lending
        events: [atm_decline]
        value: 15
        prior: 0.1
        channels: [push, sms, email]
        variables:
          loan_amount: "round_up(event.shortfall, 50)"
        content:
          push:
            en: {title: "A loan for you", body: "{first_name}, {loan_amount} {currency} now.", deep_link: "bank://loan/{atm_id}"}
            es: {title: "Un préstamo", body: "{first_name}, {loan_amount} {currency} ya.", deep_link: "bank://loan/{atm_id}"}
          sms: "{first_name}, borrow {loan_amount} {currency} now."
          email:
            subject: "Your loan, {first_name}"
            body: "{first_name}, {loan_amount} {currency} are ready."
            html: "<p>{first_name}, <b>{loan_amount} {currency}</b> are ready.</p>"
            cta: {label: "Borrow {loan_amount} {currency}", action: "https://bank.example/loan?atm={atm_id}"}
    """)


def _issues(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(files)
    return [str(issue) for issue in caught.value.issues]


def _line_of(text: str, needle: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if needle in row]
    return line


def test_the_sample_overdraft_offer_has_push_email_and_sms_in_spanish_and_english():
    policy = load_policy_dir(SAMPLE_POLICIES)
    (offer,) = [o for o in policy.offers if o.id == "overdraft_protection"]

    assert policy.settings.default_language == "en"
    for channel in ("push", "email", "sms"):
        assert [v.language for v in offer.channel_content[channel].variants] == ["en", "es"]
    push_es = offer.channel_content["push"].pick("es").fields
    assert {"title", "body", "deep_link"} <= set(push_es)
    assert {"subject", "body", "html", "cta.label", "cta.action"} <= set(offer.channel_content["email"].pick("es").fields)
    for variant in offer.channel_content["sms"].variants:  # the SMS fits one GSM-7 message
        assert is_gsm7(variant.fields["body"].literal) and variant.fields["body"].gsm7
    assert offer.content["push.es.title"] == "Que no te vuelvan a rechazar"  # as written: what diff compares


def test_structured_content_reads_and_the_plain_text_still_means_body():
    policy = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER})
    (offer,) = policy.offers

    sms = offer.channel_content["sms"].variants
    assert [(v.language, list(v.fields)) for v in sms] == [("", ["body"])]
    assert list(offer.channel_content["email"].variants[0].fields) == [
        "subject", "body", "html", "cta.label", "cta.action"]
    assert offer.content["sms"] == "{first_name}, borrow {loan_amount} {currency} now."
    assert offer.content["email.cta.label"] == "Borrow {loan_amount} {currency}"


def _render(offer_text: str, channel: str, language: str = "", first_name: str = "Ana", **fields: object):
    snapshot = PolicySnapshot.compile(parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": offer_text}), "1")
    (offer,) = snapshot.offers
    event = Event("atm_decline", {"amount": 120.0, "balance": 20.0, "currency": "EUR", "atm_id": "atm 7",
                                  "shortfall": 100.0, **fields})
    attributes = {"language": language} if language else {}
    ctx = CustomerContext(CustomerProfile("c1", first_name, "mass", attributes=attributes), now=1.78e9)
    return render_content(offer, channel, snapshot.settings.default_language, snapshot.scope(ctx, event), ctx, event)


def test_every_field_is_rendered_and_values_are_escaped_for_html_and_links():
    email = _render(OFFER, "email", first_name="Ana <b>")

    assert email.subject == "Your loan, Ana <b>"
    assert email.body == "Ana <b>, 100 EUR are ready."
    assert email.html == "<p>Ana &lt;b&gt;, <b>100 EUR</b> are ready.</p>"
    assert (email.cta_label, email.cta_action) == ("Borrow 100 EUR", "https://bank.example/loan?atm=atm%207")
    assert email.language == ""


LINKS = textwrap.dedent("""\
    offers:
      - id: loan
        name: Loan
        category: lending
        events: [atm_decline]
        value: 15
        prior: 0.1
        channels: [push, email]
        variables:
          link: "event.atm_id"
        content:
          push: {title: "Your loan", body: "{first_name}, it is ready.", deep_link: "bank://loan?atm={atm_id}&src=push"}
          email:
            subject: "Your loan"
            body: "{first_name}, it is ready."
            html: "<a href=\\"https://bank.example/loan?atm={atm_id}&amp;src=mail\\">{first_name}</a><img src='{link}'>"
            cta: {label: "Borrow", action: "{link}"}
    """)
INJECTION = "k1&coupon=FREE100#x y/../é'\"><"


def _query(link: str) -> tuple[dict[str, list[str]], str]:
    parts = urllib.parse.urlsplit(link)
    return urllib.parse.parse_qs(parts.query), parts.fragment


def _attributes(markup: str) -> dict[str, str]:
    """The attributes of the tags in ``markup`` as a browser reads them (entities decoded), tag.name -> value."""
    found: dict[str, str] = {}

    class Reader(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.update({f"{tag}.{name}": value or "" for name, value in attrs})

    Reader().feed(markup)
    return found


def test_a_value_in_a_link_is_one_parameter_it_cannot_add_one_or_start_a_fragment():
    push = _render(LINKS, "push", atm_id=INJECTION)

    assert push.deep_link == "bank://loan?atm=k1%26coupon%3DFREE100%23x%20y%2F..%2F%C3%A9%27%22%3E%3C&src=push"
    assert _query(push.deep_link) == ({"atm": [INJECTION], "src": ["push"]}, "")


def test_a_value_in_an_html_href_is_encoded_as_in_a_link_then_html_escaped():
    email = _render(LINKS, "email", first_name="Ana <b>", atm_id=INJECTION)

    href = _attributes(email.html)["a.href"]
    assert _query(href) == ({"atm": [INJECTION], "src": ["mail"]}, "")
    assert "&lt;b&gt;</a>" in email.html  # outside an attribute: escaped as before


@pytest.mark.parametrize(("link", "expected"), [
    ("https://bank.example/loan?a=1&b=2#top", "https://bank.example/loan?a=1&b=2#top"),  # a whole URL stays one
    ("https://bank.example/a b?q=\"x'<", "https://bank.example/a%20b?q=%22x%27%3C"),  # no space, quote or <
    (" JavaScript:alert(1)", ""),
    ("java\tscript:alert(1)", ""),
    ("data:text/html,<script>alert(1)</script>", ""),
    ("VBScript:msgbox", ""),
])
def test_a_value_that_starts_a_link_stays_a_url_unless_its_scheme_runs_code(link, expected):
    email = _render(LINKS, "email", atm_id=link)

    assert email.cta_action == expected
    assert _attributes(email.html)["img.src"] == expected


def _email_limits(deep_link: int, html_chars: int) -> str:
    return CHANNELS.replace("      deep_link:\n", f"      deep_link: {{max_chars: {deep_link}}}\n").replace(
        "  - id: email\n", f"  - id: email\n    content:\n      subject:\n      body:\n      html: {{max_chars:"
        f" {html_chars}}}\n      cta:\n")


def test_the_bounds_count_a_character_of_a_value_in_a_link_or_an_href_as_12():
    # deep_link: 25 characters of text + atm_id (40) x 12; html: 70 of text + link and atm_id in attributes
    # (40 x 12 each) + first_name outside them (24 x 6)
    deep_link, html_chars = 25 + 480, 70 + 480 + 480 + 144
    channels = _email_limits(deep_link, html_chars)
    snapshot = PolicySnapshot.compile(parse_policy_files({"channels.yaml": channels, "offers.yaml": LINKS}), "1")

    issues = _issues({"channels.yaml": _email_limits(deep_link - 1, html_chars - 1), "offers.yaml": LINKS})
    assert any(f"content.push.deep_link: can be {deep_link} characters long, over push's limit of {deep_link - 1}"
               " (text 25, {atm_id} up to 480)" in i for i in issues), issues
    assert any(f"content.email.html: can be {html_chars} characters long, over email's limit of {html_chars - 1}"
               " (text 70, {atm_id} up to 480, {first_name} up to 144, {link} up to 480)" in i for i in issues), issues

    # the longest values, in the characters that grow most, render within the limits checked
    (offer,) = snapshot.offers
    rendered = []
    for atm_id, first_name in (("🎉" * 41, '"' * 25), ('"' * 41, "🎉" * 25), ("&" * 41, "&" * 25)):
        event = Event("atm_decline", {"amount": 120.0, "balance": 20.0, "currency": "EUR", "atm_id": atm_id})
        ctx = CustomerContext(CustomerProfile("c1", first_name, "mass"), now=1.78e9)
        push, email = (render_content(offer, channel, "", snapshot.scope(ctx, event), ctx, event)
                       for channel in ("push", "email"))
        rendered.append((len(push.deep_link), len(email.html)))
    assert rendered[0] == (deep_link, html_chars)  # an emoji in a link takes 12, a quote in text 6: the bound
    assert all(a <= deep_link and b <= html_chars for a, b in rendered), rendered


@pytest.mark.parametrize(("language", "expected"), [
    ("es", "es"), ("ES_mx", "es"), ("en", "en"), ("fr", "en"), ("", "en"),
])
def test_the_language_falls_back_to_the_base_language_then_the_default_then_the_first(language, expected):
    push = _render(OFFER, "push", language)

    assert push.language == expected
    assert push.title == {"es": "Un préstamo", "en": "A loan for you"}[expected]
    assert push.deep_link == "bank://loan/atm%207"


def test_the_settings_default_language_is_used_when_the_customer_has_none_of_the_offers_languages():
    settings = "settings:\n  default_language: es\n"
    snapshot = PolicySnapshot.compile(parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER,
                                                          "settings.yaml": settings}), "1")
    (offer,) = snapshot.offers
    event = Event("atm_decline", {"amount": 120.0, "balance": 20.0, "currency": "EUR", "atm_id": "a", "shortfall": 100.0})
    for language, expected in (("de", "es"), ("en", "en")):
        ctx = CustomerContext(CustomerProfile("c1", "Ana", attributes={"language": language}), now=1.78e9)
        content = render_content(offer, "push", "es", snapshot.scope(ctx, event), ctx, event)
        assert content.language == expected


def test_a_value_longer_than_its_bound_is_cut_where_the_channel_limits_the_length():
    long_name = "Maximiliana Alejandra de la Concepción"  # 38 characters: over the 24 of first_name
    sms = _render(OFFER, "sms", first_name=long_name, shortfall=1e45)  # loan_amount: 46 digits, over 40
    email = _render(OFFER, "email", first_name=long_name)

    assert sms.body == "Maximiliana Alejandra de, borrow  EUR now."  # cut to 24; a number too long is left out
    assert email.body.startswith(long_name)  # no limit on an e-mail's body: nothing cut
    assert gsm7_length(sms.body) <= 160


def test_values_in_an_sms_are_written_in_gsm7_so_they_cannot_switch_it_to_ucs2():
    sms = _render(OFFER, "sms", first_name="Łucía")

    assert sms.body == "Lucia, borrow 100 EUR now."
    assert is_gsm7(sms.body)


@pytest.mark.parametrize(("old", "new", "needle", "message"), [
    # an SMS template that CAN exceed 160: 140 characters of text + first_name (24) + currency (3)
    ('sms: "{first_name}, borrow {loan_amount} {currency} now."',
     'sms: "{first_name}, borrow now in the app and the money is on your account in seconds: no paperwork, no'
     ' waiting, no fees for the first month, ever, in {currency}."',
     "sms:",
     "content.sms.body: can be 161 GSM-7 characters long, over sms's limit of 160 (text 134, {first_name} up to"
     " 24, {currency} up to 3): shorten the text"),
    # a character GSM-7 lacks: the SMS is UCS-2, 70 characters at most
    ('sms: "{first_name}, borrow {loan_amount} {currency} now."',
     'sms: "{first_name}, pide {loan_amount} {currency} ahora, sin papeleo y sin comisión."',
     "sms:",
     "content.sms.body: can be 110 characters long in UCS-2 (its text has 'ó', which GSM-7 lacks), over sms's"
     " limit of 70 in UCS-2 (160 in GSM-7)"),
    ("A loan for you", "A loan for you, today only, with no fees and no paperwork at all", "en: {title",
     "content.push.en.title: can be 64 characters long, over push's limit of 50 (text 64)"),
    ('subject: "Your loan, {first_name}"', 'subject: "Your loan, {first_name}"\n        title: "Loan"',
     "title: \"Loan\"", "content.email.title: email does not take title"),
])
def test_a_template_that_can_exceed_its_channels_limit_is_refused_with_file_and_line(old, new, needle, message):
    channels = CHANNELS.replace("  - id: email\n", "  - id: email\n    content:\n      subject:\n      body:\n"
                                "      html:\n      cta:\n")
    assert channels != CHANNELS
    offers = OFFER.replace(old, new)
    assert offers != OFFER

    issues = _issues({"channels.yaml": channels, "offers.yaml": offers})

    line = _line_of(offers, needle)
    assert any(i.startswith(f"offers.yaml:{line}:") and message in i for i in issues), issues


def test_a_variables_max_len_makes_room_and_default_content_is_checked_on_each_channel():
    offers = OFFER.replace('loan_amount: "round_up(event.shortfall, 50)"',
                           'loan_amount: "round_up(event.shortfall, 50)"\n      branch: "\'Puerta del Sol\'"')
    long_text = "x" * 100 + " {branch} {first_name}"
    offers = offers.replace('sms: "{first_name}, borrow {loan_amount} {currency} now."', f'default: "{long_text}"')

    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": offers})  # 101 + 40 + 1 + 24 = 166 > 160

    line = _line_of(offers, "default:")
    assert issues == [f"offers.yaml:{line}:16: offers[0] (loan).content.default.body (on sms): can be 166 GSM-7"
                      " characters long, over sms's limit of 160 (text 102, {branch} up to 40, {first_name} up to"
                      " 24): shorten the text, or declare a smaller max_len for a variable"]
    bounded = offers.replace('branch: "\'Puerta del Sol\'"', 'branch: {expression: "\'Puerta del Sol\'", max_len: 20}')
    (offer,) = parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": bounded}).offers
    assert offer.variable_bounds == {"branch": 20}
    assert offer.channel_content["sms"].variants[0].fields["body"].source == long_text
    assert "email" in offer.channel_content  # the default serves email too (no limit there)


@pytest.mark.parametrize(("files", "where", "message"), [
    ({"channels.yaml": CHANNELS.replace("encoding: gsm7", "encoding: latin1")}, "channels.yaml:9:",
     "channels[1] (sms).content.body.encoding: expected gsm7, got 'latin1'"),
    ({"channels.yaml": CHANNELS.replace("deep_link:", "link:")}, "channels.yaml:6:",
     "channels[0] (push).content: unknown content field 'link'"),
    ({"channels.yaml": CHANNELS.replace("title: {max_chars: 50}\n      body: {max_chars: 178}\n", "title:\n")},
     "channels.yaml:4:", "channels[0] (push).content: body is missing"),
    ({"channels.yaml": CHANNELS.replace("max_chars: 50", "max_chars: 0")}, "channels.yaml:4:",
     "channels[0] (push).content.title.max_chars: expected a whole number >= 1, got 0"),
    ({"settings.yaml": "settings:\n  default_language: Spanish\n"}, "settings.yaml:2:",
     "settings.default_language: 'Spanish' is not a language code like en, es or pt-br"),
    ({"offers.yaml": OFFER.replace("        es: {", "        no: {")}, "offers.yaml:14:",
     "'False' is neither a content field (title, body, subject, html, deep_link, image_url, cta) nor a language"
     " code like en, es or pt-br (YAML reads no, yes, on, off unquoted as false or true: quote it, 'no')"),
    ({"offers.yaml": OFFER.replace('title: "Un préstamo", body:', 'title: "Un préstamo", text:')},
     "offers.yaml:14:", "offers[0] (loan).content.push.es: unknown field 'text'"),
    ({"offers.yaml": OFFER.replace('cta: {label: "Borrow {loan_amount} {currency}", ', "cta: {")},
     "offers.yaml:20:", "offers[0] (loan).content.email.cta: missing required field 'label'"),
    ({"offers.yaml": OFFER.replace('subject: "Your loan, {first_name}"', 'subject: "Your loan, {name}"')},
     "offers.yaml:17:", "offers[0] (loan).content.email.subject: unknown template field {name}"),
    ({"offers.yaml": OFFER.replace('loan_amount: "round_up(event.shortfall, 50)"',
                                   'loan_amount: {expression: "round_up(event.shortfall, 50)", max_len: -3}')},
     "offers.yaml:10:", "offers[0] (loan).variables.loan_amount.max_len: expected a whole number >= 1, got -3"),
])
def test_mistakes_in_content_are_named_with_file_and_line(files, where, message):
    issues = _issues({"channels.yaml": CHANNELS, "offers.yaml": OFFER, **files})
    assert any(i.startswith(where) and message in i for i in issues), issues


def test_publish_refuses_an_sms_that_can_exceed_160_characters(capsys, redis_url, redis_client: redis.Redis,
                                                                 tmp_path: pathlib.Path):
    folder = tmp_path / "policies"
    shutil.copytree(SAMPLE_POLICIES, folder)
    bank = folder / "bank.yaml"
    text = bank.read_text()
    short = '        en: "{first_name}, overdraft protection covers you up to 500 {currency}. Activate it in the app."'
    long = ('        en: "{first_name}, overdraft protection covers you up to 500 {currency} whenever your balance runs'
            ' short. Activate it in the app today, it only takes one minute."')
    assert text.count(short) == 1
    bank.write_text(text.replace(short, long))

    code = main(["policy", "publish", str(folder), "-m", "longer SMS", "--redis-url", redis_url])
    out, err = capsys.readouterr()

    line = _line_of(bank.read_text(), long.strip())
    assert code == 1
    assert (f"{bank}:{line}:13: offers[2] (overdraft_protection).content.sms.en.body: can be 161 GSM-7 characters"
            " long, over sms's limit of 160 (text 134, {first_name} up to 24, {currency} up to 3)") in out + err
    assert "nothing was published" in out + err
    assert PolicyStore(redis_client).live() is None


def test_a_diff_names_each_content_field_and_language_and_each_max_len():
    from nba_service.policies.diff import diff_policies

    new = OFFER.replace('title: "Un préstamo"', 'title: "Tu préstamo"').replace(
        'loan_amount: "round_up(event.shortfall, 50)"',
        'loan_amount: {expression: "round_up(event.shortfall, 50)", max_len: 8}')

    changes = diff_policies(parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": OFFER}),
                            parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": new})).changes

    assert [str(c) for c in changes] == [
        "loan.variables.max_len.loan_amount: + 8",
        'loan.content.push.es.title: "Un préstamo" -> "Tu préstamo"',
    ]
