"""``nba evaluate --suite``: the learned policy, with default settings, on many problems with known answers.

A bake-off, not one data set (after Bietti, Agarwal & Langford, "A Contextual
Bandit Bake-off", JMLR 2021). Two kinds of problem:

- **logged** experiments shipped with the package (Hillstrom's e-mail test, the
  Open Bandit Dataset sample): replayed through the real engine and learner
  (:func:`~nba_service.tools.evaluation.replay.evaluate`);
- **full-information** problems (:mod:`~nba_service.tools.evaluation.problems`:
  classification data turned into bandits, synthetic streams, two with a change
  of the world mid-stream): the learned policy runs online over every row, sees
  only the reward of the arm it chose and learns it; random, every fixed arm
  and the oracle (the right arm every time) are computed exactly from the
  rewards of all arms.

A problem **passes** when the learned policy's mean is at least the best fixed
arm's 95% CI low and above uniform random's 95% CI high; on a problem whose
world changes, the same must hold over the last half of the rows after the
change (the policy found the new best arms). A problem that does not pass is
**inconclusive**, not failed, when its data cannot separate policies at all
(even the best fixed arm in hindsight is not significantly above random: the
Open Bandit sample's 46 clicks over 34 arms) and the learned policy is not
shown worse than random or the best fixed arm there.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nba_service.domain import CustomerContext, CustomerProfile, Event
from nba_service.policies.snapshot import PolicySnapshot
from nba_service.tools.evaluation.logs import DATASETS, dataset_path, read_log
from nba_service.tools.evaluation.problems import PROBLEMS, Problem
from nba_service.tools.evaluation.replay import ReplayConfig, evaluate, offer_ids, replay_policy
from nba_service.tools.off_policy import Estimate, mean_estimate

__all__ = ["SUITE", "SuiteResult", "plot_suite_result", "run_problem", "run_suite", "suite_table"]

_NOW = datetime.datetime(2026, 1, 7, 12, 0, tzinfo=datetime.UTC).timestamp()

SUITE: tuple[str, ...] = ("hillstrom", "obd-men", *PROBLEMS)
"""Every problem of the suite, in the order it runs."""


@dataclasses.dataclass(frozen=True, slots=True)
class SuiteResult:
    """The learned policy and the baselines on one problem."""

    name: str
    kind: str
    """``logged`` (replay of a logged experiment) or ``online`` (full information)."""
    description: str
    rows: int
    arms: int
    learned: Estimate
    random: Estimate
    best_fixed: Estimate
    best_action: str
    oracle: Estimate | None
    curve: np.ndarray
    """The learned policy's reward per counted row, in order (for the learning curve)."""
    seconds: float
    drift_at: int | None = None
    late: tuple[Estimate, Estimate, Estimate, str] | None = None
    """After a change of the world, over the last half of the rows after it: learned, random, best fixed, its arm."""

    @property
    def underpowered(self) -> bool:
        """Even the best fixed arm in hindsight is not significantly above random: the data cannot separate policies."""
        return self.best_fixed.ci_low <= self.random.ci_high

    def checks(self) -> dict[str, bool]:
        """Each condition of a pass, by name."""
        out = {
            "learned >= best fixed CI low": self.learned.value >= self.best_fixed.ci_low,
            "learned > random CI high": self.learned.value > self.random.ci_high,
        }
        if self.late is not None:
            learned, random, best, _ = self.late
            out["after the change: learned >= best fixed CI low"] = learned.value >= best.ci_low
            out["after the change: learned > random CI high"] = learned.value > random.ci_high
        return out

    @property
    def passed(self) -> bool:
        return all(self.checks().values())

    @property
    def inconclusive(self) -> bool:
        """Not passed, on data too small to separate policies, and not shown worse than random or the best fixed."""
        return (
            not self.passed
            and self.underpowered
            and self.learned.ci_high >= self.best_fixed.ci_low
            and self.learned.ci_high >= self.random.ci_low
        )

    def verdict(self) -> str:
        if self.passed:
            return "pass"
        if self.inconclusive:
            return "inconclusive: too few rows (best fixed not above random either); not shown worse"
        return "FAIL: " + "; ".join(name for name, ok in self.checks().items() if not ok)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "problem": self.name,
            "kind": self.kind,
            "description": self.description,
            "rows": self.rows,
            "arms": self.arms,
            "learned": self.learned.as_dict(),
            "random": self.random.as_dict(),
            "best_fixed": {**self.best_fixed.as_dict(), "action": self.best_action},
            "oracle": None if self.oracle is None else self.oracle.as_dict(),
            "underpowered": self.underpowered,
            "checks": self.checks(),
            "passed": self.passed,
            "inconclusive": self.inconclusive,
            "seconds": round(self.seconds, 2),
        }
        if self.late is not None:
            learned, random, best, action = self.late
            out["after_change"] = {
                "drift_at": self.drift_at,
                "learned": learned.as_dict(),
                "random": random.as_dict(),
                "best_fixed": {**best.as_dict(), "action": action},
            }
        return out


def run_suite(
    names: Sequence[str] = SUITE,
    config: ReplayConfig | None = None,
    on_result: Callable[[SuiteResult], None] | None = None,
) -> list[SuiteResult]:
    """Run the learned policy configured by ``config`` (default: the service's) on each named problem."""
    config = config or ReplayConfig()
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise ValueError(f"unknown problem {', '.join(map(repr, unknown))} (suite: {', '.join(SUITE)})")
    results = []
    for name in names:
        result = run_problem(name, config)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def run_problem(name: str, config: ReplayConfig | None = None) -> SuiteResult:
    """One problem of the suite, built, run and summarised."""
    config = config or ReplayConfig()
    started = time.perf_counter()
    if name in DATASETS:
        return _logged(name, config, started)
    return _online(PROBLEMS[name](), config, started)


