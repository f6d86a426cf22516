"""UCE's one edit: erase, moderate and debias terms and the preservation term in ONE solve (the paper's headline:
styles erased, professions debiased, unsafe content moderated and the rest preserved, together).

Composing separate edits is not this: each separate solve keeps only its own terms, so one edit's update can undo
another's keys. Here every term enters the same normal equations

    W' = (lam W + sum_e W g c^T + s sum_m W g c^T + sum_d W t(alpha) c^T + p sum_k W k k^T)
         (lam I + sum_e c c^T + s sum_m c c^T + sum_d c c^T + p sum_k k k^T)^-1

(e erased, m moderated with weight s, d debiased with targets mixed by the attribute weights alpha, k preserved).
When a concept is debiased, its weights are searched as `locoedit.debias` does, every round's solve holding the
erase, moderate and preservation terms.
"""

from __future__ import annotations

from collections.abc import Sequence

from localize.model import Model
from locoedit.cross_attention import check_text_keys
from locoedit.debias import Classifier, debias
from locoedit.edits import WeightUpdate
from locoedit.methods import (
    joined,
    preserved_rows,
    solve_projections,
    uce_kept,
    uce_preserve_scale,
    uce_rows,
)
from locoedit.params import MODERATIONS, check_strength
from locoedit.prompts import augmented, check_choice, check_lam


def uce_joint(model: Model, erase: Sequence[str] = (), erase_guides: str | Sequence[str] = "",
              moderate: Sequence[str] = (), moderate_guides: str | Sequence[str] = "", strength: float = 0.5,
              concept: str | None = None, attributes: Sequence[str] = (), classify: Classifier | None = None,
              split: Sequence[float] | None = None, seeds: Sequence[int] = range(16), steps: int = 25,
              guidance: float = 7.5, tolerance: float = 0.1, rounds: int = 8, rate: float = 1.0,
              preserve: Sequence[str] = (), preserve_scale: float | None = None, lam: float = 0.5,
              templates: Sequence[str] = (), layers: Sequence[int] | None = None, preserve_tokens: str = "all",
              preserve_empty: bool = True, moderation: str = "authors"
              ) -> dict[str, WeightUpdate] | tuple[dict[str, WeightUpdate], dict]:
    """One UCE edit of every cross-attention layer (or `layers`): `erase` concepts onto `erase_guides`,
    `moderate` concepts onto `moderate_guides` at `strength` (`moderation` as in `locoedit.methods.uce`), and
    `concept` debiased over `attributes` (classified by `classify`, towards `split`; the search's settings as in
    `locoedit.debias.debias`), with the preservation of `locoedit.methods.uce` (the empty prompt and `preserve`,
    every position by default, scale max(0.1, 1/n)). Returns the updates, and with a debiased concept also the
    search's {alpha, shares, history}."""
    check_text_keys(model, "UCE's joint mode")
    check_lam(lam)
    check_choice("moderation", moderation, MODERATIONS)
    if not erase and not moderate and concept is None:
        raise ValueError("the joint UCE edit needs at least one of erase, moderate or concept (to debias)")
    if concept is not None and (classify is None or not attributes):
        raise ValueError(f"debiasing {concept!r} needs `attributes` and a `classify`")
    parts, edited = [], []
    if erase:
        prompts, rows = uce_rows(model, erase, erase_guides, 1.0, moderation, templates)
        parts.append(rows)
        edited += prompts
    if moderate:
        check_strength("moderate", strength)
        prompts, rows = uce_rows(model, moderate, moderate_guides, strength, moderation, templates)
        parts.append(rows)
        edited += prompts
    if concept is not None:
        edited += augmented(concept, templates)
    kept = uce_kept(preserve, edited, preserve_empty)
    if preserve_scale is None:
        preserve_scale = uce_preserve_scale(len(kept)) if kept else 0.0
    held = joined(parts) if parts else None
    if concept is None:
        return solve_projections(model, layers, held, lam, preserved_rows(model, kept, preserve_tokens),
                                 preserve_scale)
    return debias(model, concept, attributes, classify, split=split, templates=templates, seeds=seeds, steps=steps,
                  guidance=guidance, tolerance=tolerance, rounds=rounds, rate=rate, lam=lam, preserve=preserve,
                  preserve_scale=preserve_scale, layers=layers, preserve_tokens=preserve_tokens,
                  preserve_empty=preserve_empty, held=held)
