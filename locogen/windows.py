"""Windows of m consecutive cross-attention layers (0-based, execution order) and the patches that feed them
the altered prompt's text conditioning on the conditional CFG half.

Batch convention: a window row takes each window layer's context from the unit's altered row (`restore` from
`altered_row`, same CFG half); every other layer keeps the row's own (original) prompt. In a DiT (FLUX, SD3)
the window is m consecutive dual-stream blocks, and what a window block takes from the altered row is the text
stream entering it (`block.K.text_in`): after block 0 that stream depends on the image and the step too, so it
is restored from the altered row of the same batch, never replaced by a precomputed context. With
`blocks="single"` the windows run over FLUX's single-stream blocks instead, each taking the text slice of the
joint sequence entering it (`single.K.text_in`).
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


def window_layers(model: Model, blocks: str = "dual") -> list[str]:
    """The module names of the layers windows run over, in execution order: the cross-attention layers (a
    DiT's dual-stream blocks' attentions), or with `blocks="single"` FLUX's single-stream blocks."""
    if blocks == "dual":
        return [layer.name for layer in model.cross_attention_layers]
    single = [c.name for c in model.dit_blocks("single")]
    if not single:
        raise ValueError(f"blocks='single': the {model.family} family has no single-stream blocks (FLUX has); "
                         "use blocks='dual'")
    return single


def text_input_site(model: Model, k: int, blocks: str = "dual") -> str:
    """The text window layer K reads: cross-attention layer K's context, or block K's incoming text stream."""
    if model.spec.denoiser == "unet":
        return f"cross_attn.{k}.context"
    return f"{'block' if blocks == 'dual' else 'single'}.{k}.text_in"


def window_patches(model: Model, window: tuple[int, ...], row: int, altered_row: int,
                   blocks: str = "dual") -> list[Patch]:
    """Row `row`'s window layers read the text of row `altered_row` (conditional half only)."""
    return [Patch(text_input_site(model, k, blocks), "restore", rows=(row,), source_rows=(altered_row,),
                  branch="cond") for k in window]


def cross_attention_context(model: Model, prompt: str) -> torch.Tensor:
    """The text conditioning a cross-attention layer receives for `prompt`: tokens x features."""
    return text_contexts(model, [prompt])[0]


def window_replace_patches(window: tuple[int, ...], context: torch.Tensor) -> list[Patch]:
    """Every row's window layers read `context` (conditional half): the reference's per-window intervention."""
    return [Patch(f"cross_attn.{k}.context", "replace", value=context, branch="cond") for k in window]
