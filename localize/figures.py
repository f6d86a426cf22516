"""Figures shared by jobs: before/after image grids (the same prompts and seeds in both rows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from localize.results import atomic_write  # noqa: E402


def before_after_grid(before: torch.Tensor, after: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int],
                      path: Path, title: str | None = None) -> Path:
    """A PNG with one column per image (`prompts[i]` with `seeds[i]`): the row `before` above the row `after`."""
    return image_rows({"before": before, "after": after}, prompts, seeds, path, title)


def image_rows(rows: dict[str, torch.Tensor], prompts: Sequence[str], seeds: Sequence[int], path: Path,
               title: str | None = None) -> Path:
    """A PNG with one column per image (`prompts[i]` with `seeds[i]`) and one labelled row per entry of `rows`."""
    if any(len(images) != len(prompts) for images in rows.values()) or len(prompts) != len(seeds):
        raise ValueError(f"need as many images in each row as prompts and seeds; got rows of "
                         f"{[len(images) for images in rows.values()]}, {len(prompts)} prompts, {len(seeds)} seeds")
    width = max(1.6 * len(prompts) + 0.6, 4.8 if title else 0)  # room for the title over a single column
    figure, axes = plt.subplots(len(rows), len(prompts), figsize=(width, 1.8 * len(rows)), squeeze=False)
    for column, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        for row, images in enumerate(rows.values()):
            axes[row, column].imshow(images[column].permute(1, 2, 0).float().clamp(0, 1).cpu().numpy())
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"{prompt}\nseed {seed}", fontsize=6)
    for row, name in enumerate(rows):
        axes[row, 0].set_ylabel(name)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)
    return path
