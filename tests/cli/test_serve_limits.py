"""``nba serve`` takes its overload, connection and drain limits as flags as well as NBA_* variables."""

from __future__ import annotations

import argparse

import pytest

from nba_service.cli import main, serve
from nba_service.cli._common import settings_from


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_the_limit_flags_reach_the_settings(monkeypatch):
    monkeypatch.setenv("NBA_MAX_CONNECTIONS", "500")  # a flag wins over the environment, the environment over defaults
    monkeypatch.setenv("NBA_DECISIONS_AT_ONCE", "8")
    args = _parse("--max-decisions-in-progress", "256", "--max-connections", "900", "--grace-seconds", "2.5")
    overrides = {name: getattr(args, name) for name, _, _ in serve.LIMITS}
    settings = settings_from(args, **overrides)
    assert settings.max_decisions_in_progress == 256
    assert settings.max_connections == 900
    assert settings.grace_seconds == 2.5
    assert settings.decisions_at_once == 8
    assert settings.max_streams_per_connection == 64


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--max-decisions-in-progress", "0", "max_decisions_in_progress"), ("--grace-seconds", "-1", "grace_seconds")],
)
def test_a_limit_out_of_range_is_refused_naming_the_field(capsys, flag, value, field):
    assert main(["serve", "--port", "0", flag, value]) != 0
    assert field in capsys.readouterr().err
