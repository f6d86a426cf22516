"""Windows of m consecutive cross-attention layers (0-based, execution order) and the patches that feed them
the altered prompt's text conditioning on the conditional CFG half.

Batch convention: a window row takes each window layer's context from the unit's altered row (`restore` from
`altered_row`, same CFG half); every other layer keeps the row's own (original) prompt. In a DiT (FLUX, SD3)
the window is m consecutive dual-stream blocks, and what a window block takes from the altered row is the text
stream entering it (`block.K.text_in`): after block 0 that stream depends on the image and the step too, so it
is restored from the altered row of the same batch, never replaced by a precomputed context.
"""

from __future__ import annotations

import torch

from localize.conditioning import text_contexts
from localize.model import Model
from localize.patches import Patch
from locogen.settings import check_window_size


def windows(n_layers: int, m: int) -> list[tuple[int, ...]]:
    """All `n_layers - m + 1` windows of `m` consecutive layers, by start."""
    check_window_size(m, n_layers)
    return [tuple(range(start, start + m)) for start in range(n_layers - m + 1)]


def text_input_site(model: Model, k: int) -> str:
    """The text a window layer reads: cross-attention layer K's context, or dual-stream block K's text stream."""
    return f"cross_attn.{k}.context" if model.spec.denoiser == "unet" else f"block.{k}.text_in"


def window_patches(model: Model, window: tuple[int, ...], row: int, altered_row: int) -> list[Patch]:
    """Row `row`'s window layers read the text of row `altered_row` (conditional half only)."""
    return [Patch(text_input_site(model, k), "restore", rows=(row,), source_rows=(altered_row,), branch="cond")
            for k in window]


def cross_attention_context(model: Model, prompt: str) -> torch.Tensor:
    """The text conditioning a cross-attention layer receives for `prompt`: tokens x features."""
    return text_contexts(model, [prompt])[0]


def window_replace_patches(window: tuple[int, ...], context: torch.Tensor) -> list[Patch]:
    """Every row's window layers read `context` (conditional half): the reference's per-window intervention."""
    return [Patch(f"cross_attn.{k}.context", "replace", value=context, branch="cond") for k in window]
