"""The bake-off: the learned policy with default settings against random, the best fixed arm and the oracle."""

from __future__ import annotations

import json

from nba_service.cli import main
from nba_service.tools.evaluation.suite import run_problem


def test_the_default_policy_passes_small_problems_through_the_cli(tmp_path, capsys):
    out = tmp_path / "suite.json"
    plots = tmp_path / "plots"
    code = main(["evaluate", "--suite", "--problems", "phishing,image-segments", "--json", str(out),
                 "--plot-dir", str(plots)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "2 of 2 problems passed" in printed
    report = json.loads(out.read_text())
    for problem in report["problems"]:
        assert problem["passed"]
        assert problem["learned"]["mean"] > problem["best_fixed"]["ci_high"]  # context matters here
        assert problem["learned"]["mean"] < problem["oracle"]["mean"]
    assert sorted(p.name for p in plots.iterdir()) == ["image-segments.png", "phishing.png"]


def test_after_the_world_changes_the_policy_finds_the_new_best_arms():
    result = run_problem("waveform-rotate")
    learned, random, best, _ = result.late
    assert result.passed, result.verdict()
    assert learned.value > 2 * random.value  # every row's right arm moved, and the policy followed it
    before = result.curve[result.drift_at - 2000 : result.drift_at].mean()
    just_after = result.curve[result.drift_at : result.drift_at + 500].mean()
    assert just_after < random.value < before  # it did lose its way at the change, and recovered


def test_an_unknown_problem_is_refused(capsys):
    assert main(["evaluate", "--suite", "--problems", "nope"]) == 2
    assert "unknown problem 'nope'" in capsys.readouterr().err
