"""The learning curve of ``nba evaluate --plot``: the learned policy's reward as it learns, next to the baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nba_service.tools.evaluation.replay import Evaluation

__all__ = ["plot_learning_curve"]


def plot_learning_curve(result: Evaluation, path: str | Path, title: str = "") -> None:
    """The learned policy's cumulative mean reward over the counted rows, with random, best fixed and the rule."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = figure.subplots()
    x = np.arange(1, len(result.curve) + 1)
    best = result.best_fixed
    ax.axhspan(
        best.ci_low,
        best.ci_high,
        color="tab:green",
        alpha=0.15,
        lw=0,
        label=f"best fixed 95% CI [{best.ci_low:.4f}, {best.ci_high:.4f}]",
    )
    ax.axhline(best.value, color="tab:green", lw=1.5, label=f"best fixed: {result.best_action} ({best.value:.4f})")
    ax.axhline(
        result.random.value, color="tab:gray", lw=1.5, ls="--", label=f"uniform random ({result.random.value:.4f})"
    )
    if result.rule is not None:
        ax.axhline(
            result.rule.value, color="tab:purple", lw=1.5, ls=":", label=f"targeting rule ({result.rule.value:.4f})"
        )
    ax.plot(
        x,
        result.curve,
        color="tab:blue",
        lw=1.8,
        label=f"learned, replay ({result.learned.value:.4f} over {result.learned.rows:,} rows)",
    )
    skip = min(len(x) - 1, max(0, len(x) // 100))  # the first rows' mean is all noise
    values = np.concatenate(
        [
            result.curve[skip:],
            [best.ci_low, best.ci_high, result.random.value],
            [] if result.rule is None else [result.rule.value],
        ]
    )
    spread = values.max() - values.min() or abs(values.max()) or 1.0
    ax.set_ylim(values.min() - 0.15 * spread, values.max() + 0.15 * spread)
    ax.set_xlim(1, len(x))
    ax.set_xlabel("rows counted by the replay (engine picked the logged action)")
    ax.set_ylabel(f"cumulative mean {result.reward_col}")
    ax.set_title(title or f"Learning curve: {result.config.describe()}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    figure.savefig(path)
