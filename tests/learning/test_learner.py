"""The learner against a real Redis: exactly-once learning across a crash, expiry, versions."""

from __future__ import annotations

import json
import random
import pytest
import redis

from nba_service.cli import main
from nba_service.learning.learner import Learner
from nba_service.learning.models import ModelBank
from nba_service.store import keys
from nba_service.store.model_store import ModelStore
from nba_service.store.outcome_stream import OutcomeStream


def _fill(client: redis.Redis, count: int, seed: int = 5, bucket: int = 7) -> list[dict[str, str]]:
    """``count`` outcomes on one bucket's stream (the learner reads a bucket's in order: the reference's order)."""
    rng = random.Random(seed)
    entries = []
    for i in range(count):
        entry = {"decision_id": f"d{i}", "offer_id": rng.choice(("loan", "card")), "channel": rng.choice(("push", "sms")),
                 "features": json.dumps({f"segment={rng.choice(('mass', 'vip'))}": 1.0, "log_shortfall": rng.uniform(0, 5)}),
                 "reward": "1" if rng.random() < 0.3 else "0", "prior": "0.1", "outcome": "accepted"}
        client.xadd(keys.outcome_stream(bucket), entry)
        entries.append(entry)
    return entries


def _reference(entries: list[dict[str, str]]) -> ModelBank:
    bank = ModelBank()
    for e in entries:
        bank.learn(e["offer_id"], e["channel"], json.loads(e["features"]), float(e["reward"]), float(e["prior"]))
    return bank


def _weights(bank: ModelBank) -> dict[str, float]:
    """Every posterior mean and sd of the offers' and arms' blocks, flat."""
    described = bank.describe()
    flat: dict[str, float] = {}
    for kind in ("offers", "arms"):
        for name, block in described[kind].items():  # type: ignore[attr-defined]
            for stat in ("mean", "sd"):
                flat[f"{kind}/{name}/intercept/{stat}"] = block["intercept"][stat]
                for column, weight in block["weights"].items():
                    flat[f"{kind}/{name}/{column}/{stat}"] = weight[stat]
    return flat


def test_a_learner_killed_mid_stream_loses_nothing_and_double_counts_nothing(redis_client):
    entries = _fill(redis_client, 300)
    first = Learner(redis_client, name="first", snapshot_every=100, batch=50, block_ms=1)
    while first.learned < 250:
        first.step()
    assert first.version == 2  # two versions published, 200 outcomes acknowledged; 50 learned but not yet published
    redis_client.delete(keys.LEARNER_LOCK)  # the process dies: its lock expires, nothing else happens

    second = Learner(redis_client, name="second", snapshot_every=1000, batch=50, block_ms=1)
    while second.models.updates < 300:
        assert second.step() or second.models.updates < 300
    second.publish()

    assert second.models.updates == 300
    published = ModelBank.from_bytes(ModelStore(redis_client).load())
    assert published.updates == 300
    reference = _weights(_reference(entries))
    assert _weights(published) == pytest.approx(reference)
    assert OutcomeStream(redis_client, "second").backlog() == 0


def test_only_one_learner_is_active(redis_client):
    _fill(redis_client, 20)
    one = Learner(redis_client, name="one", snapshot_every=5, block_ms=1)
    two = Learner(redis_client, name="two", snapshot_every=5, block_ms=1)
    assert one.step() == 20
    assert two.step() == 0  # waits: "one" holds the lock
    one.publish()
    assert ModelBank.from_bytes(ModelStore(redis_client).load()).updates == 20


def test_rollback_is_followed_by_the_learner(redis_client, redis_url, capsys):
    _fill(redis_client, 30)
    learner = Learner(redis_client, name="l", snapshot_every=10, batch=10, block_ms=1)
    for _ in range(3):
        learner.step()
    assert learner.version == 3

    code = main(["model", "rollback", "1", "--redis-url", redis_url])
    assert code == 0 and "model version 1 is live again" in capsys.readouterr().out

    _fill(redis_client, 10, seed=9)
    learner.step()  # learns 10 more on top of version 3, then, about to publish, sees the rollback
    assert (learner.version, learner.models.updates) == (1, 10)  # and continues from version 1 instead
    while learner.step():  # re-learning the 10 new outcomes, still pending, on top of version 1
        pass
    assert ModelStore(redis_client).live() == 4
    assert ModelBank.from_bytes(ModelStore(redis_client).load()).updates == 20


def test_model_history_and_export(redis_client, tmp_path, capsys, redis_url):
    _fill(redis_client, 10)
    learner = Learner(redis_client, name="l", snapshot_every=5, block_ms=1)
    learner.step()
    assert main(["model", "history", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("*") and out[-1].split()[1] == "1" and "10" in out[-1]
    target = tmp_path / "model.json"
    assert main(["model", "export", str(target), "--redis-url", redis_url]) == 0
    exported = json.loads(target.read_text())
    assert exported["version"] == 1 and exported["updates"] == 10
    assert set(exported["arms"]) <= {"loan/push", "loan/sms", "card/push", "card/sms"}


def test_learner_bench_reports_a_rate():
    from nba_service.tools.learner_bench import run_learner_bench

    result = run_learner_bench(outcomes=2000, arms=10, snapshot_every=500)
    assert result["outcomes"] == 2000 and result["outcomes_per_second"] > 0
    assert result["model_version"] == 2  # 2000 outcomes read 1000 at a time, published every 500 or more


def test_promoting_the_challenger_makes_it_live_and_the_learner_continues_from_it(redis_client, redis_url, capsys):
    _fill(redis_client, 20)
    learner = Learner(redis_client, name="l", snapshot_every=10, batch=10, block_ms=1, challenger_learning_rate=0.5)
    learner.step()
    learner.step()
    assert learner.version == 2
    assert main(["model", "promote", "--redis-url", redis_url]) == 0
    assert "live as model version 3" in capsys.readouterr().out
    promoted = ModelBank.from_bytes(ModelStore(redis_client).load())
    assert promoted.learning_rate == 0.5 and promoted.updates == 20

    _fill(redis_client, 10, seed=11)
    learner.step()  # about to publish, it sees version 3 and continues from the promoted models
    assert learner.models.learning_rate == 0.5


def test_after_a_promotion_the_learner_starts_a_new_challenger(redis_client, redis_url, capsys):
    _fill(redis_client, 20)
    learner = Learner(redis_client, name="l", snapshot_every=10, batch=10, block_ms=1, challenger_learning_rate=0.5)
    learner.step()
    assert main(["model", "promote", "--redis-url", redis_url]) == 0
    assert ModelStore(redis_client).load_challenger() is None  # consumed
    assert main(["model", "promote", "--redis-url", redis_url]) == 1  # nothing left to promote
    capsys.readouterr()
    _fill(redis_client, 10, seed=3)
    learner.step()  # sees the promotion: continues from it, with a new challenger
    while learner.step():
        pass
    challenger = ModelBank.from_bytes(ModelStore(redis_client).load_challenger())
    live = ModelBank.from_bytes(ModelStore(redis_client).load())
    assert challenger.updates == live.updates


def test_models_of_an_older_format_are_left_and_learning_starts_from_the_priors(redis_client):
    import pickle

    ModelStore(redis_client).publish(pickle.dumps({"format": 1, "models": {}}), 7, source="nba 0.x")
    _fill(redis_client, 20)
    learner = Learner(redis_client, name="l", snapshot_every=10, batch=10, block_ms=1)
    while learner.learned < 20:
        learner.step()
    published = ModelBank.from_bytes(ModelStore(redis_client).load())
    assert published.updates == 20  # the 7 outcomes of the unreadable version are not pretended
