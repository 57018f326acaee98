"""The change log as `nba policy history` and `nba history` show it: every publish, rollback and promotion."""

from __future__ import annotations

import datetime
import json
import time

import pytest
import redis

from nba_service.cli import main
from nba_service.learning.models import ModelBank
from nba_service.store import keys
from nba_service.store.change_log import make_live, read_changes
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES

LONG_AUTHOR = "marketing-analytics-team-lead@example.com"


def nba(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_publish_publish_rollback_promote_appear_in_order(capsys, redis_url, redis_client, tmp_path):
    started = time.time()
    for author, message in ((LONG_AUTHOR, "first"), ("maria", "second: savings offer")):
        code, _, _ = nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url,
                         "-m", message, "--author", author)
        assert code == 0
    code, out, _ = nba(capsys, "policy", "rollback", "--redis-url", redis_url, "--author", "ops-oncall",
                       "-m", "savings offer sent twice")
    assert code == 0 and "version 1 is live" in out
    models = ModelStore(redis_client)
    bank = ModelBank().to_bytes()
    assert models.publish(bank, 0, challenger=bank) == 1  # a learner snapshot, with a challenger: not logged
    code, out, _ = nba(capsys, "model", "promote", "--redis-url", redis_url, "--author", "data-science",
                       "-m", "challenger clearly better")
    assert code == 0 and "model version 2" in out

    target = tmp_path / "history.json"
    code, out, _ = nba(capsys, "history", "--redis-url", redis_url, "--json", str(target))
    assert code == 0
    written = json.loads(target.read_text())
    assert written["live"] == {"policy": 1, "model": 2}
    story = [(c["what"], c["kind"], c["version"], c["previous"], c["who"], c["message"]) for c in written["changes"]]
    assert story == [
        ("policy", "publish", 1, None, LONG_AUTHOR, "first"),
        ("policy", "publish", 2, 1, "maria", "second: savings offer"),
        ("policy", "rollback", 1, 2, "ops-oncall", "savings offer sent twice"),
        ("model", "promote", 2, 1, "data-science", "challenger clearly better"),
    ]
    when = [datetime.datetime.fromisoformat(c["when"]) for c in written["changes"]]
    assert all(w.utcoffset() == datetime.timedelta(0) for w in when)  # UTC
    assert when == sorted(when) and started - 1 <= when[0].timestamp() <= when[-1].timestamp() <= time.time() + 1

    header, *rows, blank, footer = out.splitlines()
    assert blank == "" and footer == "live now: policy version 1, model version 2"
    assert len(rows) == 4 and LONG_AUTHOR in rows[0]  # whole, not cut
    # the live version of each is marked on the change that made it live: the rollback and the promotion
    assert [row.startswith("*") for row in rows] == [False, False, True, True]
    for row, message in zip(rows, ("first", "second", "savings offer sent", "challenger"), strict=True):
        assert row.index(message) == header.index("message")  # every column as wide as its longest value

    code, out, _ = nba(capsys, "policy", "history", "--redis-url", redis_url)
    assert code == 0
    header, *rows = out.splitlines()
    assert [r.split()[:1] for r in rows] == [["1"], ["2"], ["*"]]
    assert "rollback" in rows[2] and "ops-oncall" in rows[2] and rows[2].index("savings") == header.index("message")
    assert LONG_AUTHOR in rows[0] and "promote" not in out  # the policy history shows policy changes only


def test_rollback_defaults_its_author_like_publish(capsys, redis_url, redis_client, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "login-name")
    for _ in range(2):
        nba(capsys, "policy", "publish", str(SAMPLE_POLICIES), "--redis-url", redis_url)
    assert nba(capsys, "policy", "rollback", "--redis-url", redis_url)[0] == 0
    changes = PolicyStore(redis_client).changes()
    assert [(c.kind, c.who, c.version, c.previous) for c in changes] == [
        ("publish", "login-name", 1, None), ("publish", "login-name", 2, 1), ("rollback", "login-name", 1, 2)]


def test_versions_published_before_the_change_log_still_show(capsys, redis_url, redis_client):
    store = PolicyStore(redis_client)
    store.publish({"a.yaml": "x: 1\n"}, author=LONG_AUTHOR, message="before the log")
    redis_client.delete(keys.CHANGE_LOG)  # as a deployment of an earlier release left it
    store.publish({"a.yaml": "x: 2\n"}, author="maria", message="after")

    changes = store.changes()
    assert [(c.version, c.kind, c.previous, c.who, c.message, c.logged) for c in changes] == [
        (1, "publish", None, LONG_AUTHOR, "before the log", False),
        (2, "publish", 1, "maria", "after", True),
    ]
    code, out, _ = nba(capsys, "policy", "history", "--redis-url", redis_url)
    header, first, second = out.splitlines()
    assert code == 0 and header.split()[:2] == ["version", "when"]
    assert LONG_AUTHOR in first and "before the log" in first and second.startswith("*")


def test_a_change_and_its_entry_are_written_together_or_not_at_all(redis_client):
    store = PolicyStore(redis_client)
    store.publish({"a.yaml": "x: 1\n"}, author="maria")
    with pytest.raises(KeyError, match="policy version 7 does not exist"):
        store.rollback(7)
    # the script itself refuses a version whose record is gone (deleted after it was checked): nothing changes
    with pytest.raises(redis.ResponseError, match="policy version 7 does not exist"):
        make_live(redis_client, what="policy", kind="rollback", version=7, live_key=keys.POLICY_LIVE,
                  channel=keys.POLICY_CHANNEL, record_key=keys.policy_version(7), who="x", message="", when=0.0)
    assert store.live() == 1 and len(read_changes(redis_client)) == redis_client.xlen(keys.CHANGE_LOG) == 1
    # the learner's snapshots move the model pointer without an entry; a rollback of them is logged
    models = ModelStore(redis_client)
    for _ in range(2):
        models.publish(ModelBank().to_bytes(), 0)
    assert models.rollback(author="ops") == 1
    assert [(c.what, c.kind, c.version, c.previous, c.who) for c in read_changes(redis_client)] == [
        ("policy", "publish", 1, None, "maria"), ("model", "rollback", 1, 2, "ops")]
