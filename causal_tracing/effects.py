"""Indirect effects aggregated over units (prompts x seeds): mean and percentile-bootstrap confidence interval.

A state's effect in one unit is its `indirect_effect` averaged over the positions of its key (a text state's
key is its site and token role, so prompts of different lengths line up); units without an indirect effect
(corruption drop below `min_drop`) are left out and counted.
"""

from __future__ import annotations

import pandas as pd

from localize.stats import confidence_interval

STATE_COLUMNS = ["key", "site", "group", "kind", "location", "layer", "token_role"]


def state_effects(table: pd.DataFrame, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per state key: its descriptive columns, `effect` (mean indirect effect over units), `ci_low`,
    `ci_high` and `units` (how many units had an indirect effect), strongest first."""
    measured = table.dropna(subset=["indirect_effect"])
    per_unit = measured.groupby([*STATE_COLUMNS, "prompt", "seed"], sort=False)["indirect_effect"].mean()
    rows = []
    for state, values in per_unit.groupby(level=STATE_COLUMNS, sort=False):
        low, high = confidence_interval(values.to_numpy(), confidence, resamples, seed)
        rows.append({**dict(zip(STATE_COLUMNS, state, strict=True)), "effect": values.mean(), "ci_low": low,
                     "ci_high": high, "units": len(values)})
    columns = [*STATE_COLUMNS, "effect", "ci_low", "ci_high", "units"]
    return pd.DataFrame(rows, columns=columns).sort_values("effect", ascending=False, ignore_index=True)


def _lines(effects: pd.DataFrame, group: str, top: int) -> list[str]:
    strongest = effects[effects["group"] == group].head(top)
    return [f"  {row.effect:6.3f} [{row.ci_low:6.3f}, {row.ci_high:6.3f}]  {row.key}" for row in strongest.itertuples()]


def summary_text(table: pd.DataFrame, effects: pd.DataFrame, title: str, confidence: float = 0.95,
                 top: int = 5) -> str:
    """A short report: the units, the mean clean and corrupted scores, and the strongest states of each group."""
    units = table.drop_duplicates(["prompt", "seed"])
    measured = table.dropna(subset=["indirect_effect"]).drop_duplicates(["prompt", "seed"])
    lines = [
        title,
        f"units (prompts x seeds): {len(units)}; with an indirect effect (corruption drop >= min_drop): "
        f"{len(measured)}",
        f"mean CLIP score: clean {units['score_clean'].mean():.2f}, corrupted {units['score_corrupted'].mean():.2f}",
    ]
    level = f"{100 * confidence:g}"
    dit = set(effects.loc[effects["group"] == "unet", "kind"]) <= {"image", "text"}
    denoiser = "denoiser (DiT block stream) states" if dit else "UNet states"
    for group, name in (("unet", denoiser), ("text_encoder", "text-encoder states (site@token role)")):
        if (effects["group"] == group).any():
            lines += [f"strongest {name}: mean indirect effect [{level}% CI]", *_lines(effects, group, top)]
    return "\n".join(lines) + "\n"
