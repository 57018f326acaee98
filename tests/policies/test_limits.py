"""Bounded policies: what could build huge values, or take a validator or a replica down, is refused
with its file and line (issue 12, item 4). Timing and memory are measured by hand (docs/policies.md,
"Limits"), never asserted here."""

from __future__ import annotations

import json
import pathlib
import shutil
import textwrap

import pytest

from nba_service.cli import main
from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.engine.pipeline import DecisionEngine
from nba_service.learning.exploration import EpsilonGreedy
from nba_service.learning.models import ModelBank
from nba_service.policies import compiler, parser, yaml_source
from nba_service.policies.compiler import Definitions, ExpressionError, compile_expression, parse_condition
from nba_service.policies.model import PolicyValidationError
from nba_service.policies.parser import parse_policy_files, read_policy_dir
from nba_service.policies.rule_functions import FUNCTIONS, guarded_mod, guarded_mul
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.store import keys, policy_store
from tests.conftest import SAMPLE_POLICIES

CHANNELS = "channels:\n  - id: push\n  - {id: atm_screen, needs_reachable: false, default_consent: true}\n"


def offer(rule: str, offer_id: str = "loan", variables: str = "") -> str:
    return textwrap.dedent(f"""\
        offers:
          - id: {offer_id}
            name: Loan
            category: lending
            events: [atm_decline]
            eligible_when: "{rule}"
            value: 15
            prior: 0.1
            channels: [push, atm_screen]
            content: {{default: "hello"}}
        """) + variables


def issues_of(files: dict[str, str]) -> list[str]:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy_files(files)
    return [str(i) for i in caught.value.issues]


def validate(capsys, folder: pathlib.Path) -> tuple[int, str]:
    code = main(["policy", "validate", str(folder)])
    return code, capsys.readouterr().err


def policy_dir(tmp_path: pathlib.Path, **files: str) -> pathlib.Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    for name, text in {"channels.yaml": CHANNELS, **files}.items():
        (folder / name).write_text(text)
    return folder


# --- every attack of the issue, through `nba policy validate` ---------------------------

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)  # 9^9 = 387 million "lol" once expanded


@pytest.mark.parametrize(("files", "where", "message"), [
    ({"offers.yaml": offer("'x'*200000000 != ''")}, "offers.yaml:6:", "'*' on text or a list repeats it"),
    ({"offers.yaml": offer("'%0999999999d' % 1 != ''")}, "offers.yaml:6:", "'%' on text formats it"),
    ({"offers.yaml": offer("[1]*1000000000 != []")}, "offers.yaml:6:", "'*' on text or a list repeats it"),
    ({"offers.yaml": offer("attr('x') * 1000000 != ''")}, "offers.yaml:6:",
     "attr('x') is text (or None): '*' would repeat it; multiply num(attr('x'), DEFAULT) instead"),
    ({"offers.yaml": offer("round(1, -999999999) > 0")}, "offers.yaml:6:", "round() takes a whole number of digits"),
    ({"offers.yaml": offer("f'{event.amount}' == ''")}, "offers.yaml:6:", "an f-string is not allowed"),
    ({"laughs.yaml": LAUGHS}, "laughs.yaml:", "more than 120,000 values in the policy set"),
    ({"alias.yaml": "a: &x [*x]\n"}, "alias.yaml:1:", "this value contains an alias (*name) of itself"),
    ({"deep.yaml": "offers: " + "[" * 10_000 + "]" * 10_000 + "\n"}, "deep.yaml:1:", "nested more than 64 levels"),
    ({"deep.yaml": "offers: " + "[" * 70 + "]" * 70 + "\n"}, "deep.yaml:1:", "nested more than 64 levels deep"),
    ({"deep.yaml": "offers:\n" + "- " * 3000 + "x\n"}, "deep.yaml:2:", "nested more than 64 levels deep"),
], ids=["repeat text", "format width", "repeat list", "repeat an attribute", "round digits", "f-string",
        "billion laughs", "recursive alias", "deep flow", "deep over 64", "deep block"])
def test_each_attack_is_refused_by_validate_with_file_and_line(capsys, tmp_path, files, where, message):
    folder = policy_dir(tmp_path, **files)
    code, err = validate(capsys, folder)
    assert code == 1
    assert any(f"{folder / where}" in line and message in line for line in err.splitlines()), err
    assert "Traceback" not in err


