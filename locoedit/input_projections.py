"""UCE on a DiT's text input projections (FLUX, SD3), as the UCE authors' FLUX code (`uce_flux_edit.py`) edits
FLUX: in an MMDiT no projection reads the text alone except the two that bring it in, `context_embedder` (the
text stream: T5's states for FLUX; both CLIPs' then T5's for SD3) and `time_text_embed.text_embedder.linear_1`
(the pooled CLIP feature). Each is solved with UCE's ridge equation, keys = what it reads for the concepts,
targets = the same projection applied to the guides, preserved prompts kept.

Rows (token positions on the conditioning's axis: FLUX's T5 positions; SD3's CLIP positions, then its T5
positions after them): the concepts' last word and end span paired with the guides' (`concept_tokens=
"final"`, this lab's UCE), or the last word only (`"last"`, the authors' FLUX code), in each segment;
preserved prompts at every position (`preserve_tokens="all"`) or their last word and end span (`"final"`); the
pooled projection has one row per prompt. Targets exclude the layer's bias (`bias="once"`); the authors' code
takes the layer's outputs, bias included, so the edited layer adds it twice at the keys (`bias="twice"`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from localize.generation import image_size
from localize.model import Model
from localize.tokens import final_span, last_subject_token
from locoedit.cross_attention import PromptPair, gather_pairs
from locoedit.edits import WeightUpdate
from locoedit.solver import RidgeProblem

INPUT_PROJECTIONS = {"context": "context_embedder", "pooled": "time_text_embed.text_embedder.linear_1"}


def _segment_positions(tokenizer, source: str, target: str, tokens: str) -> tuple[list[int], list[int]]:
    """Paired positions of one tokenizer's segment: the last words (`last`), or UCE's final spans (`final`)."""
    if tokens == "final":
        return final_span(tokenizer, source, target)
    last = [last_subject_token(tokenizer, p, p.split()[-1]) if p.strip() else 0 for p in (source, target)]
    return [last[0]], [last[1]]


def context_pairs(model: Model, sources: Sequence[str], targets: Sequence[str], tokens: str) -> list[PromptPair]:
    """Each source paired with its target on the conditioning's token axis, segment by segment: the first
    tokenizer's positions, and for SD3 (whose context is CLIP's 77 positions, then T5's) the last tokenizer's
    shifted past the first segment."""
    segments = [(model.tokenizer, 0)]
    if model.spec.context_tokens is not None:
        segments.append((model.tokenizers[-1], model.spec.max_tokens))
    pairs = []
    for source, target in zip(sources, targets, strict=True):
        src, dst = [], []
        for tokenizer, offset in segments:
            s, t = _segment_positions(tokenizer, source, target, tokens)
            src += [offset + p for p in s]
            dst += [offset + p for p in t]
        pairs.append(PromptPair(source, target, tuple(src), tuple(dst)))
    return pairs


def _solve(linear: torch.nn.Linear, keys: torch.Tensor, targets: torch.Tensor, lam: float, kept: torch.Tensor | None,
           preserve_scale: float, bias: str) -> WeightUpdate:
    problem = RidgeProblem(keys, lam, kept, preserve_scale)
    up, down = problem.factors(problem.linear_residuals(linear, targets, bias))
    return WeightUpdate.from_factors(linear.weight, up, down)


@torch.no_grad()
def uce_input_projections(model: Model, concepts: Sequence[str], guides: Sequence[str], preserve: Sequence[str],
                          lam: float, preserve_scale: float, concept_tokens: str, preserve_tokens: str,
                          bias: str, root: float = 1.0) -> dict[str, WeightUpdate]:
    """The updates of both input projections (addresses `transformer.<path>.weight`); `root` scales the edited
    rows (UCE's moderation weighs them by its square). Every prompt is encoded once, in one batch: the text
    stream and the pooled feature come from the same pass."""
    prompts = list(dict.fromkeys([*concepts, *guides, *preserve]))
    index = {prompt: i for i, prompt in enumerate(prompts)}
    conditioning = model.spec.encode(model.pipeline, prompts, image_size(model, None, None))
    contexts, pooled = conditioning["encoder_hidden_states"], conditioning["pooled_projections"]
    keys, targets = (root * rows for rows in gather_pairs(contexts, index, context_pairs(model, concepts, guides,
                                                                                          concept_tokens)))
    kept = None
    if preserve:
        if preserve_tokens == "all":
            kept = contexts[[index[p] for p in preserve]].flatten(0, 1)
        else:
            kept = gather_pairs(contexts, index, context_pairs(model, preserve, preserve, "final"))[0]

    def rows_of(prompts: Sequence[str]) -> torch.Tensor:
        return pooled[[index[p] for p in prompts]]

    pooled_rows = (root * rows_of(concepts), root * rows_of(guides), rows_of(preserve) if preserve else None)
    transformer = model.denoiser
    updates = {}
    for path, (k, t, p) in zip(INPUT_PROJECTIONS.values(), ((keys, targets, kept), pooled_rows), strict=True):
        updates[f"transformer.{path}.weight"] = _solve(transformer.get_submodule(path), k, t, lam, p, preserve_scale,
                                                       bias)
    return updates
