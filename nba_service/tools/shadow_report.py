"""Champion and challenger: the value of the policy that did not decide, from the logs.

With ``NBA_MODE=apprentice`` the rules decide and the learned policy's choice
is logged with every decision; with ``learned+shadow`` it is the other way
round. Once outcomes have settled the logged decisions, this report compares
the served policy's observed reward with off-policy estimates (IPS,
self-normalised IPS, doubly robust) of the shadow policy's, each with a 95%
confidence interval.

With ``learned+challenger`` the champion (the live models) and the challenger
(the learner's challenger models) take turns: the challenger serves a share of
decisions and both policies' probabilities of the served action are logged
with the mixture's propensity (see :mod:`nba_service.learning.guard`). The
report then gives each policy's value from every row (IPS and SNIPS), the
challenger's difference to the champion with its confidence interval, each
policy's observed reward on the decisions it served, and the guard's state.
Promotion stays a human command: ``nba model promote``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import redis

from nba_service.learning.guard import ChallengerGuard
from nba_service.store import keys
from nba_service.store.model_store import ModelStore
from nba_service.tools.off_policy import doubly_robust, ips, mean_estimate, snips

__all__ = ["REWARDING", "shadow_report"]

REWARDING = frozenset({"accepted", "converted"})
"""Settling outcomes that count as a reward of 1 (declined, dismissed and expired count 0)."""


def _logged(client: redis.Redis, batch: int = 1000) -> list[tuple[dict[str, Any], str]]:
    rows = []
    found = client.scan_iter(match=keys.DECISION_PATTERN, count=batch)  # every primary of a cluster
    while chunk := list(itertools.islice(found, batch)):
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hmget(key, "meta", "learned", "offer_id", "channel")
            for meta, learned, offer, channel in pipe.execute():
                if meta and learned and offer:
                    record = json.loads(meta)
                    if "shadow" in record:
                        record["offer_id"], record["channel"] = offer.decode(), channel.decode()
                        rows.append((record, learned.decode()))
    return rows


def _pair(record: dict[str, Any]) -> tuple[str, str]:
    shadow = record["shadow"]
    if "pi_challenger" in shadow:
        return "learned+challenger", "challenger"
    served = shadow.get("served") or ("rules" if shadow["policy"] == "learned" else "learned")
    return served, shadow["policy"]


def _trial_report(client: redis.Redis, rows: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """Champion and challenger, each evaluated on every row of a trial in which both served."""
    rewards = np.array([1.0 if learned in REWARDING else 0.0 for _, learned in rows])
    mixture = np.array([float(r["propensity"]) for r, _ in rows])
    champion = np.array([float(r["shadow"]["pi_champion"]) for r, _ in rows])
    challenger = np.array([float(r["shadow"]["pi_challenger"]) for r, _ in rows])
    by_challenger = np.array([r["shadow"]["served"] == "challenger" for r, _ in rows])

    def policy(target: np.ndarray, served: np.ndarray) -> dict[str, Any]:
        return {
            "ips": ips(rewards, mixture, target).as_dict(),
            "snips": snips(rewards, mixture, target).as_dict(),
            "observed": mean_estimate(rewards[served]).as_dict() if served.any() else None,
            "served_rows": int(served.sum()),
        }

    return {
        "rows": len(rows),
        "served": {"policy": "learned+challenger", **mean_estimate(rewards).as_dict()},
        "trial": {
            "share": float(rows[-1][0]["shadow"]["share"]),
            "champion": policy(champion, ~by_challenger),
            "challenger": policy(challenger, by_challenger),
            "difference": mean_estimate((challenger - champion) / mixture * rewards).as_dict(),
            "guard": ChallengerGuard.from_json(ModelStore(client).load_guard()).as_dict(),
        },
    }


def shadow_report(client: redis.Redis) -> dict[str, Any]:
    """Served vs shadow policy over the settled decisions that logged a shadow choice.

    Rows logged under different modes are not pooled: the report covers the (served, shadow)
    pair with the most rows and counts the others in ``other_pairs``.
    """
    logged = _logged(client)
    if not logged:
        return {"rows": 0}
    pairs: dict[tuple[str, str], list[tuple[dict[str, Any], str]]] = {}
    for row in logged:
        pairs.setdefault(_pair(row[0]), []).append(row)
    (served_policy, shadow_policy), rows = max(pairs.items(), key=lambda item: len(item[1]))
    other_pairs = {
        f"{s} served, {p} logged": len(r) for (s, p), r in pairs.items() if (s, p) != (served_policy, shadow_policy)
    }
    if served_policy == "learned+challenger":
        return {**_trial_report(client, rows), "other_pairs": other_pairs}
    rewards = np.array([1.0 if learned in REWARDING else 0.0 for _, learned in rows])
    propensities = np.array([float(r["propensity"]) for r, _ in rows])
    same = np.array(
        [
            1.0 if (r["shadow"]["offer_id"], r["shadow"]["channel"]) == (r["offer_id"], r["channel"]) else 0.0
            for r, _ in rows
        ]
    )
    q_logged = np.array([float(r["shadow"].get("p_served", 0.0)) for r, _ in rows])
    v_target = np.array([float(r["shadow"].get("p_shadow", 0.0)) for r, _ in rows])
    return {
        "rows": len(rows),
        "served": {"policy": served_policy, **mean_estimate(rewards).as_dict()},
        "other_pairs": other_pairs,
        "shadow": {
            "policy": shadow_policy,
            "agreement": float(same.mean()),
            "ips": ips(rewards, propensities, same).as_dict(),
            "snips": snips(rewards, propensities, same).as_dict(),
            "doubly_robust": doubly_robust(rewards, propensities, same, q_logged, v_target).as_dict(),
        },
    }