def test_a_50_mb_set_is_refused_before_it_is_read(capsys, tmp_path):
    one = offer("event.shortfall > 0").split("offers:\n", 1)[1]
    text = "offers:\n" + "".join(one.replace("id: loan", f"id: o{i}") for i in range(240_000))
    folder = policy_dir(tmp_path, **{"offers.yaml": text})
    assert (folder / "offers.yaml").stat().st_size > 50_000_000

    code, err = validate(capsys, folder)

    assert code == 1
    assert f"{folder / 'offers.yaml'}:1:1: the policy set is " in err and "at most 4 MiB in all" in err
    # the same set handed over as text (what a replica reads from Redis): refused before any YAML is read
    with pytest.raises(PolicyValidationError, match=r"offers\.yaml:1:1: the policy set is"):
        parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": text})


def test_publish_validates_first_and_publishes_nothing_over_the_limits(capsys, tmp_path, redis_url, redis_client):
    folder = policy_dir(tmp_path, **{"offers.yaml": offer("'x'*200000000 != ''")})
    code = main(["policy", "publish", str(folder), "--redis-url", redis_url])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{folder / 'offers.yaml'}:6:" in err and "nothing was published" in err
    assert policy_store.PolicyStore(redis_client).live() is None


# --- expressions ------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "message"), [
    ("x" * 4001, "the expression is 4,001 characters long: at most 4,000"),
    (" or ".join(["1 < 2"] * 340), "more than 1,000 parts"),
    ("-" * 3000 + "1 < 0", "nests more than 100 levels deep"),
    ("+".join(["1"] * 1500) + " > 0", "nests more than 100 levels deep"),
    ("not " * 500 + "event.amount", "nests more than 100 levels deep"),
    ("'" + "x" * 3900 + "' + '" + "y" * 5 + "' != ''", None),
    ("[1, 2] * 3 != []", "'*' on text or a list repeats it"),
    ("3 * (1, 2) != ()", "'*' on text or a list repeats it"),
    ("event.currency * 3 != ''", "'*' on text or a list repeats it"),
    ("nearest_name('shop') * 3 != ''", "'*' on text or a list repeats it"),
    ("event.currency % 3 != ''", "'%' on text formats it"),
    ("event_attr('x') % 3 != ''", "event_attr('x') is text (or None): '%' would format it"),
    ("2 ** 10 > 1", "'**' is not allowed"),
    ("event.amount > 1234567890123456", "whole numbers have at most 15 digits"),
    ("event.amount > 123456789012345 * 1e20", None),
    ("event.amount * 2 > event.balance % 10", None),
])
def test_expression_limits_and_refusals(source, message):
    definitions = Definitions(place_kinds=frozenset({"shop"}))
    if message is None:
        compile_expression(source, event_types=("atm_decline",), definitions=definitions)
        return
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        compile_expression(source, event_types=("atm_decline",), definitions=definitions)


def test_text_in_constants_is_bounded_with_conditions_inlined():
    big = parse_condition("'" + "x" * 3000 + "'")
    definitions = Definitions(conditions={"big": big})
    compile_expression("big + big + big != ''", definitions=definitions)  # 9,000 characters
    with pytest.raises(ExpressionError, match="text and numbers hold more than 10,000 characters"):
        compile_expression("big + big + big + big != ''", definitions=definitions)


def test_conditions_that_double_are_refused_at_the_rule_not_expanded():
    conditions = {"c0": parse_condition("event.amount > 1")}
    for k in range(1, 31):  # 2^30 terms if it were expanded
        conditions[f"c{k}"] = parse_condition(f"c{k - 1} and c{k - 1}")
    with pytest.raises(ExpressionError, match="more than 1,000 parts") as caught:
        compile_expression("event.amount > 0 and c30", event_types=("atm_decline",),
                           definitions=Definitions(conditions=conditions))
    assert (caught.value.line, caught.value.column) == (1, 22)  # at the condition's name, as the author wrote it


