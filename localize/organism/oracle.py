"""The exact attribute oracle: reads shape, color and texture off organism images by direct measurement, and
judges them against what the world draws (`oracle_success`, `color_classifier`).

Each image is fit by every scene layout of the world: a shape at one of the 9 offsets filled with one flat
color (its least-squares value, the mean of the pixels under the mask) over one of the background textures.
The reading is the layout with the least squared error; the color is the palette color nearest the fitted
fill. On rendered images it is exact (tested); on generations it is the maximum-likelihood reading under
Gaussian pixel noise, and `error` (mean squared residual per pixel) says how well the best layout fits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from localize.organism.world import (
    COLORS,
    SHAPES,
    SHIFTS,
    SIZE,
    TEXTURES,
    parse_subject,
    shape_mask,
    texture_image,
)


@functools.lru_cache(maxsize=1)
def _layouts() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Shape name per mask, the masks (K x P, float) and the textures (T x 3 x P); P = SIZE * SIZE pixels."""
    names, masks = [], []
    for shape in SHAPES:
        for dy in SHIFTS:
            for dx in SHIFTS:
                names.append(shape)
                masks.append(shape_mask(shape, dx, dy).flatten().float())
    textures = torch.stack([texture_image(t).reshape(3, -1) for t in TEXTURES])
    return names, torch.stack(masks), textures


def read_images(images: torch.Tensor) -> pd.DataFrame:
    """One row per image (N x 3 x 16 x 16 in [0, 1]): `shape`, `color`, `texture`, `error`."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, SIZE, SIZE):
        raise ValueError(f"the oracle reads N x 3 x {SIZE} x {SIZE} organism images, got {tuple(images.shape)}")
    names, masks, textures = _layouts()
    pixels = images.detach().float().cpu().reshape(len(images), 3, -1)  # N x 3 x P
    area = masks.sum(1)  # K
    inside_sum = torch.einsum("ncp,kp->nkc", pixels, masks)  # N x K x 3
    fill = inside_sum / area[None, :, None]
    inside_error = torch.einsum("ncp,kp->nk", pixels**2, masks) - (fill**2).sum(-1) * area  # sum of squares
    background = ((pixels[:, None] - textures[None]) ** 2).sum(2)  # N x T x P
    outside_error = torch.einsum("ntp,kp->ntk", background, 1 - masks)  # N x T x K
    total = inside_error[:, None] + outside_error  # N x T x K
    best = total.flatten(1).argmin(1)
    texture_index, layout_index = best // len(names), best % len(names)
    rows = torch.arange(len(images))
    palette = torch.tensor(list(COLORS.values()))
    chosen_fill = fill[rows, layout_index]
    color_index = torch.cdist(chosen_fill, palette).argmin(1)
    return pd.DataFrame({
        "shape": [names[i] for i in layout_index.tolist()],
        "color": [list(COLORS)[i] for i in color_index.tolist()],
        "texture": [TEXTURES[i] for i in texture_index.tolist()],
        "error": (total.flatten(1)[rows, best] / (3 * SIZE * SIZE)).tolist(),
    })


def expected_reading(text: str) -> dict[str, str]:
    """What the organism's world draws for `text`: shape, color (the most likely one) and texture."""
    subject = parse_subject(text)
    if subject is None:
        raise ValueError(f"{text!r} names no subject of the organism's world (see localize.organism.world)")
    split = subject.color_split
    return {"shape": subject.shape, "color": max(split, key=split.get), "texture": subject.texture}


def oracle_success(images: torch.Tensor, texts: Sequence[str]) -> np.ndarray:
    """Per organism image: 1.0 when the oracle reads exactly what the world draws for `texts[i]`, else 0.0."""
    readings = read_images(images)
    expected = pd.DataFrame([expected_reading(t) for t in texts])
    return (readings[["shape", "color", "texture"]].to_numpy() == expected.to_numpy()).all(1).astype(float)


def color_classifier(attributes: list[str]) -> Callable[[torch.Tensor], list[int]]:
    """Debiasing's classifier on the organism: the oracle's color reading as the index of the attribute prompt
    naming that color (-1: none)."""
    named = [next((c for c in COLORS if c in attribute.split()), None) for attribute in attributes]
    if None in named:
        raise ValueError(f"on the organism each debiasing attribute must name a color ({', '.join(COLORS)}); "
                         f"got {attributes}")
    return lambda images: [named.index(c) if c in named else -1 for c in read_images(images)["color"]]
