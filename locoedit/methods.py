"""TIME, LOCOEDIT and UCE (erase, moderate): cross-attention key/value edits on the shared solver.

Each returns the weight updates; `locoedit.edit` times it and wraps it in an `Edit`. Prompts may be one string
or a list (each source paired with the destination at the same index).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from localize.model import Model
from locoedit.cross_attention import Rows, pair_prompts, pair_rows, solve_projections
from locoedit.edits import WeightUpdate
from locoedit.prompts import TIME_TEMPLATES, as_list, augmented_pairs, check_lam, preserved_prompts

UCE_MODES = ("erase", "moderate")


def time(model: Model, source: str | Sequence[str], destination: str | Sequence[str], lam: float = 0.1,
         templates: Sequence[str] = TIME_TEMPLATES, layers: Sequence[int] | None = None,
         preserve: Sequence[str] = (), preserve_scale: float = 1.0) -> dict[str, WeightUpdate]:
    """TIME: every token of the source prompts (padding included) projects like its aligned destination token,
    in the key and value projections of every cross-attention layer (or `layers`). The destination must contain
    the source's words in order ("a pack of roses" -> "a pack of blue roses"). `preserve` (not in the paper, off
    by default) keeps every token of those prompts projecting as before, with weight `preserve_scale`: the
    solver's preservation term, as UCE uses it."""
    check_lam(lam)
    src, dst = augmented_pairs(source, destination, templates)
    rows = pair_rows(model, pair_prompts(model, src, dst, "time"))
    kept = preserved_rows(model, preserved_prompts(preserve, src), "time")
    return solve_projections(model, layers, rows, lam, kept, preserve_scale)


def preserved_rows(model: Model, kept: list[str], alignment: str) -> Rows | None:
    """The kept prompts' rows (`preserved_prompts`) at the alignment's positions, each kept as it projects now
    (None when there are none)."""
    return pair_rows(model, pair_prompts(model, kept, kept, alignment)) if kept else None


def chosen_layers(results: str | Path) -> list[int]:
    """The layers of the window LOCOGEN chose, from its `results.parquet` or `windows.parquet`."""
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"no LOCOGEN results file at {path}")
    table = pd.read_parquet(path, columns=None)
    missing = {"chosen", "layers"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a LOCOGEN results file: it has no {', '.join(sorted(missing))} column")
    chosen = table.loc[table["chosen"], "layers"].unique()
    if len(chosen) != 1:
        raise ValueError(f"{path} marks {len(chosen)} chosen windows; expected exactly one")
    return [int(k) for k in str(chosen[0]).split(",")]


def locoedit(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
             layers: Sequence[int] | None = None, results: str | None = None, lam: float = 0.1,
             alignment: str = "final", templates: Sequence[str] = TIME_TEMPLATES) -> dict[str, WeightUpdate]:
    """LOCOEDIT: the source prompts' text (last word and end span, or TIME's full alignment) projects like the
    destination's, in the key and value projections of the layers LOCOGEN chose: `layers` (indices), or read from
    its `results` file. E.g. "a house in the style of Velmor" -> "a house" removes a style."""
    check_lam(lam)
    if (layers is None) == (results is None):
        raise ValueError("give the LOCOGEN layers either as `layers` (cross-attention indices) or as `results` "
                         "(LOCOGEN's results.parquet), not both and not neither")
    layers = chosen_layers(results) if results is not None else list(layers)
    src, dst = augmented_pairs(source, destination, templates)
    rows = pair_rows(model, pair_prompts(model, src, dst, alignment))
    return solve_projections(model, layers, rows, lam)


def uce_preserve_scale(preserved: int) -> float:
    """UCE's default preservation scale for `preserved` prompts: max(0.1, 1 / preserved)."""
    return max(0.1, 1 / max(preserved, 1))


def uce(model: Model, concepts: str | Sequence[str], guides: str | Sequence[str] = "", mode: str = "erase",
        strength: float = 1.0, preserve: Sequence[str] = (), preserve_scale: float | None = None,
        lam: float = 0.5, templates: Sequence[str] = (), layers: Sequence[int] | None = None
        ) -> dict[str, WeightUpdate]:
    """UCE on every cross-attention layer (or `layers`): each concept's last word and end span projects like its
    guide's (one guide for all, or one per concept; "" maps to the empty prompt), while the `preserve` prompts
    keep their projections (scale `preserve_scale`, UCE's max(0.1, 1/n) by default). Many concepts go in one
    solve. `erase` maps fully onto the guide; `moderate` moves the fraction `strength` (0 < strength < 1) of the
    way, this lab's reading of UCE's moderation as a partial erase."""
    check_lam(lam)
    if mode not in UCE_MODES:
        raise ValueError(f"unknown UCE mode {mode!r}; valid: {', '.join(UCE_MODES)}")
    if mode == "erase" and strength != 1.0:
        raise ValueError(f"erase maps concepts fully onto their guides (strength 1); got strength={strength!r}: "
                         "use mode=moderate for a partial erase")
    if mode == "moderate" and not 0 < strength < 1:
        raise ValueError(f"moderate needs 0 < strength < 1, got {strength!r}")
    concepts = as_list(concepts, "concepts")
    guides = [guides] * len(concepts) if isinstance(guides, str) else list(guides)
    src, dst = augmented_pairs(concepts, guides, templates)
    guided = pair_rows(model, pair_prompts(model, src, dst, "final"))

    def rows(transform):
        keys, targets = guided(transform)
        return keys, keys + strength * (targets - keys)

    kept = preserved_prompts(preserve, src)
    if preserve_scale is None:
        preserve_scale = uce_preserve_scale(len(kept)) if kept else 0.0
    return solve_projections(model, layers, rows, lam, preserved_rows(model, kept, "final"), preserve_scale)

