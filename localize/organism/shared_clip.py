"""The organism's one CLIP: its text tower is both the diffusion model's text encoder (a transformers
`CLIPTextModel`, frozen while the UNet trains, as in Stable Diffusion) and the scorer's text tower (open_clip).

Two conventions live here:

- Format conversion. The text tower trains as a `CLIPTextModel` plus a bias-free projection; the scorer is an
  open_clip `CLIP` whose text half is the same weights renamed (`open_clip_text_state`): open_clip's fused
  `in_proj` is transformers' q, k, v stacked in that order, its `text_projection` (width x embed) is the
  projection's weight transposed. Both pool at the first end-of-text token (open_clip: argmax of the ids, the
  end token having the largest id).
- Sparse token embedding. Only the world's words and the out-of-world filler words are ever trained: every
  other row of the 49408 x width embedding keeps its seeded initialization (`initial_embedding`, normal with
  std 0.02, transformers' CLIP init). Files store the trained rows only (`pack_embedding`: `<key>.ids`,
  `<key>.rows`) and loading rebuilds the rest from the seed (`unpack_embedding`), which keeps the width-256
  tower's two copies inside the package's size budget.
"""

from __future__ import annotations

import torch

HF_EMBEDDING = "embeddings.token_embedding.weight"
OPEN_CLIP_EMBEDDING = "token_embedding.weight"
_IDS, _ROWS = ".ids", ".rows"


def initial_embedding(vocab_size: int, width: int, seed: int) -> torch.Tensor:
    """The seeded initial token embedding, float32 vocab_size x width (CPU generator: same on every machine)."""
    return torch.randn(vocab_size, width, generator=torch.Generator().manual_seed(seed)) * 0.02


def pack_embedding(state: dict[str, torch.Tensor], key: str, seed: int) -> dict[str, torch.Tensor]:
    """`state` with the embedding `key` replaced by its rows that differ from `initial_embedding(seed)`."""
    table = state[key].detach().float().cpu()
    trained = (table != initial_embedding(*table.shape, seed)).any(1).nonzero().flatten()
    packed = {k: v for k, v in state.items() if k != key}
    return {**packed, key + _IDS: trained, key + _ROWS: table[trained]}


def unpack_embedding(tensors: dict[str, torch.Tensor], key: str, vocab_size: int, width: int,
                     seed: int) -> dict[str, torch.Tensor]:
    """The inverse of `pack_embedding` (a state that has the full `key` passes through unchanged)."""
    if key + _IDS not in tensors:
        return tensors
    table = initial_embedding(vocab_size, width, seed)
    ids, rows = tensors[key + _IDS].long(), tensors[key + _ROWS]
    table[ids] = rows.float()
    unpacked = {k: v for k, v in tensors.items() if k not in (key + _IDS, key + _ROWS)}
    return {**unpacked, key: table.to(rows.dtype)}


def open_clip_text_state(text_state: dict[str, torch.Tensor], projection: torch.Tensor,
                         layers: int) -> dict[str, torch.Tensor]:
    """An open_clip `CLIP`'s text-tower entries from a `CLIPTextModel` state dict and
    the projection's weight (embed x width)."""
    hf = text_state
    state = {"token_embedding.weight": hf["embeddings.token_embedding.weight"],
             "positional_embedding": hf["embeddings.position_embedding.weight"],
             "ln_final.weight": hf["final_layer_norm.weight"], "ln_final.bias": hf["final_layer_norm.bias"],
             "text_projection": projection.T.contiguous()}
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            state[f"{dst}attn.in_proj_{part}"] = torch.cat(
                [hf[f"{src}self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")])
            state[f"{dst}attn.out_proj.{part}"] = hf[f"{src}self_attn.out_proj.{part}"]
            state[f"{dst}ln_1.{part}"] = hf[f"{src}layer_norm1.{part}"]
            state[f"{dst}ln_2.{part}"] = hf[f"{src}layer_norm2.{part}"]
            state[f"{dst}mlp.c_fc.{part}"] = hf[f"{src}mlp.fc1.{part}"]
            state[f"{dst}mlp.c_proj.{part}"] = hf[f"{src}mlp.fc2.{part}"]
    return state
