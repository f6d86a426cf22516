"""What else changed: a set-difference ranker in the spirit of VisDiff (Dunlap et al., CVPR 2024).

Given two image sets (`first`: before an edit, `second`: after it, on prompts the edit did not target; or model
A against model B) and candidate descriptions, each description is scored by how well its CLIP similarity
separates the sets: AUROC = P(sim(second image) > sim(first image)), ties counted half (the Mann-Whitney U over
|first| x |second|). 0.5 is no difference; above it the description fits the second set more, below it less.
Its CI is a percentile bootstrap over both sets (each resampled with replacement, seeded). A description is
`shifted` when its CI excludes 0.5; the table is ranked by |AUROC - 0.5|. VisDiff proposes candidates with a
captioning language model; here they are given (a vocabulary file, one per line) or, for a model whose world is
known (the organism), every attribute value of the world (`GroundTruth.descriptions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import mannwhitneyu  # noqa: E402

from localize.figures import save_figure, show_image  # noqa: E402
from localize.scoring import ClipScorer  # noqa: E402


def auroc(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """P(second > first) + P(tie) / 2 along the last axis (leading axes batched)."""
    return mannwhitneyu(second, first, axis=-1).statistic / (first.shape[-1] * second.shape[-1])


def rank_descriptions(scorer: ClipScorer, first: torch.Tensor, second: torch.Tensor, descriptions: Sequence[str],
                      confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per description, most shifted first: `auroc`, `ci_low`, `ci_high`, `direction` (`more` or `less`
    in the second set), `shifted` (the CI excludes 0.5), and the mean similarity in each set."""
    descriptions = list(dict.fromkeys(descriptions))
    if not descriptions:
        raise ValueError("no candidate description to rank")
    if min(len(first), len(second)) < 2:
        raise ValueError(f"need at least 2 images in each set, got {len(first)} and {len(second)}")
    sim_first = scorer.similarity(first, descriptions).T.cpu().double().numpy()  # descriptions x images
    sim_second = scorer.similarity(second, descriptions).T.cpu().double().numpy()
    rng = np.random.default_rng(seed)
    pick_first = rng.integers(0, sim_first.shape[1], (resamples, sim_first.shape[1]))
    pick_second = rng.integers(0, sim_second.shape[1], (resamples, sim_second.shape[1]))
    tail = (1 - confidence) / 2 * 100
    rows = []
    for d, description in enumerate(descriptions):
        value = float(auroc(sim_first[d], sim_second[d]))
        resampled = auroc(sim_first[d][pick_first], sim_second[d][pick_second])
        low, high = np.percentile(resampled, [tail, 100 - tail])
        rows.append({"description": description, "auroc": value, "ci_low": low, "ci_high": high,
                     "direction": "more" if value >= 0.5 else "less", "shifted": bool(low > 0.5 or high < 0.5),
                     "similarity_first": sim_first[d].mean(), "similarity_second": sim_second[d].mean()})
    table = pd.DataFrame(rows)
    order = (table["auroc"] - 0.5).abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].reset_index(drop=True).assign(rank=lambda t: range(1, len(t) + 1))


def examples_figure(scorer: ClipScorer, first: torch.Tensor, second: torch.Tensor, table: pd.DataFrame, path: Path,
                    top: int = 3, per_set: int = 4, title: str | None = None) -> Path | None:
    """A PNG with a row per top shifted description: the `per_set` images of each set it fits best (the set it
    fits more first). None when nothing shifted."""
    shown = table[table["shifted"]].head(top)
    if shown.empty:
        return None
    per_set = min(per_set, len(first), len(second))
    figure, axes = plt.subplots(len(shown), 2 * per_set, figsize=(1.3 * 2 * per_set, 1.6 * len(shown)),
                                squeeze=False)
    for row, (_, item) in enumerate(shown.iterrows()):
        sets = [("after", second), ("before", first)] if item["direction"] == "more" else [("before", first),
                                                                                          ("after", second)]
        column = 0
        for name, images in sets:
            best = scorer.similarity(images, [item["description"]])[:, 0].argsort(descending=True)[:per_set]
            for index in best.tolist():
                show_image(axes[row, column], images[index], interpolation="nearest")
                axes[row, column].set_title(name, fontsize=7)
                column += 1
        axes[row, 0].set_ylabel(f"{item['description']}\nAUROC {item['auroc']:.2f}", fontsize=7, rotation=0,
                                ha="right", va="center")
    return save_figure(figure, path, title, title_size=9, dpi=100)
