"""``nba learner bench``: the learner's sustained rate, measured on a private embedded Redis.

Fills the outcome stream with synthetic outcomes shaped like real ones (the
features of a decision request, one of ``arms`` arms, a 0/1 reward), then
times one learner draining it, snapshots included.
"""

from __future__ import annotations

import json
import random
import tempfile
import time

import psutil

from nba_service.learning.learner import Learner
from nba_service.store import keys
from nba_service.store.connect import RedisTarget, sync_client
from nba_service.store.embedded import EmbeddedRedis

__all__ = ["run_learner_bench"]


def _features(rng: random.Random) -> str:
    return json.dumps(
        {
            f"event={rng.choice(('atm_decline', 'location', 'cart_abandon', 'app_open'))}": 1.0,
            f"origin={rng.choice(('atm', 'app', 'web'))}": 1.0,
            f"segment={rng.choice(('mass', 'young', 'affluent', 'student', 'family', 'vip'))}": 1.0,
            f"daypart={rng.choice(('morning', 'afternoon', 'evening'))}": 1.0,
            "known": 1.0,
            "weekend": float(rng.random() < 0.3),
            "has_app": float(rng.random() < 0.7),
            "log_shortfall": rng.uniform(0, 6),
            "log_events_24h": rng.uniform(0, 3),
        },
        separators=(",", ":"),
    )


def run_learner_bench(outcomes: int = 50_000, arms: int = 100, seed: int = 1, snapshot_every: int = 1000) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="nba-learner-bench-") as folder:
        embedded = EmbeddedRedis(folder)
        url = embedded.start()
        client = sync_client(RedisTarget(url=url))
        try:
            with client.pipeline(transaction=False) as pipe:
                for i in range(outcomes):
                    arm = rng.randrange(arms)
                    pipe.xadd(
                        keys.outcome_stream(i % keys.BUCKETS),
                        {
                            "decision_id": f"d{i}",
                            "offer_id": f"offer_{arm // 3}",
                            "channel": ("push", "sms", "email")[arm % 3],
                            "features": _features(rng),
                            "reward": "1" if rng.random() < 0.15 else "0",
                            "prior": "0.1",
                            "outcome": "accepted",
                        },
                    )
                    if i % 5000 == 4999:
                        pipe.execute()
                pipe.execute()
            learner = Learner(
                client, name="bench", snapshot_every=snapshot_every, snapshot_seconds=60.0, batch=1000, block_ms=1
            )
            process = psutil.Process()
            cpu_before = process.cpu_times()
            started = time.perf_counter()
            while learner.models.updates < outcomes:
                learner.step()
            if learner._unacked:
                learner.publish()
            elapsed = time.perf_counter() - started
            cpu_after = process.cpu_times()
            cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            return {
                "outcomes": outcomes,
                "arms": arms,
                "seconds": elapsed,
                "cpu_seconds": cpu,
                "outcomes_per_second": outcomes / elapsed,
                "snapshot_every": snapshot_every,
                "model_version": learner.version,
            }
        finally:
            client.close()
            embedded.stop()
