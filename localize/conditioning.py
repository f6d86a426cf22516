"""The text side of cross-attention: what each layer's key/value projections receive for a batch of prompts.

Batch convention: row i of every tensor is `prompts[i]`; the token axis is the encoder's padded length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from localize.context_cache import has_hooks, parameter_state
from localize.generation import image_size
from localize.model import CrossAttentionLayer, Model


@torch.no_grad()
def text_contexts(model: Model, prompts: Sequence[str]) -> torch.Tensor:
    """The conditioning every cross-attention layer receives for `prompts` (after the UNet's own projection of
    the encoder states, e.g. IF's `encoder_hid_proj`): N x tokens x features. Prompts in `model.context_cache`
    for the current text weights are not encoded again; the others are encoded as one batch. While any hook
    sits on the text side (a patch, a recording) nothing is read from or written to the cache."""
    modules = model.text_side
    if has_hooks(modules):
        return encode_contexts(model, prompts)
    return model.context_cache.contexts(parameter_state(modules), list(prompts),
                                        lambda missing: encode_contexts(model, missing))


def encode_contexts(model: Model, prompts: Sequence[str]) -> torch.Tensor:
    """`text_contexts` under the caller's grad mode (for optimizing through the text encoder). A DiT's: the text
    its `context_embedder` reads."""
    conditioning = model.spec.encode(model.pipeline, list(prompts), image_size(model, None, None))
    if model.spec.denoiser != "unet":
        return conditioning["encoder_hidden_states"]
    return model.unet.process_encoder_hidden_states(conditioning["encoder_hidden_states"],
                                                    conditioning.get("added_cond_kwargs", {}))


@torch.no_grad()
def projection_inputs(layer: CrossAttentionLayer, contexts: torch.Tensor) -> torch.Tensor:
    """What `layer.key` and `layer.value` see: the context, after the layer's cross-attention norm if it has one
    (IF's added-K/V attention normalizes the text first)."""
    return contexts if shares_raw_context(layer) else layer.module.norm_encoder_hidden_states(contexts)


def shares_raw_context(layer: CrossAttentionLayer) -> bool:
    """Whether the layer's projections see the context itself (then one Gram matrix serves every such layer)."""
    return layer.module.norm_cross is None
