"""Heatmaps of mean indirect effects: text-encoder layer x token role (one figure per encoder, a panel per
sublayer kind), the same per prompt with its own tokens (mean over seeds), and UNet component kind x block
(blocks in execution order). Diverging colors centred on 0
(red: restoring the state brings the clean score back). Written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from causal_tracing.settings import DENOISER_KINDS, DIT_KINDS
from causal_tracing.states import TOKEN_ROLES
from localize.results import atomic_write


def _panel(figure: Figure, axes, grid: pd.DataFrame, title: str, xlabel: str, ylabel: str) -> None:
    values = grid.to_numpy(dtype=float)
    limit = max(1.0, float(np.nanmax(np.abs(values))))
    image = axes.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
    axes.set_yticks(range(grid.shape[0]), grid.index)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if values.size <= 300 and grid.shape[1] <= 24:  # numbers only where a cell is wide enough to hold one
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if abs(value) > 0.6 * limit else "black")
    figure.colorbar(image, ax=axes, label="indirect effect")


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def text_encoder_heatmaps(effects: pd.DataFrame, title: str, out_dir: Path) -> list[Path]:
    """`heatmap_text_encoder_E.png` per encoder: layer (rows) x token role (columns), a panel per kind."""
    text = effects[effects["group"] == "text_encoder"]
    paths = []
    for location, states in text.groupby("location", sort=True):
        kinds = list(dict.fromkeys(states["kind"]))
        roles = [role for role in TOKEN_ROLES if role in set(states["token_role"])]
        layers = sorted(states["layer"].unique())
        figure = Figure(figsize=(4.5 * len(kinds), 1.2 + 0.35 * len(layers)))
        for k, kind in enumerate(kinds):
            grid = (states[states["kind"] == kind].pivot_table(index="layer", columns="token_role", values="effect")
                    .reindex(index=layers, columns=roles))
            _panel(figure, figure.add_subplot(1, len(kinds), k + 1), grid, f"{title}\n{location} {kind}",
                   "token role", "layer")
        paths.append(_save(figure, out_dir / f"heatmap_{location.replace('.', '_')}.png"))
    return paths


def prompt_token_heatmaps(table: pd.DataFrame, title: str, out_dir: Path) -> list[Path]:
    """`heatmap_text_encoder_E_prompt_P.png` per encoder and prompt (P in order of appearance): layer x token
    position (labelled with its token; the padding span as one column), mean indirect effect over seeds."""
    text = table[table["group"] == "text_encoder"]
    paths = []
    for p, (prompt, rows) in enumerate(text.groupby("prompt", sort=False)):
        for location, states in rows.groupby("location", sort=True):
            kinds = list(dict.fromkeys(states["kind"]))
            tokens = states.drop_duplicates("token").sort_values("token")
            labels = {row.token: f"{row.token} {row.token_text.replace('</w>', '')}" for row in tokens.itertuples()}
            layers = sorted(states["layer"].unique())
            figure = Figure(figsize=(2 + 0.5 * len(labels) * len(kinds), 1.4 + 0.35 * len(layers)))
            for k, kind in enumerate(kinds):
                grid = (states[states["kind"] == kind]
                        .pivot_table(index="layer", columns="token", values="indirect_effect", aggfunc="mean")
                        .reindex(index=layers, columns=list(labels)).rename(columns=labels))
                _panel(figure, figure.add_subplot(1, len(kinds), k + 1), grid,
                       f"{title}\n{prompt!r}\n{location} {kind}", "token", "layer")
            paths.append(_save(figure, out_dir / f"heatmap_{location.replace('.', '_')}_prompt_{p}.png"))
    return paths


def _block_order(blocks) -> list[str]:
    def rank(block: str) -> tuple[int, int]:
        part, _, number = block.partition(".")
        return {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[part], int(number or 0)

    return sorted(set(blocks), key=rank)


def unet_heatmap(effects: pd.DataFrame, title: str, out_dir: Path) -> Path | None:
    """`heatmap_unet.png`: component kind (rows) x block (columns, execution order), the strongest effect among
    the block's components of that kind (blank where the block has none); `effects.parquet` has each one. For a
    DiT: stream (rows: image, text) x block (columns, execution order: dual-stream, then single-stream)."""
    unet = effects[effects["group"] == "unet"]
    if unet.empty:
        return None
    kinds = [kind for kind in DENOISER_KINDS if kind in set(unet["kind"])]
    if set(kinds) <= set(DIT_KINDS):
        grid = unet.pivot_table(index="kind", columns="layer", values="effect", aggfunc="max").reindex(index=kinds)
        width = 1.2 + 0.25 * grid.shape[1]
        labels = ("block (dual-stream, then single-stream)", "stream")
        subtitle = "each block's image and text stream"
    else:
        grid = (unet.pivot_table(index="kind", columns="location", values="effect", aggfunc="max")
                .reindex(index=kinds, columns=_block_order(unet["location"])))
        width = 1.2 + 0.9 * grid.shape[1]
        labels = ("UNet block", "component")
        subtitle = "strongest component of each kind in each block"
    figure = Figure(figsize=(width, 1.6 + 0.5 * len(kinds)))
    _panel(figure, figure.add_subplot(), grid, f"{title}\n({subtitle})", *labels)
    return _save(figure, out_dir / "heatmap_unet.png")
