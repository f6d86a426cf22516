"""UCE on a DiT's text input projections (FLUX, SD3), as the UCE authors' FLUX code (`uce_flux_edit.py`) edits
FLUX: in an MMDiT no projection reads the text alone except the two that bring it in, `context_embedder` (the
text stream: T5's states for FLUX; both CLIPs' then T5's for SD3) and `time_text_embed.text_embedder.linear_1`
(the pooled CLIP feature). Each is solved with UCE's ridge equation, keys = what it reads for the concepts,
targets = the same projection applied to the guides, preserved prompts kept.

Rows (token positions on the conditioning's axis, the first tokenizer's: T5 for FLUX, CLIP-L for SD3, whose T5
half is then not edited): the concepts' last word and end span paired with the guides' (`concept_tokens=
"final"`, this lab's UCE), or the last word only (`"last"`, the authors' FLUX code); preserved prompts at every
position (`preserve_tokens="all"`) or their last word and end span (`"final"`); the pooled projection has one row
per prompt. Targets exclude the layer's bias (`bias="once"`); the authors' code takes the layer's outputs, bias
included, so the edited layer adds it twice at the keys (`bias="twice"`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from localize.conditioning import text_contexts, text_pooled
from localize.model import Model
from localize.tokens import last_subject_token
from locoedit.cross_attention import PromptPair, identity, pair_prompts, pair_rows
from locoedit.edits import WeightUpdate
from locoedit.solver import RidgeProblem

INPUT_PROJECTIONS = {"context": "context_embedder", "pooled": "time_text_embed.text_embedder.linear_1"}


def last_word_pairs(model: Model, sources: Sequence[str], targets: Sequence[str]) -> list[PromptPair]:
    """Each source's last word paired with its target's (the authors' FLUX keys)."""
    tokenizer = model.tokenizer
    return [PromptPair(s, t, (last_subject_token(tokenizer, s, s.split()[-1]),),
                       (last_subject_token(tokenizer, t, t.split()[-1]) if t.strip() else 0,))
            for s, t in zip(sources, targets, strict=True)]


def _solve(weight: torch.Tensor, bias: torch.Tensor | None, keys: torch.Tensor, targets: torch.Tensor, lam: float,
           kept: torch.Tensor | None, preserve_scale: float, bias_count: str) -> WeightUpdate:
    problem = RidgeProblem(keys, lam, kept, preserve_scale)
    residuals = problem.input_residuals(weight, targets)
    if bias_count == "twice" and bias is not None:
        residuals = residuals + bias.to(residuals)
    up, down = problem.factors(residuals)
    return WeightUpdate.from_factors(weight, up, down)


@torch.no_grad()
def uce_input_projections(model: Model, concepts: Sequence[str], guides: Sequence[str], preserve: Sequence[str],
                          lam: float, preserve_scale: float, concept_tokens: str, preserve_tokens: str,
                          bias: str, root: float = 1.0) -> dict[str, WeightUpdate]:
    """The updates of both input projections (addresses `transformer.<path>.weight`); `root` scales the edited
    rows (UCE's moderation weighs them by its square)."""
    if concept_tokens == "last":
        pairs = last_word_pairs(model, concepts, guides)
    else:
        pairs = pair_prompts(model, concepts, guides, "final")
    keys, targets = (root * rows for rows in pair_rows(model, pairs)(identity))
    kept = None
    if preserve:
        if preserve_tokens == "all":
            kept = text_contexts(model, list(preserve)).flatten(0, 1)
        else:
            kept = pair_rows(model, pair_prompts(model, preserve, preserve, "final"))(identity)[0]
    pooled = text_pooled(model, [*concepts, *guides, *preserve])
    n = len(concepts)
    pooled_rows = (root * pooled[:n], root * pooled[n:2 * n], pooled[2 * n:] if preserve else None)
    transformer = model.denoiser
    updates = {}
    for path, (k, t, p) in zip(INPUT_PROJECTIONS.values(), ((keys, targets, kept), pooled_rows), strict=True):
        linear = transformer.get_submodule(path)
        updates[f"transformer.{path}.weight"] = _solve(linear.weight, linear.bias, k, t, lam, p, preserve_scale, bias)
    return updates
