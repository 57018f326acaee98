"""`nba policy diff`: what changed between two policy sets, field by field."""

from __future__ import annotations

import pathlib

import pytest

from nba_service.cli import main
from nba_service.policies.diff import diff_policies
from nba_service.policies.parser import parse_policy_files, read_policy_dir
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES


def edit(files: dict[str, str], name: str, old: str, new: str) -> None:
    assert files[name].count(old) >= 1, f"{old!r} not in {name}"
    files[name] = files[name].replace(old, new, 1)


@pytest.fixture
def sample() -> dict[str, str]:
    return read_policy_dir(SAMPLE_POLICIES)


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return [str(c) for c in diff_policies(parse_policy_files(old), parse_policy_files(new)).changes]


def test_the_same_set_has_no_differences(sample):
    result = diff_policies(parse_policy_files(sample), parse_policy_files(dict(sample)))
    assert not result and result.render() == ["no differences"]


def test_lists_exactly_the_changed_fields(sample):
    new = dict(sample)
    edit(new, "bank.yaml", "    prior: 0.12\n", "    prior: 0.15\n")  # micro_loan
    edit(new, "bank.yaml", "      - {max: 2, per: 30d}\n", "      - {max: 2, per: 30d}\n      - {max: 1, per: 7d}\n")
    edit(new, "settings.yaml", "savings: 1.1", "savings: 1.3")
    edit(new, "settings.yaml", "{channel: sms, max: 1, per: 1d}", "{channel: sms, max: 2, per: 1d}")
    edit(new, "channels.yaml", 'quiet_hours: {start: "21:00", end: "08:00"}   # customer',
         'quiet_hours: {start: "22:00", end: "08:00"}   # customer')
    edit(new, "retail.yaml", "    paused: true\n", "    paused: false\n")
    edit(new, "bank.yaml", "eligible_when: \"not profile.known", "eligible_when: \"not profile.known and event.amount <= 100")

    assert changes(sample, new) == [
        "settings.levers.categories.savings: 1.1 -> 1.3",
        "settings.contact_limits: {channel: sms, max: 1, per: 1d} -> {channel: sms, max: 2, per: 1d}",
        'push.quiet_hours: {start: "21:00", end: "08:00"} -> {start: "22:00", end: "08:00"}',
        "micro_loan.prior: 0.12 -> 0.15",
        "micro_loan.limits: + {max: 1, per: 7d}",
        'atm_open_account.eligible_when: "not profile.known" -> "not profile.known and event.amount <= 100"',
        "paused_example_flash_sale.paused: true -> false",
    ]


def test_offers_and_channels_added_and_removed(sample):
    new = dict(sample)
    new["spring.yaml"] = (
        "channels:\n"
        "  - {id: whatsapp, name: WhatsApp}\n"
        "offers:\n"
        "  - id: spring_savings\n"
        "    name: Spring savings boost\n"
        "    category: savings\n"
        "    events: [app_open]\n"
        "    value: 12\n"
        "    prior: 0.08\n"
        "    channels: [whatsapp, push]\n"
        "    content: {default: \"Save more this spring, {first_name}.\"}\n")
    start = new["retail.yaml"].index("  - id: paused_example_flash_sale")
    new["retail.yaml"] = new["retail.yaml"][:start] + new["retail.yaml"][new["retail.yaml"].index("\nreasons:\n"):]

    result = diff_policies(parse_policy_files(sample), parse_policy_files(new))

    assert result.added("channels") == ["whatsapp"] and result.added("offers") == ["spring_savings"]
    assert result.removed("offers") == ["paused_example_flash_sale"] and not result.removed("channels")
    lines = result.render()
    assert "  + channel whatsapp: WhatsApp (reach channel)" in lines
    assert ("  + offer spring_savings: Spring savings boost (savings; events app_open; channels whatsapp, push; "
            "value 12, prior 0.08)") in lines
    assert any(line.startswith("  - offer paused_example_flash_sale: Flash sale") for line in lines)
    assert lines[-1] == "channel: 1 added; offers: 1 added, 1 removed"