def test_a_set_compiles_at_most_its_budget_of_parts():
    rule = " or ".join(["1 < 2"] * 300)  # 901 parts
    files = {"channels.yaml": CHANNELS}
    files["offers.yaml"] = "offers:\n" + "".join(
        offer(rule, f"o{i}").split("offers:\n", 1)[1].replace("[atm_decline]", f"[{event}]")
        for i, event in zip(range(120), ["atm_decline", "location", "cart_abandon", "app_open"] * 30, strict=True)
    )
    issues = issues_of(files)
    budget = [i for i in issues if "rules hold more than 100,000 parts in all" in i]
    assert len(budget) == 1, issues  # said once, at the rule that goes over; the ones after are not compiled
    assert budget[0].startswith("offers.yaml:")


def test_the_rules_of_one_event_type_have_a_budget():
    rule = " or ".join(["num(attr('income'), 0) < 1"] * 80)  # 881 units
    text = "offers:\n" + "".join(offer(rule, f"o{i}").split("offers:\n", 1)[1] for i in range(60))
    issues = issues_of({"channels.yaml": CHANNELS, "offers.yaml": text})
    assert len(issues) == 1, issues
    assert "the rules evaluated on each atm_decline event cost" in issues[0]
    assert "at most 50,000" in issues[0]
    first_line = text.splitlines().index("  - id: o" + issues[0].split("(o")[1].split(")")[0]) + 1
    assert issues[0].startswith(f"offers.yaml:{first_line}:")
    # spread over event types, the same rules are within budget
    events = ["atm_decline", "location", "cart_abandon", "app_open", "page_view"]
    spread = "offers:\n" + "".join(offer(rule, f"o{i}").split("offers:\n", 1)[1].replace(
        "[atm_decline]", f"[{events[i % 5]}]") for i in range(60))
    parse_policy_files({"channels.yaml": CHANNELS, "offers.yaml": spread})


def test_places_count_for_the_event_types_that_scan_them():
    places = "places:\n" + "".join(
        f"  - {{id: p{i}, kind: shop, latitude: 40.{i:04d}, longitude: -3.7}}\n" for i in range(3000))
    files = {"channels.yaml": CHANNELS, "places.yaml": places, "offers.yaml": offer("nearest_km('shop') < 2")}
    (issue,) = issues_of(files)
    assert "cost 60,0" in issue and "at most 50,000" in issue
    files["offers.yaml"] = offer("event.amount > 1")  # places no rule scans cost nothing
    parse_policy_files(files)


def test_guarded_operators_take_numbers_only():
    assert guarded_mul(2, 2.5) == 5.0 and guarded_mul(True, 3) == 3 and guarded_mod(7, 4) == 3
    for left, right in (("x", 3), (3, "x"), ([1], 3), ((1,), True), (None, 2)):
        with pytest.raises(TypeError, match="needs two numbers"):
            guarded_mul(left, right)
        with pytest.raises(TypeError, match="needs two numbers"):
            guarded_mod(left, right)
    rounding, round_up = FUNCTIONS["round"][0], FUNCTIONS["round_up"][0]
    assert rounding(2.567, 2) == 2.57 and rounding(1234, -2) == 1200 and rounding(2.5) == 2
    # no whole number of 309 digits to multiply: a float in, a float out
    assert isinstance(rounding(1e308), float) and isinstance(round_up(1e308, 1), float) and round_up(80, 50) == 100
    with pytest.raises(ValueError, match="-20 to 20 digits"):
        rounding(1, -999_999_999)


def test_arithmetic_is_costed():
    plain = compile_expression("event.amount + 2 > 1", event_types=("atm_decline",))
    product = compile_expression("event.amount * 2 > 1", event_types=("atm_decline",))
    assert (plain.cost, product.cost) == (5, 5 + compiler.OPERATOR_COST)
    scans = compile_expression("count_events('atm_decline', '1d') > days_since('x')", event_types=("atm_decline",))
    assert scans.cost == 6 + compiler.CALL_COSTS["count_events"] + compiler.CALL_COSTS["days_since"]


def test_only_operands_not_known_to_be_numbers_are_guarded():
    plain = compile_expression("event.amount * 2 > event.balance % 10", event_types=("atm_decline",))
    assert "_op_" not in str(plain.code.co_names)
    guarded = compile_expression("(attr('x') or 'a') * 1000000 > 1")
    assert {"_op_mul"} <= set(guarded.code.co_names)


