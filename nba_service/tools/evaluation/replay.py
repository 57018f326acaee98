"""Replay evaluation of the learned policy on a logged, randomised experiment.

A log where each row's action was chosen at random with a known probability
(an A/B/n test, a uniformly exploring bandit) is replayed through the real
decision engine and the real learner, online, with the replay method (Li et
al., WSDM 2011): for every row the engine decides from that row's features
only; when it picks the logged action the row counts, its reward is the
policy's reward and the learner learns it; otherwise the row is skipped (what
that customer would have done is unknown). The learned policy's mean over the
counted rows is an unbiased estimate of its online reward when the logging was
uniform; with logged propensities IPS and self-normalised IPS are reported too.

Every action becomes an offer (value 1, one channel ``replay`` that needs no
consent) answering a ``custom`` event whose attributes are the row's feature
columns and nothing else: the engine turns them into model features like any
request's (numbers on a log scale, anything else one-hot). Outcome columns
are never read as features.

Next to it: uniform random, each fixed action (its rows of the log, weighted
by the propensities), the best fixed action in hindsight and, when given, a
targeting rule (:mod:`~nba_service.tools.evaluation.rules`), replayed the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.policies.model import PolicySet
from nba_service.policies.parser import parse_policy_files
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.tools.evaluation.logs import LogFormatError, LoggedData
from nba_service.tools.evaluation.rules import TargetingRule, rule_actions
from nba_service.tools.learned_policy import PolicyConfig
from nba_service.tools.off_policy import Estimate, ips, mean_estimate, snips

__all__ = ["Evaluation", "ReplayConfig", "evaluate", "offer_ids", "replay_policy"]

CHANNEL = "replay"
_NOW = datetime.datetime(2026, 1, 7, 12, 0, tzinfo=datetime.UTC).timestamp()
"""Every replayed decision happens at the same moment: time of day is not a feature of the log."""


def offer_ids(actions: Sequence[str]) -> list[str]:
    """Policy-safe offer ids for action names, unique, in the same order.

    >>> offer_ids(["Mens E-Mail", "No E-Mail", "14", "mens-e-mail"])
    ['mens_e_mail', 'no_e_mail', 'a_14', 'mens_e_mail_2']
    """
    ids: list[str] = []
    for name in actions:
        base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "action"
        if not base[0].isalpha():
            base = "a_" + base
        candidate, k = base, 2
        while candidate in ids:
            candidate, k = f"{base}_{k}", k + 1
        ids.append(candidate)
    return ids


def replay_policy(actions: Sequence[str], prior: float) -> PolicySet:
    """A policy set with one offer per action, each answering the ``custom`` event on one channel."""
    policy = {
        "settings": {"no_action_threshold": 0.0},
        "channels": [{"id": CHANNEL, "name": "Replayed log", "needs_reachable": False, "default_consent": True}],
        "offers": [
            {
                "id": offer_id,
                "name": name,
                "category": "replay",
                "events": ["custom"],
                "value": 1.0,
                "prior": prior,
                "channels": [CHANNEL],
                "content": {"default": "replayed action"},
            }
            for offer_id, name in zip(offer_ids(actions), actions, strict=False)
        ],
    }
    return parse_policy_files({"replay.yaml": yaml.safe_dump(policy, sort_keys=False)})


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayConfig(PolicyConfig):
    """The learned policy under evaluation: exploration strategy and model settings (the service's defaults)."""

    prior: float = 0.1
    """Every offer's cold-start acceptance guess, the same for all: nothing in the log is known before it starts."""

    def describe(self) -> str:
        return (
            f"{self.strategy} ({self.knob()}), learning rate {self.learning_rate:g}, "
            f"prior {self.prior:g}, seed {self.seed}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """What :func:`evaluate` measured."""

    actions: tuple[str, ...]
    reward_col: str
    rows: int
    config: ReplayConfig
    learned: Estimate
    """Replay: the mean reward over the rows where the engine picked the logged action."""
    learned_ips: Estimate
    learned_snips: Estimate
    random: Estimate
    fixed: Mapping[str, Estimate]
    best_action: str
    curve: np.ndarray
    """Cumulative mean reward of the learned policy after each counted row."""
    picks: Mapping[str, int]
    """How often the engine picked each action over the whole log."""
    late_picks: Mapping[str, int]
    """The same over the last tenth of the log: what the policy converged to."""
    rule: Estimate | None = None
    """The targeting rule's reward, when one was given."""
    rule_text: str = ""

    @property
    def best_fixed(self) -> Estimate:
        return self.fixed[self.best_action]

    def to_json(self) -> dict[str, Any]:
        learned: dict[str, Any] = self.learned.as_dict()
        learned.update(
            ips=self.learned_ips.as_dict(),
            snips=self.learned_snips.as_dict(),
            picks=dict(self.picks),
            late_picks=dict(self.late_picks),
        )
        policies: dict[str, Any] = {
            "learned": learned,
            "random": self.random.as_dict(),
            "best_fixed": {**self.best_fixed.as_dict(), "action": self.best_action},
        }
        for action, estimate in self.fixed.items():
            policies[f"fixed:{action}"] = estimate.as_dict()
        if self.rule is not None:
            policies["rule"] = {**self.rule.as_dict(), "rule": self.rule_text}
        return {
            "reward": self.reward_col,
            "rows": self.rows,
            "actions": list(self.actions),
            "config": dataclasses.asdict(self.config),
            "policies": policies,
        }

    def table(self) -> str:
        """The figures as an aligned text table."""
        lines = [("learned (replay)", self.learned), ("learned (IPS)", self.learned_ips), ("random", self.random)]
        lines += [(f"fixed:{a}", e) for a, e in sorted(self.fixed.items(), key=lambda item: -item[1].value)]
        lines.append((f"best_fixed ({self.best_action})", self.best_fixed))
        if self.rule is not None:
            lines.append(("rule", self.rule))
        width = max(len(name) for name, _ in lines)
        out = [f"{'policy':<{width}}  {'mean':>8}  {'95% CI':^19}  {'rows':>7}"]
        for name, e in lines:
            out.append(f"{name:<{width}}  {e.value:>8.4f}  [{e.ci_low:.4f}, {e.ci_high:.4f}]  {e.rows:>7,}")
        return "\n".join(out)


def evaluate(
    data: LoggedData, config: ReplayConfig = ReplayConfig(), progress: bool = False, rules: Sequence[TargetingRule] = ()
) -> Evaluation:
    """Replay ``data`` through the real engine and learner; compare with random, fixed actions and the rules."""
    picked = _replay(data, config, progress)
    matched = picked == data.action
    if not matched.any():
        raise LogFormatError("the learned policy never picked a logged action: nothing to evaluate")
    return _summarise(data, config, picked, matched, rules)


def _replay(data: LoggedData, config: ReplayConfig, progress: bool) -> np.ndarray:
    """Per row, the index of the action the engine picked (-1 for none); it learns every row it counts."""
    policy = replay_policy(data.actions, config.prior)
    snapshot = PolicySnapshot.compile(policy, "replay")
    bank, engine = config.build(snapshot)
    action_of_offer = {offer.id: i for i, offer in enumerate(policy.offers)}
    ctx = CustomerContext(CustomerProfile.unknown("replay"), now=_NOW)
    fields = {"name": "replay"}
    picked = np.full(len(data), -1, dtype=np.intp)
    logged_action, rewards, attributes = data.action, data.reward, data.attributes
    for i in _rows(len(data), progress):
        decision = engine.decide(snapshot, ctx, Event("custom", fields, attributes[i]), top_k=0)
        if decision.offer_id is None:  # cannot happen with this policy; never counted
            continue
        pick = picked[i] = action_of_offer[decision.offer_id]
        if pick == logged_action[i]:  # the row counts, and only counted rows are learned
            bank.learn(decision.offer_id, decision.channel, decision.features, float(rewards[i]), config.prior)
    return picked


def _rows(n: int, progress: bool) -> Iterable[int]:
    """The row indices, with a progress bar when asked."""
    if not progress:
        return range(n)
    from tqdm import tqdm

    return tqdm(range(n), desc="replay", unit="row", mininterval=0.5, leave=False)


def _summarise(
    data: LoggedData, config: ReplayConfig, picked: np.ndarray, matched: np.ndarray, rules: Sequence[TargetingRule]
) -> Evaluation:
    """The learned policy's figures from its picks, next to random, the fixed actions and the rules."""
    n, k = len(data), len(data.actions)
    rewards = data.reward
    counted = rewards[matched]
    fixed = {a: _fixed_estimate(data, data.action == i) for i, a in enumerate(data.actions)}
    late = picked[n - max(1, n // 10) :]
    return Evaluation(
        actions=data.actions,
        reward_col=data.reward_col,
        rows=n,
        config=config,
        learned=mean_estimate(counted),
        learned_ips=ips(rewards, data.propensity, matched.astype(float)),
        learned_snips=snips(rewards, data.propensity, matched.astype(float)),
        random=ips(rewards, data.propensity, np.full(n, 1.0 / k)),
        fixed=fixed,
        best_action=max(fixed, key=lambda a: fixed[a].value),
        curve=np.cumsum(counted) / np.arange(1, len(counted) + 1),
        picks={a: int((picked == i).sum()) for i, a in enumerate(data.actions)},
        late_picks={a: int((late == i).sum()) for i, a in enumerate(data.actions)},
        rule=_rule_estimate(data, rules) if rules else None,
        rule_text="; ".join(r.text for r in rules),
    )


def _rule_estimate(data: LoggedData, rules: Sequence[TargetingRule]) -> Estimate:
    matched = rule_actions(rules, data) == data.action
    if not matched.any():
        raise LogFormatError("the rule never gives a row the action the log took: nothing to evaluate it on")
    return _fixed_estimate(data, matched)


def _fixed_estimate(data: LoggedData, matched: np.ndarray) -> Estimate:
    """A fixed policy's reward from the rows where it took the logged action (weighted if propensities vary)."""
    if np.ptp(data.propensity[matched]) == 0.0:
        return mean_estimate(data.reward[matched])
    return dataclasses.replace(snips(data.reward, data.propensity, matched.astype(float)), rows=int(matched.sum()))
