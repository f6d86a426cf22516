"""The layer curve: each window's mean score over units with its bootstrap CI, and the chosen window."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from localize.results import atomic_write, listed
from localize.stats import confidence_interval


def window_summary(table: pd.DataFrame, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
                   ) -> pd.DataFrame:
    """One row per window: `score` mean and CI, `effect` mean and CI, `units`; `chosen` marks the window with the
    largest mean effect (the one that moves the score furthest in the objective's direction)."""
    rows = []
    for window, group in table.groupby("window", sort=True):
        layers, names = list(group["layers"].iloc[0]), list(group["names"].iloc[0])
        score_low, score_high = confidence_interval(group["score"].to_numpy(), confidence, resamples, seed)
        effect_low, effect_high = confidence_interval(group["effect"].to_numpy(), confidence, resamples, seed)
        rows.append({"window": window, "layers": layers, "names": names, "score": group["score"].mean(),
                     "score_ci_low": score_low, "score_ci_high": score_high, "effect": group["effect"].mean(),
                     "effect_ci_low": effect_low, "effect_ci_high": effect_high, "units": len(group)})
    summary = pd.DataFrame(rows)
    summary["chosen"] = summary.index == summary["effect"].idxmax()
    return summary


def layer_curve(table: pd.DataFrame, summary: pd.DataFrame, title: str, objective: str, path: Path,
                confidence: float = 0.95) -> Path:
    """Score vs window start with its CI band (at `confidence`, as `summary` was computed); the original and altered
    prompts' mean scores as lines."""
    figure = Figure(figsize=(7, 3.6))
    axes = figure.add_subplot()
    axes.plot(summary["window"], summary["score"], marker="o", color="tab:purple", label="window altered")
    axes.fill_between(summary["window"], summary["score_ci_low"], summary["score_ci_high"], color="tab:purple",
                      alpha=0.2, label=f"{round(100 * confidence)}% CI")
    units = table.drop_duplicates(["prompt", "seed"])
    axes.axhline(units["score_original"].mean(), color="black", linestyle="--", label="original prompt")
    axes.axhline(units["score_altered"].mean(), color="gray", linestyle=":", label="altered prompt")
    chosen = summary[summary["chosen"]].iloc[0]
    axes.axvline(chosen["window"], color="tab:red", alpha=0.6,
                 label=f"chosen: layers {listed(chosen['layers'])}")
    axes.set_xlabel(f"window start (cross-attention layer, execution order); objective: {objective}")
    axes.set_ylabel("CLIP score")
    axes.set_xticks(list(summary["window"]))
    axes.set_title(title)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def neuron_summary(table: pd.DataFrame, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
                   ) -> pd.DataFrame:
    """One row per k and selection (`top`, `random`): mean drop over units (random draws averaged within a
    unit first) and its bootstrap CI."""
    per_unit = table.groupby(["selection", "k", "prompt", "seed"])["drop"].mean()
    rows = []
    for (selection, k), drops in per_unit.groupby(level=["selection", "k"]):
        low, high = confidence_interval(drops.to_numpy(), confidence, resamples, seed)
        rows.append({"selection": selection, "k": k, "drop": drops.mean(), "ci_low": low, "ci_high": high,
                     "units": len(drops)})
    return pd.DataFrame(rows)


def neuron_curve(summary: pd.DataFrame, title: str, path: Path) -> Path:
    """CLIP drop vs number of ablated neurons: the top-|t| neurons against k random ones, with CI bands."""
    figure = Figure(figsize=(6, 3.6))
    axes = figure.add_subplot()
    for selection, color in (("top", "tab:red"), ("random", "tab:gray")):
        rows = summary[summary["selection"] == selection].sort_values("k")
        axes.plot(rows["k"], rows["drop"], marker="o", color=color, label=f"{selection} neurons")
        axes.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.2)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("ablated neurons k")
    axes.set_ylabel("CLIP score drop")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