def test_compares_meaning_not_text(sample):
    """Comments, key order, the file an offer sits in and 24h for 1d are no change."""
    new = dict(sample)
    edit(new, "settings.yaml", "{channel: sms, max: 1, per: 1d}", "{per: 24h, max: 1, channel: sms}")
    edit(new, "settings.yaml", "# Global settings", "# Reviewed in the spring. Global settings")
    start = new["bank.yaml"].index("  - id: fee_refund")
    end = new["bank.yaml"].index("  - id: retention_offer")
    new["moved.yaml"] = "offers:\n" + new["bank.yaml"][start:end]
    new["bank.yaml"] = new["bank.yaml"][:start] + new["bank.yaml"][end:]

    assert changes(sample, new) == []


def test_content_variables_and_lists_field_by_field(sample):
    new = dict(sample)
    edit(new, "bank.yaml", "channels: [push, atm_screen, sms]", "channels: [push, atm_screen, email]")
    edit(new, "bank.yaml", 'loan_amount: "round_up(event.shortfall, 50)"', 'loan_amount: "round_up(event.shortfall, 100)"')
    edit(new, "bank.yaml", '      sms: "{first_name}, an instant loan', '      email: "{first_name}, an instant loan')
    edit(new, "bank.yaml", "      - {channel: push, max: 1, per: 1d}\n", "")

    assert changes(sample, new) == [
        "micro_loan.channels: - sms",
        "micro_loan.channels: + email",
        'micro_loan.variables.loan_amount: "round_up(event.shortfall, 50)" -> "round_up(event.shortfall, 100)"',
        'micro_loan.content.sms: - "{first_name}, an instant loan of {loan_amount} {currency} is ready.'
        ' Reply YES to receive it now."',
        'micro_loan.content.email: + "{first_name}, an instant loan of {loan_amount} {currency} is ready.'
        ' Reply YES to receive it now."',
        "micro_loan.limits: - {channel: push, max: 1, per: 1d}",
    ]


def nba(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_diff_versions_and_directories(capsys, redis_url, redis_client, sample, tmp_path):
    store = PolicyStore(redis_client)
    store.publish(sample, author="maria", message="first")
    code, _, err = nba(capsys, "policy", "diff", "--redis-url", redis_url)
    assert code == 1 and "policy version 1 is the first one" in err

    candidate = tmp_path / "candidate"
    candidate.mkdir()
    new = dict(sample)
    edit(new, "settings.yaml", "savings: 1.1", "savings: 1.3")
    for name, text in new.items():
        (candidate / name).write_text(text)

    code, out, _ = nba(capsys, "policy", "diff", str(candidate), "--redis-url", redis_url)
    assert code == 0
    assert out.splitlines() == [f"from policy version 1 (live) to {candidate}:", "settings:",
                                "  settings.levers.categories.savings: 1.1 -> 1.3", "1 setting changed"]

    store.publish(new, author="maria", message="savings focus")
    code, out, _ = nba(capsys, "policy", "diff", "--redis-url", redis_url)  # previous -> live
    assert out.splitlines()[0] == "from policy version 1 to policy version 2 (live):"
    assert "  settings.levers.categories.savings: 1.1 -> 1.3" in out.splitlines()
    code, out, _ = nba(capsys, "policy", "diff", "2", "1", "--redis-url", redis_url)
    assert "  settings.levers.categories.savings: 1.3 -> 1.1" in out.splitlines()
    code, out, _ = nba(capsys, "policy", "diff", "2", str(candidate), "--redis-url", redis_url)
    assert out.splitlines()[-1] == "no differences"

    code, _, err = nba(capsys, "policy", "diff", "9", "--redis-url", redis_url)
    assert code == 1 and "policy version 9 does not exist" in err
    code, _, err = nba(capsys, "policy", "diff", str(tmp_path / "nowhere"), "--redis-url", redis_url)
    assert code == 1 and "neither a policy version number" in err
    (candidate / "settings.yaml").write_text("settings:\n  no_action_threshold: -1\n")
    code, _, err = nba(capsys, "policy", "diff", str(candidate), "--redis-url", redis_url)
    assert code == 1 and f"{pathlib.Path(candidate) / 'settings.yaml'}:2:24" in err
