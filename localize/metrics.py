"""Evaluation metrics, one value per image, and their mean with a confidence interval.

- CLIP score: `100 * max(cos(image, text), 0)` of an image with its own prompt (`ClipScorer.score`).
- Zero-shot success (TIME / ReFACT efficacy, generality, specificity): 1 when the image's CLIP cosine with
  the text it should match exceeds its cosine with the text it should not, else 0 (per image and seed).
- Oracle accuracy (the organism, `localize.organism.oracle.oracle_success`, reached through the family table's
  `ground_truth`): 1 when the oracle's reading (shape, color, texture) of the image equals what the world draws
  for the text the image should match (`world.parse_subject`; for a role, its most likely color), else 0.
- Class accuracy: 1 when a classifier names the image's class (erased-class accuracy: lower after erasing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from localize.scoring import ClipScorer
from localize.stats import confidence_interval


def zero_shot_success(scorer: ClipScorer, images: torch.Tensor, match: Sequence[str],
                      mismatch: Sequence[str]) -> np.ndarray:
    """Per image: 1.0 when it is closer (CLIP cosine) to `match[i]` than to `mismatch[i]`, else 0.0."""
    if not len(images) == len(match) == len(mismatch):
        raise ValueError(f"need one match and one mismatch text per image; got {len(images)} images, "
                         f"{len(match)} and {len(mismatch)} texts")
    texts = list(dict.fromkeys([*match, *mismatch]))
    index = {text: i for i, text in enumerate(texts)}
    cos = scorer.similarity(images, texts)
    rows = torch.arange(len(images))
    good = cos[rows, [index[t] for t in match]]
    bad = cos[rows, [index[t] for t in mismatch]]
    return (good > bad).float().cpu().numpy()


def mean_intervals(table: pd.DataFrame, by: list[str], value: str = "value", confidence: float = 0.95,
                   resamples: int = 1000) -> pd.DataFrame:
    """Mean of `value` per group of `by`, with its percentile-bootstrap interval and the count `n`."""
    rows = []
    for keys, group in table.groupby(by, sort=False):
        low, high = confidence_interval(group[value].to_numpy(), confidence, resamples, seed=0)
        rows.append({**dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True)),
                     "mean": group[value].mean(), "ci_low": low, "ci_high": high, "n": len(group)})
    return pd.DataFrame(rows)
