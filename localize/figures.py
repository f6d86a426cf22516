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
            show_image(axes[row, column], images[column])
        axes[0, column].set_title(f"{prompt}\nseed {seed}", fontsize=6)
    for row, name in enumerate(rows):
        axes[row, 0].set_ylabel(name)
    return save_figure(figure, path, title, title_size=8, dpi=120)


def show_image(axis, image: torch.Tensor, **imshow) -> None:
    """One C x H x W image in [0, 1] on `axis`, without ticks."""
    axis.imshow(image.permute(1, 2, 0).float().clamp(0, 1).cpu().numpy(), **imshow)
    axis.set_xticks([])
    axis.set_yticks([])


def save_figure(figure, path: Path, title: str | None, title_size: int, dpi: int) -> Path:
    """`figure` with its title, laid out, written atomically as a PNG at `path`, then closed."""
    if title:
        figure.suptitle(title, fontsize=title_size)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))
    plt.close(figure)
    return path