def test_a_rule_repeating_an_attribute_at_run_time_fails_only_its_offer():
    rule = "(attr('tier') or 'a') * 100000000 > 1"  # text at run time: the guarded '*' refuses it
    files = {"channels.yaml": CHANNELS, "offers.yaml": offer(rule) + offer("event.shortfall > 0", "tip").split(
        "offers:\n", 1)[1].replace("value: 15", "value: 1")}
    snapshot = PolicySnapshot.compile(parse_policy_files(files), "1")
    bank = ModelBank()
    bank.bind(snapshot)
    profile = CustomerProfile("c1", "Ana", "mass", "push", frozenset({"push"}), {"push": True}, "UTC",
                              {"tier": "gold"})
    ctx = CustomerContext(profile, now=1_780_000_000.0, origin_channel="atm")
    event = Event("atm_decline", {"amount": 120.0, "balance": 20.0, "currency": "EUR", "atm_id": "a",
                                  "latitude": 0.0, "longitude": 0.0, "shortfall": 100.0})
    decision = DecisionEngine(bank, EpsilonGreedy(0.0, 1)).decide(snapshot, ctx, event)
    assert decision.offer_id == "tip"
    error = next(r for r in decision.reasons if r.offer_id == "loan")
    assert error.code == "rule_error"
    assert "'*' needs two numbers, got str and int" in error.detail
    assert "gold" not in error.detail  # the customer's attribute is not quoted


def test_nearest_is_scanned_once_per_request_and_kind():
    calls = []

    class Places(dict):
        def get(self, kind, default=None):
            calls.append(kind)
            return super().get(kind, default)

    from nba_service.policies.scope import build_scope

    scope = build_scope(CustomerContext(CustomerProfile("c1"), now=0.0),
                        Event("location", {"latitude": 40.0, "longitude": -3.0}), Places(shop=()))
    near, name = FUNCTIONS["nearest_km"][0], FUNCTIONS["nearest_name"][0]
    assert near(scope["_geo"], "shop") == near(scope["_geo"], "shop") and name(scope["_geo"], "shop") == ""
    assert calls == ["shop"]


# --- YAML -------------------------------------------------------------------------------


def test_aliases_are_counted_per_file():
    text = "a: &x [1]\nb: [" + ", ".join(["*x"] * 1001) + "]\n"
    (issue,) = [i for i in issues_of({"a.yaml": text}) if "aliases" in i]
    assert issue.startswith("a.yaml:1:") and "more than 1,000 aliases" in issue
    text = "a: &x [1]\nb: [" + ", ".join(["*x"] * 1000) + "]\n"
    assert not [i for i in issues_of({"a.yaml": text}) if "aliases" in i]


def test_a_file_over_its_size_is_refused_before_it_is_read():
    text = "channels:\n  - id: push\n" + "# comment\n" * 220_000
    (issue,) = issues_of({"channels.yaml": CHANNELS, "notes.yaml": text})
    assert issue.startswith("notes.yaml:1:1: the file is 2.1 MiB: at most 2 MiB a file")


@pytest.mark.parametrize(("text", "message"), [
    ("a: !foo x\n", "'x' is not a valid value: the tag !foo is not allowed here"),
    ("a: !!python/object:os.system x\n", "is not allowed here"),
    ("settings: {<<: {a: 1}}\n", "settings: unknown field '<<'"),
    ("a: !!bool maybe\n", "'maybe' is not a valid value: not a bool"),
    ("a: 1\nb: \x00\n", "p.yaml:2:4: YAML: character #x0000 is not allowed"),
])
def test_tags_and_merge_keys_are_issues_not_tracebacks(text, message):
    assert any(message in i for i in issues_of({"p.yaml": text}))


def test_the_pure_python_loader_has_the_same_limits(monkeypatch):
    monkeypatch.setattr(yaml_source, "_LOADER", yaml_source._DepthLimitedLoader)
    deep = issues_of({"deep.yaml": "offers:\n" + "- " * 3000 + "x\n"})
    assert any("nested more than 64 levels deep" in i for i in deep), deep
    assert any("contains an alias (*name) of itself" in i for i in issues_of({"r.yaml": "a: &x [*x]\n"}))
    assert parse_policy_files(read_policy_dir(SAMPLE_POLICIES)).offers


# --- the set ----------------------------------------------------------------------------