def _logged(name: str, config: ReplayConfig, started: float) -> SuiteResult:
    preset = DATASETS[name]
    data = read_log(
        dataset_path(name),
        action_col=preset["action_col"],
        reward_col=preset["reward_col"],
        feature_cols=preset["feature_cols"],
        propensity_col=preset.get("propensity_col"),
        propensity=preset.get("propensity"),
    )
    result = evaluate(data, config)
    matched = result.curve  # cumulative mean; the per-row rewards are its differences
    counts = np.arange(1, len(matched) + 1)
    per_row = np.diff(np.concatenate([[0.0], matched * counts]))
    return SuiteResult(
        name=name,
        kind="logged",
        description=f"logged experiment {dataset_path(name).name}: reward {data.reward_col}, replayed",
        rows=len(data),
        arms=len(data.actions),
        learned=result.learned,
        random=result.random,
        best_fixed=result.best_fixed,
        best_action=result.best_action,
        oracle=None,
        curve=per_row,
        seconds=time.perf_counter() - started,
    )


def _online(problem: Problem, config: ReplayConfig, started: float) -> SuiteResult:
    """Every row: the engine picks from the row's context, earns that arm's reward and learns it."""
    policy = replay_policy(problem.actions, config.prior)
    snapshot = PolicySnapshot.compile(policy, "suite")
    bank, engine = config.build(snapshot)
    action_of_offer = {offer_id: i for i, offer_id in enumerate(offer_ids(problem.actions))}
    ctx = CustomerContext(CustomerProfile.unknown("suite"), now=_NOW)
    fields = {"name": "suite"}
    rewards = problem.rewards
    earned = np.zeros(len(rewards))
    for i, context in enumerate(problem.contexts):
        decision = engine.decide(snapshot, ctx, Event("custom", fields, context), top_k=0)
        if decision.offer_id is None:
            raise RuntimeError(f"{problem.name}: the engine took no action at row {i}")
        reward = float(rewards[i, action_of_offer[decision.offer_id]])
        earned[i] = reward
        bank.learn(decision.offer_id, decision.channel, decision.features, reward, config.prior)
    late = None
    if problem.drift_at is not None:
        start = problem.drift_at + (len(rewards) - problem.drift_at) // 2
        late = (mean_estimate(earned[start:]), *_baselines(problem, rewards[start:])[:3])
    random, best, best_action, oracle = _baselines(problem, rewards)
    return SuiteResult(
        name=problem.name,
        kind="online",
        description=problem.description,
        rows=len(rewards),
        arms=len(problem.actions),
        learned=mean_estimate(earned),
        random=random,
        best_fixed=best,
        best_action=best_action,
        oracle=oracle,
        curve=earned,
        seconds=time.perf_counter() - started,
        drift_at=problem.drift_at,
        late=late,
    )


def _baselines(problem: Problem, rewards: np.ndarray) -> tuple[Estimate, Estimate, str, Estimate]:
    """Uniform random, the best fixed arm in hindsight (and its name) and the oracle, over these rows."""
    means = rewards.mean(axis=0)
    best = int(np.argmax(means))
    return (
        mean_estimate(rewards.mean(axis=1)),
        mean_estimate(rewards[:, best]),
        problem.actions[best],
        mean_estimate(rewards.max(axis=1)),
    )


def suite_table(results: Sequence[SuiteResult]) -> str:
    """One line per problem: learned, random, best fixed and oracle with 95% CIs, and the verdict."""

    def cell(e: Estimate | None) -> str:
        return "" if e is None else f"{e.value:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}]"

    header = ("problem", "rows", "arms", "learned", "random", "best fixed", "oracle", "verdict")
    lines = [header]
    for r in results:
        lines.append(
            (
                r.name,
                f"{r.rows:,}",
                str(r.arms),
                cell(r.learned),
                cell(r.random),
                cell(r.best_fixed),
                cell(r.oracle),
                r.verdict(),
            )
        )
        if r.late is not None:
            learned, random, best, _ = r.late
            lines.append(("  after change", f"{learned.rows:,}", "", cell(learned), cell(random), cell(best), "", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def plot_suite_result(result: SuiteResult, path: str | Path, title: str = "") -> None:
    """The learned policy's reward over the run (moving mean), with random, best fixed, oracle and the change."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    window = max(50, len(result.curve) // 40)
    kernel = np.ones(window) / window
    moving = np.convolve(result.curve, kernel, mode="valid")
    x = np.arange(window, len(result.curve) + 1)
    ax.plot(x, moving, color="tab:blue", lw=1.6, label=f"learned, mean of the last {window:,} rows")
    ax.axhline(result.best_fixed.value, color="tab:green", lw=1.2, label=f"best fixed: {result.best_action}")
    ax.axhline(result.random.value, color="tab:gray", lw=1.2, ls="--", label="uniform random")
    if result.oracle is not None:
        ax.axhline(result.oracle.value, color="black", lw=1.0, ls=":", label="oracle")
    if result.drift_at is not None and result.late is not None:
        ax.axvline(result.drift_at, color="tab:red", lw=1.2, ls="-.", label="the world changes")
        _, _, best, action = result.late
        ax.hlines(
            best.value,
            result.drift_at,
            len(result.curve),
            color="tab:olive",
            lw=1.2,
            label=f"best fixed after the change: {action}",
        )
    ax.set_xlabel("counted rows" if result.kind == "logged" else "rows")
    ax.set_ylabel("reward")
    ax.set_title(title or f"{result.name}: {result.verdict()}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    figure.savefig(path)
