"""Closed-form edits of cross-attention key/value projections: TIME, LOCOEDIT and UCE (erase, moderate).

Every method here is the solver's ridge equation with keys = the text a layer's projections see for the source
prompts (at chosen token positions) and targets v* = W t, the same projection applied to target text t (the
destination's aligned tokens, a guide concept, a mix). Layers are cross-attention indices (0-based, execution
order, `localize layers`); each edits its `key` and `value` projections (IF: add_k_proj / add_v_proj).

Batch convention: all prompts of an edit (sources, destinations, preserved) are encoded as ONE batch; layers
whose projections see the raw context share one Gram factorization (every layer in SD 1/2 and SD-XL); IF's
layers normalize the text first and get one factorization each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from localize.conditioning import projection_inputs, shares_raw_context, text_contexts
from localize.model import CrossAttentionLayer, Model
from localize.tokens import align_tokens, final_span, token_ids
from locoedit.edits import WeightUpdate
from locoedit.params import ALIGNMENTS
from locoedit.solver import RidgeProblem

Transform = Callable[[torch.Tensor], torch.Tensor]  # N x tokens x features -> the same, as a layer sees it


@dataclass(frozen=True)
class PromptPair:
    """Source positions of `source` map to the same-index positions of `target`."""

    source: str
    target: str
    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]


def pair_prompts(model: Model, sources: Sequence[str], destinations: Sequence[str], alignment: str
                 ) -> list[PromptPair]:
    """Pairs with positions: `time` aligns every source position (TIME), `final` the last word and end span (UCE's
    edited prompts), `all` pairs each of the encoder's positions with the same one (UCE's preserved prompts)."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {alignment!r}; valid: {', '.join(ALIGNMENTS)}")
    if len(sources) != len(destinations) or not sources:
        raise ValueError(f"need one destination per source, got {len(sources)} sources and {len(destinations)} "
                         "destinations")
    tokenizer, length = model.tokenizer, model.spec.max_tokens
    pairs = []
    for source, destination in zip(sources, destinations, strict=True):
        if alignment == "time":
            mapped = align_tokens(tokenizer, source, destination)[:length]
            pairs.append(PromptPair(source, destination, tuple(range(len(mapped))), tuple(mapped)))
        elif alignment == "all":
            token_ids(tokenizer, source), token_ids(tokenizer, destination)  # a too-long prompt is an error
            pairs.append(PromptPair(source, destination, tuple(range(length)), tuple(range(length))))
        else:
            src, dst = final_span(tokenizer, source, destination, length)
            pairs.append(PromptPair(source, destination, tuple(src), tuple(dst)))
    return pairs


def check_layers(model: Model, layers: Sequence[int]) -> list[int]:
    n = len(model.cross_attention_layers)
    layers = list(layers)
    bad = [k for k in layers if not isinstance(k, int) or not 0 <= k < n]
    if not layers or bad:
        what = "cross-attention layers" if model.spec.denoiser == "unet" else "dual-stream blocks"
        raise ValueError(f"{what} {bad or layers} invalid: this model has {n} (0..{n - 1}), see `localize layers`")
    return sorted(set(layers))


TargetInputs = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]  # [n, features], or a function of the weight
Rows = Callable[[Transform], tuple[torch.Tensor, TargetInputs]]  # (keys [n, features], target inputs)


def identity(contexts: torch.Tensor) -> torch.Tensor:
    return contexts


@torch.no_grad()
def pair_rows(model: Model, pairs: Sequence[PromptPair]) -> Rows:
    """Encode the pairs' prompts once (one batch); returns rows(transform) = (keys, target inputs): the source
    and target contexts at the pairs' positions after `transform` (a layer's cross-attention norm, which for
    IF normalizes over a whole prompt, so it is applied to full contexts before positions are taken)."""
    prompts = list(dict.fromkeys([p.source for p in pairs] + [p.target for p in pairs]))
    index = {prompt: i for i, prompt in enumerate(prompts)}
    contexts = text_contexts(model, prompts)
    return lambda transform: gather_pairs(transform(contexts), index, pairs)


def gather_pairs(contexts: torch.Tensor, index: dict[str, int], pairs: Sequence[PromptPair]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, target inputs): each pair's source and target rows of `contexts` (prompt `index[prompt]`) at its
    positions."""
    return side_rows(contexts, index, pairs, "source"), side_rows(contexts, index, pairs, "target")


def side_rows(contexts: torch.Tensor, index: dict[str, int], pairs: Sequence[PromptPair], side: str) -> torch.Tensor:
    """One side of `gather_pairs`: each pair's `source` (or `target`) rows of `contexts` at that side's positions."""
    return torch.cat([contexts[index[getattr(p, side)], list(getattr(p, f"{side}_positions"))] for p in pairs])


def projection_address(model: Model, layer: CrossAttentionLayer, projection: torch.nn.Module) -> str:
    """`<denoiser>.<layer name>.<projection>.weight`, e.g. `unet.<...>.attn2.to_v.weight`,
    `transformer.transformer_blocks.3.attn.add_k_proj.weight`."""
    name = next(name for name, child in layer.module.named_children() if child is projection)
    return f"{model.spec.denoiser_attr}.{layer.name}.{name}.weight"


def check_text_keys(model: Model, method: str = "this edit") -> None:
    """These closed forms read every layer's keys from the prompts' text, which a DiT's blocks never see alone."""
    if model.spec.denoiser != "unet":
        raise ValueError(
            f"{method} solves cross-attention layers with keys computed from the prompts' text; in the {model.family} "
            f"family's DiT the text stream a block reads depends on the image and the step, so no such keys exist: "
            "use locoedit (keys gathered from generations, `locoedit.dit_blocks`) or uce's erase and moderate modes "
            "(the text input projections)")


@torch.no_grad()
def solve_projections(model: Model, layers: Sequence[int] | None, rows: Rows, lam: float,
                      preserved: Rows | None = None, preserve_scale: float = 1.0) -> dict[str, WeightUpdate]:
    """The updates of the key and value projections of `layers` (None: every cross-attention layer) mapping
    the keys of `rows` to W (target inputs; target inputs that depend on the weight are a function of it, as
    UCE's authors' debiasing targets are), keeping W on the keys of `preserved` (scaled by `preserve_scale`).
    Layers that see the raw context share one factorization."""
    check_text_keys(model)
    shared = None
    updates = {}
    layers = range(len(model.cross_attention_layers)) if layers is None else layers
    for k in check_layers(model, layers):
        layer = model.cross_attention_layers[k]
        raw = shares_raw_context(layer)
        if raw and shared is not None:
            problem, targets = shared
        else:
            transform = identity if raw else (lambda contexts, layer=layer: projection_inputs(layer, contexts))
            keys, targets = rows(transform)
            kept = None if preserved is None else preserved(transform)[0]
            problem = RidgeProblem(keys, lam, kept, preserve_scale)
            if raw:
                shared = problem, targets
        for projection in (layer.key, layer.value):
            inputs = targets(projection.weight) if callable(targets) else targets
            up, down = problem.factors(problem.input_residuals(projection.weight, inputs))
            address = projection_address(model, layer, projection)
            updates[address] = WeightUpdate.from_factors(projection.weight, up, down)
    return updates