def test_offers_places_and_files_are_counted(monkeypatch):
    monkeypatch.setattr(parser, "MAX_OFFERS", 2)
    monkeypatch.setattr(parser, "MAX_PLACES", 1)
    text = "offers:\n" + "".join(offer("event.amount > 1", f"o{i}").split("offers:\n", 1)[1] for i in range(3))
    places = ("places:\n  - {id: a, kind: shop, latitude: 1, longitude: 1}\n"
              "  - {id: b, kind: shop, latitude: 1, longitude: 1}\n")
    issues = issues_of({"channels.yaml": CHANNELS, "offers.yaml": text, "places.yaml": places})
    assert "offers.yaml:20:5: offers: more than 2 offers in the policy set" in issues
    assert "places.yaml:3:5: places: more than 1 places in the policy set" in issues
    monkeypatch.setattr(parser, "MAX_FILES", 2)
    with pytest.raises(PolicyValidationError, match=r"c\.yaml:1:1: the policy set has 3 files: at most 2"):
        parse_policy_files({"a.yaml": "", "b.yaml": "", "c.yaml": ""})


def test_a_realistic_bank_fits_within_the_limits(tmp_path):
    """The sample set cloned to 2,000 offers (about 1.4 MB): what a large bank needs."""
    folder = tmp_path / "bank"
    shutil.copytree(SAMPLE_POLICIES, folder)
    offers = []
    for name in ("bank.yaml", "retail.yaml"):
        text = (folder / name).read_text()
        offers_text = text.split("offers:\n", 1)[1].split("\nreasons:\n", 1)[0]  # the offers only
        offers += ["  - id:" + part for part in offers_text.split("\n  - id:")[1:]]
        (folder / name).unlink()
    for f in range(8):
        chunk = [offers[(f * 250 + i) % len(offers)].replace("  - id: ", f"  - id: c{f * 250 + i}_", 1)
                 for i in range(250)]
        (folder / f"offers_{f}.yaml").write_text("offers:\n" + "\n".join(part.rstrip() for part in chunk) + "\n")
    policy = parser.load_policy_dir(folder)
    assert len(policy.offers) == 2000


def test_the_store_refuses_what_no_valid_set_can_be(redis_client):
    assert policy_store.MAX_VERSION_BYTES == parser.MAX_STORED_BYTES  # the store may not import the parser
    assert parser.MAX_STORED_BYTES >= 2 * parser.MAX_SET_BYTES
    store = policy_store.PolicyStore(redis_client)
    with pytest.raises(policy_store.PolicyTooLarge, match=r"the policy set takes 8\.6 MiB: at most 8\.1 MiB"):
        store.publish({"big.yaml": "#" * 9_000_000})  # the store refuses to write what no replica would load
    assert store.live() is None
    version = store.publish({"small.yaml": "#"})
    redis_client.hset(keys.policy_version(version), "files", json.dumps({"big.yaml": "#" * 9_000_000}))  # raw
    with pytest.raises(policy_store.PolicyTooLarge, match=f"policy version {version} takes 8.6 MiB in Redis"):
        store.load(version)
    assert store.history()[0].version == version  # the history does not read the files
    redis_client.hset(keys.policy_version(version), "files", '["not", "files"]')
    with pytest.raises(ValueError, match="its files are not a JSON object of texts"):
        store.load(version)


def test_a_policy_set_written_before_channel_directions_keeps_its_limits():
    """Limits that leave ``direction`` out on offers or categories with no outbound channel count every channel,
    as they did before channels had directions: the sample without its ``direction: any`` compiles to the same
    limit table (a set published by the previous release still loads after an upgrade)."""
    from nba_service.policies.parser import parse_policy_files, read_policy_dir
    from nba_service.policies.snapshot import PolicySnapshot

    files = read_policy_dir(SAMPLE_POLICIES)
    older = {name: text.replace(", direction: any}", "}") for name, text in files.items()}
    assert older != files

    today = PolicySnapshot.compile(parse_policy_files(files), "1").limits
    before = PolicySnapshot.compile(parse_policy_files(older), "1").limits

    assert [row[:4] for row in before.rows] == [row[:4] for row in today.rows]
    assert [row[4] for row in before.rows] == [row[4] for row in today.rows]  # what a hit blocks
