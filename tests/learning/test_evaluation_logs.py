"""``nba evaluate`` reads the rewards and features users actually log: yes/no, true/false, amounts, birth years."""

from __future__ import annotations

import csv
import gzip
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from nba_service.cli import main
from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.engine.features import request_features
from nba_service.tools import evaluation
from nba_service.tools.evaluation import DATASETS, LogFormatError, dataset_path, read_log


def write_text(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def one_column_log(tmp_path: pathlib.Path, rewards: list[str], name: str = "log.csv") -> pathlib.Path:
    """A log whose reward column ``r`` holds ``rewards`` as written, one row each (line 2 onwards)."""
    return write_text(tmp_path / name, ["act,r,x"] + [f"{'uv'[i % 2]},{r},1" for i, r in enumerate(rewards)])


def read_r(path: pathlib.Path):
    return read_log(path, action_col="act", reward_col="r", feature_cols=["x"])


def test_a_yes_no_reward_in_any_case_with_numbers_booleans_categories_and_blanks(tmp_path):
    log = write_text(
        tmp_path / "crm.csv",
        [
            "customer,born,member,city,offer,Converted,notes",
            "c1,1958,true,Paris,card,Yes,called twice",
            "c2,1972,FALSE,,loan, no ,",
            "c3,,True,Lyon,card,YES,",
            "c4,1990,,Lyon,loan,No,",
            "c5,2001, false ,Paris,card,y,",
        ],
    )
    data = read_log(log, action_col="offer", reward_col="Converted", feature_cols=["born", "member", "city"])
    assert data.reward_kind == "binary"
    assert data.reward.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert data.reward_spelling == "yes/no, y/n"
    assert data.describe_reward() == "binary: yes/no, y/n"
    assert data.actions == ("card", "loan")
    assert data.attributes == (
        {"born": "1958", "member": "1", "city": "Paris"},
        {"born": "1972", "member": "0"},  # blank city: a missing value, not a category ""
        {"member": "1", "city": "Lyon"},
        {"born": "1990", "city": "Lyon"},
        {"born": "2001", "member": "0", "city": "Paris"},
    )
    # what the engine makes of them: numbers for the year and the boolean, one-hot for the category
    ctx = CustomerContext(CustomerProfile.unknown("replay"), now=0.0)
    features = request_features(ctx, Event("custom", {"name": "replay"}, data.attributes[0]))
    assert features["event:born"] == pytest.approx(math.log1p(1958))
    assert features["event:member"] == pytest.approx(math.log1p(1))
    assert features["event:city=Paris"] == 1.0
    assert not any(name.startswith("event:member=") for name in features)


@pytest.mark.parametrize(
    ("written", "spelling"),
    [
        (["1", "0", "0", "1"], "1/0"),
        (["1.0", "0.0", "0", "1"], "1/0"),
        (["true", "FALSE", " False ", "True"], "true/false"),
        (["Y", "n", "N", "y"], "y/n"),
        (["yes", "0", "No", "1"], "yes/no, 1/0"),
    ],
)
def test_every_binary_spelling_reads_as_one_and_zero(tmp_path, written, spelling):
    data = read_r(one_column_log(tmp_path, written))
    assert data.reward_kind == "binary"
    assert data.reward.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert data.reward_spelling == spelling


def test_a_value_reward_is_kept_as_amounts(tmp_path):
    data = read_r(one_column_log(tmp_path, ["0", "29.99", "0", "120.50", "1", "0"]))
    assert data.reward_kind == "value"
    assert data.reward.tolist() == [0.0, 29.99, 0.0, 120.5, 1.0, 0.0]
    assert data.reward_spelling == ""
    assert data.describe_reward() == "value: mean 25.25, 0 for 50.0% of rows"


def test_hillstrom_spend_is_a_value_reward():
    data = read_log(dataset_path("hillstrom"), action_col="segment", reward_col="spend", feature_cols=["mens"])
    assert data.reward_kind == "value"
    assert data.describe_reward() == "value: mean 1.05, 0 for 99.1% of rows"
    visit = read_log(dataset_path("hillstrom"), action_col="segment", reward_col="visit", feature_cols=["mens"])
    assert visit.reward_kind == "binary" and visit.describe_reward() == "binary: 1/0"
    assert {row["mens"] for row in visit.attributes} == {"0", "1"}  # numeric 0/1 features stay as they are


def test_an_unknown_word_is_refused_naming_file_line_column_and_the_accepted_spellings(tmp_path):
    log = one_column_log(tmp_path, ["yes", "no", "maybe", "yes"])
    with pytest.raises(LogFormatError) as error:
        read_r(log)
    message = str(error.value)
    assert f"{log}:4:" in message  # the header is line 1
    assert "r 'maybe'" in message
    assert "yes/no" in message and "true/false" in message and "y/n" in message and "1/0" in message


def test_words_mixed_with_amounts_are_refused(tmp_path):
    log = one_column_log(tmp_path, ["yes", "0", "12.5"])
    with pytest.raises(LogFormatError, match=r"log\.csv:4: r '12\.5' mixes .*line 2 has 'yes'"):
        read_r(log)
    log = one_column_log(tmp_path, ["12.5", "1", "no"], name="other.csv")
    with pytest.raises(LogFormatError, match=r"other\.csv:4: r 'no' mixes .*line 2 has '12\.5'"):
        read_r(log)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (["0", "5", "-3.5"], r"log\.csv:4: r '-3\.5' is negative"),
        (["1", "-1"], r"log\.csv:3: r '-1' is negative"),
        (["1", "nan"], r"log\.csv:3: r 'nan' is not a finite number"),
        (["1", " "], r"log\.csv:3: r is blank"),
    ],
)
def test_negative_non_finite_and_blank_rewards_are_refused(tmp_path, written, message):
    with pytest.raises(LogFormatError, match=message):
        read_r(one_column_log(tmp_path, written))


def test_only_all_boolean_feature_columns_are_turned_into_numbers(tmp_path):
    log = write_text(
        tmp_path / "log.csv",
        [
            "act,r,flag,mixed,answer,gold",
            "u,1,yes,yes,Yes,1",
            "v,0,No,maybe,no,0",
            "u,0,,no,y,",
        ],
    )
    data = read_log(log, action_col="act", reward_col="r", feature_cols=["flag", "mixed", "answer", "gold"])
    assert [row.get("flag") for row in data.attributes] == ["1", "0", None]
    assert [row.get("mixed") for row in data.attributes] == ["yes", "maybe", "no"]  # not only booleans: as read
    assert [row.get("answer") for row in data.attributes] == ["1", "0", "1"]
    assert [row.get("gold") for row in data.attributes] == ["1", "0", None]


def test_the_shipped_open_bandit_sample(tmp_path):
    preset = DATASETS["obd-men"]
    path = dataset_path("obd-men")
    assert path.stat().st_size < 100_000
    with gzip.open(path, "rt", newline="") as log:
        header = next(csv.reader(log))
    assert header == [
        "item_id",
        "position",
        "click",
        "propensity_score",
        "user_feature_0",
        "user_feature_1",
        "user_feature_2",
        "user_feature_3",
    ]
    data = read_log(
        path,
        action_col=preset["action_col"],
        reward_col=preset["reward_col"],
        feature_cols=preset["feature_cols"],
        propensity_col=preset["propensity_col"],
    )
    assert len(data) == 10_000 and len(data.actions) == 34
    assert data.reward_kind == "binary" and int(data.reward.sum()) == 46
    np.testing.assert_allclose(data.propensity, 1 / 34)


@pytest.mark.parametrize(
    ("args", "propensity", "propensity_col"),
    [
        (["--dataset", "obd-men"], None, "propensity_score"),
        (["--dataset", "hillstrom"], 1 / 3, None),
        (["--dataset", "obd-men", "--propensity", "0.5"], 0.5, None),
        (["--dataset", "hillstrom", "--propensity-col", "recency"], None, "recency"),
    ],
)
def test_a_dataset_brings_its_propensity_unless_one_is_given(monkeypatch, capsys, args, propensity, propensity_col):
    seen = {}

    def stop(path, **columns):  # record what the command asked for, and skip the replay
        seen.update(columns)
        raise LogFormatError("stopped")

    monkeypatch.setattr(evaluation, "read_log", stop)
    assert main(["evaluate", *args]) == 2
    assert "stopped" in capsys.readouterr().err
    assert seen["propensity"] == propensity and seen["propensity_col"] == propensity_col


def test_nba_evaluate_on_a_yes_no_log_names_the_reward_kind(tmp_path):
    rng = np.random.default_rng(11)
    rate = {"a1": 0.05, "a2": 0.05, "a3": 0.4, "a4": 0.05, "a5": 0.05}  # a3 is clearly the best
    lines = ["arm,Converted,born,member,region"]
    for _ in range(3000):
        arm = str(rng.choice(list(rate)))
        reward = "Yes" if rng.random() < rate[arm] else str(rng.choice(["no", "No", "NO"]))
        born = str(int(rng.integers(1940, 2005))) if rng.random() < 0.9 else ""
        lines.append(f"{arm},{reward},{born},{rng.choice(['true', 'False'])},{rng.choice(['north', 'south', ''])}")
    log = write_text(tmp_path / "crm.csv", lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nba_service.cli",
            "evaluate",
            str(log),
            "--action-col",
            "arm",
            "--reward-col",
            "Converted",
            "--feature-cols",
            "born,member,region",
            "--seed",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "reward Converted (binary: yes/no), 3,000 rows, 5 actions" in result.stdout
    assert "best_fixed (a3)" in result.stdout
