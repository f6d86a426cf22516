"""TIME, LOCOEDIT and UCE (erase, moderate): cross-attention key/value edits on the shared solver.

Each returns the weight updates; `locoedit.edit` times it and wraps it in an `Edit`. Prompts may be one string
or a list (each source paired with the destination at the same index).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from localize.model import Model
from locoedit.cross_attention import Rows, check_text_keys, pair_prompts, pair_rows, solve_projections
from locoedit.dit_blocks import KEY_SEEDS, locoedit_blocks
from locoedit.edits import WeightUpdate
from locoedit.input_projections import INPUT_PROJECTIONS, uce_input_projections
from locoedit.params import (
    ALIGNMENTS,
    BIAS_COUNTS,
    CONCEPT_TOKENS,
    MODERATIONS,
    PRESERVE_TOKENS,
    UCE_MODES,
    check_strength,
)
from locoedit.prompts import TIME_TEMPLATES, as_list, augmented_pairs, check_choice, check_lam, preserved_prompts


def time(model: Model, source: str | Sequence[str], destination: str | Sequence[str], lam: float = 0.1,
         templates: Sequence[str] = TIME_TEMPLATES, layers: Sequence[int] | None = None,
         preserve: Sequence[str] = (), preserve_scale: float = 1.0) -> dict[str, WeightUpdate]:
    """TIME: every token of the source prompts (padding included) projects like its aligned destination token,
    in the key and value projections of every cross-attention layer (or `layers`). The destination must contain
    the source's words in order ("a pack of roses" -> "a pack of blue roses"). `preserve` (not in the paper, off
    by default) keeps every token of those prompts projecting as before, with weight `preserve_scale`: the
    solver's preservation term, as UCE uses it."""
    check_text_keys(model, "TIME")
    check_lam(lam)
    src, dst = augmented_pairs(source, destination, templates)
    rows = pair_rows(model, pair_prompts(model, src, dst, "time"))
    kept = preserved_rows(model, preserved_prompts(preserve, src), "all")
    return solve_projections(model, layers, rows, lam, kept, preserve_scale)


def preserved_rows(model: Model, kept: list[str], alignment: str) -> Rows | None:
    """The kept prompts' rows (`preserved_prompts`) at the alignment's positions (`PRESERVE_TOKENS`: every one of
    the encoder's positions, the authors', or the last word and end span), each kept as it projects now (None
    when there are none)."""
    check_choice("preserve_tokens", alignment, PRESERVE_TOKENS)
    return pair_rows(model, pair_prompts(model, kept, kept, alignment)) if kept else None


def chosen_layers(results: str | Path, model: Model | None = None) -> list[int]:
    """The layers of the window LOCOGEN chose, from its `results.parquet` or `windows.parquet`; with `model`,
    a file from another model (another family, or other modules at those layer indices) is an error."""
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"no LOCOGEN results file at {path}")
    table = pd.read_parquet(path, columns=None)
    missing = {"chosen", "layers"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a LOCOGEN results file: it has no {', '.join(sorted(missing))} column")
    chosen = {tuple(int(k) for k in layers) for layers in table.loc[table["chosen"], "layers"]}
    if len(chosen) != 1:
        raise ValueError(f"{path} marks {len(chosen)} chosen windows; expected exactly one")
    layers = list(chosen.pop())
    if model is not None:
        families = table["model.family"].dropna().unique().tolist() if "model.family" in table else []
        names = list(table.loc[table["chosen"], "names"].iloc[0]) if "names" in table else None
        n = len(model.cross_attention_layers)
        ours = [model.cross_attention_layers[k].name if 0 <= k < n else None for k in layers]
        if families not in ([], [model.family]) or (names is not None and names != ours):
            raise ValueError(f"{path} is LOCOGEN's result for another model: its chosen layers {layers} are {names} "
                             f"(family {', '.join(families) or 'not recorded'}); in this {model.family} model "
                             f"they are {ours}")
    return layers


def locoedit(model: Model, source: str | Sequence[str], destination: str | Sequence[str],
             layers: Sequence[int] | None = None, results: str | None = None, lam: float = 0.1,
             alignment: str = "final", templates: Sequence[str] = TIME_TEMPLATES,
             key_seeds: Sequence[int] | None = None, steps: int | None = None, guidance: float | None = None,
             held_out_seeds: Sequence[int] = ()) -> dict[str, WeightUpdate] | tuple[dict[str, WeightUpdate], dict]:
    """LOCOEDIT: the source prompts' text (last word and end span, or TIME's full alignment) projects like the
    destination's, in the key and value projections of the layers LOCOGEN chose: `layers` (indices), or read from
    its `results` file. E.g. "a house in the style of Velmor" -> "a house" removes a style.

    On a DiT (FLUX, SD3) the layers are dual-stream blocks and their text-stream projections `add_k_proj` /
    `add_v_proj` are edited with keys gathered from generations (`locoedit.dit_blocks`): at `key_seeds` (default
    0..3) with `steps` and `guidance` (required: those the edit is meant for), the last word and end span only;
    `held_out_seeds` measures the gap the one closed form leaves at unseen seeds, per step (the edit's info). On a
    UNet those four are not used and giving them is an error."""
    check_lam(lam)
    if (layers is None) == (results is None):
        raise ValueError("give the LOCOGEN layers either as `layers` (cross-attention indices) or as `results` "
                         "(LOCOGEN's results.parquet), not both and not neither")
    dit = model.spec.denoiser != "unet"
    check_generation_keys(model, dit, alignment, key_seeds, steps, guidance, held_out_seeds)
    layers = chosen_layers(results, model) if results is not None else list(layers)
    src, dst = augmented_pairs(source, destination, templates)
    if dit:
        return locoedit_blocks(model, src, dst, layers, lam, KEY_SEEDS if key_seeds is None else key_seeds, steps,
                               guidance, held_out_seeds)
    rows = pair_rows(model, pair_prompts(model, src, dst, alignment))
    return solve_projections(model, layers, rows, lam)


def check_generation_keys(model: Model, dit: bool, alignment: str, key_seeds, steps, guidance, held_out_seeds
                          ) -> None:
    """A DiT's LOCOEDIT needs the generation its keys come from and pairs the last word and end span; a UNet's
    takes none of those settings."""
    check_choice("alignment", alignment, ALIGNMENTS)
    given = [name for name, value in (("key_seeds", key_seeds), ("steps", steps), ("guidance", guidance),
                                      ("held_out_seeds", held_out_seeds or None)) if value is not None]
    if not dit and given:
        raise ValueError(f"{', '.join(given)}: these choose the generations a DiT's LOCOEDIT gathers its keys from; "
                         f"the {model.family} family's cross-attention reads the prompts' text, so leave them unset")
    if dit and (steps is None or guidance is None):
        raise ValueError(f"LOCOEDIT on the {model.family} family gathers its keys from generations: give `steps` and "
                         "`guidance` (those you will generate with; `localize edit` passes its own)")
    if dit and alignment != "final":
        raise ValueError(f"alignment={alignment!r}: LOCOEDIT on a DiT pairs the last word and end span "
                         "(alignment='final'); TIME's full alignment is a UNet option")


def uce_preserve_scale(preserved: int) -> float:
    """UCE's default preservation scale for `preserved` prompts (the empty prompt counted): max(0.1, 1 / preserved)."""
    return max(0.1, 1 / max(preserved, 1))


def uce_kept(preserve: Sequence[str], edited: Sequence[str], preserve_empty: bool) -> list[str]:
    """UCE's preserved prompts: the empty prompt first when `preserve_empty` (the authors' `train_erase.py`),
    then `preserve`; a prompt also edited is an error."""
    kept = preserved_prompts(preserve, edited)
    return ["", *kept] if preserve_empty and "" not in kept else kept


def uce_pairs(concepts: str | Sequence[str], guides: str | Sequence[str], templates: Sequence[str]
              ) -> tuple[list[str], list[str]]:
    """The edited prompts and their guides, templated: one guide for all concepts, or one per concept."""
    concepts = as_list(concepts, "concepts")
    guides = [guides] * len(concepts) if isinstance(guides, str) else list(guides)
    return augmented_pairs(concepts, guides, templates, ("concept", "guide"))


def uce_rows(model: Model, concepts: str | Sequence[str], guides: str | Sequence[str], strength: float,
             moderation: str, templates: Sequence[str]) -> tuple[list[str], Rows]:
    """The edited prompts (templated) and their rows: each concept's last word and end span onto its guide's
    (one guide for all, or one per concept). Strength s < 1 (moderation): `authors` weighs the terms s (keys
    and targets scaled by sqrt(s)), `partial` moves the targets the fraction s of the way at full weight."""
    src, dst = uce_pairs(concepts, guides, templates)
    guided = pair_rows(model, pair_prompts(model, src, dst, "final"))
    root = strength ** 0.5

    def rows(transform):
        keys, targets = guided(transform)
        if moderation == "authors":
            return root * keys, root * targets
        return keys, keys + strength * (targets - keys)

    return src, rows


def joined(parts: Sequence[Rows]) -> Rows:
    """rows(transform): every part's keys and target inputs stacked, so that one solve holds all their terms."""
    def rows(transform):
        both = [part(transform) for part in parts]
        return torch.cat([keys for keys, _ in both]), torch.cat([targets for _, targets in both])

    return rows


def uce(model: Model, concepts: str | Sequence[str], guides: str | Sequence[str] = "", mode: str = "erase",
        strength: float = 1.0, preserve: Sequence[str] = (), preserve_scale: float | None = None,
        lam: float = 0.5, templates: Sequence[str] = (), layers: Sequence[int] | None = None,
        preserve_tokens: str = "all", preserve_empty: bool = True, moderation: str = "authors",
        concept_tokens: str = "final", bias: str = "once") -> dict[str, WeightUpdate]:
    """UCE on every cross-attention layer (or `layers`): each concept's last word and end span projects like its
    guide's (one guide for all, or one per concept; "" maps to the empty prompt), while the preserved prompts
    keep their projections. Many concepts go in one solve.

    Preservation follows the authors' `train_erase.py`: the empty prompt is always preserved
    (`preserve_empty=False` drops it), each preserved prompt is kept at every one of the encoder's positions
    (`preserve_tokens="final"` keeps only its last word and end span, as the edited prompts are paired), and
    `preserve_scale` defaults to max(0.1, 1/n) with n counting the empty prompt.

    `erase` maps fully onto the guide. `moderate` (0 < strength < 1): `moderation="authors"` is the authors'
    moderation, a full erase onto the guide whose terms weigh `strength` (their `erase_scale`) in the solve;
    `"partial"` is this lab's alternative, targets moved the fraction `strength` of the way at full weight.

    On a DiT (FLUX, SD3) UCE edits the text input projections instead (`locoedit.input_projections`, as the
    authors' FLUX code does), with the same concepts, preservation and moderation; there `concept_tokens="last"`
    (the concept's last word only) and `bias="twice"` are the authors' FLUX conventions (this lab's: `final`,
    `once`)."""
    check_lam(lam)
    check_choice("UCE mode", mode, UCE_MODES)
    check_choice("moderation", moderation, MODERATIONS)
    check_choice("concept_tokens", concept_tokens, CONCEPT_TOKENS)
    check_choice("bias", bias, BIAS_COUNTS)
    check_strength(mode, strength)
    dit = model.spec.denoiser != "unet"
    if dit:
        check_dit_uce(model, layers, moderation, strength)
    elif concept_tokens != "final" or bias != "once":
        raise ValueError("concept_tokens and bias choose a DiT's UCE conventions (its input projections); a UNet's "
                         "UCE pairs the last word and end span and excludes the bias")
    if dit:
        src, dst = uce_pairs(concepts, guides, templates)
    else:
        src, rows = uce_rows(model, concepts, guides, strength, moderation, templates)
    kept = uce_kept(preserve, src, preserve_empty)
    if preserve_scale is None:
        preserve_scale = uce_preserve_scale(len(kept)) if kept else 0.0
    if dit:
        return uce_input_projections(model, src, dst, kept, lam, preserve_scale, concept_tokens, preserve_tokens,
                                     bias, root=strength ** 0.5)
    return solve_projections(model, layers, rows, lam, preserved_rows(model, kept, preserve_tokens), preserve_scale)


def check_dit_uce(model: Model, layers, moderation: str, strength: float) -> None:
    """UCE on a DiT edits its text input projections (`locoedit.input_projections`): `layers` does not apply, and
    it moderates as the authors do."""
    if layers is not None:
        raise ValueError(f"layers={list(layers)}: UCE on the {model.family} family edits its text input "
                         f"projections ({', '.join(INPUT_PROJECTIONS.values())}), not layers; leave layers unset")
    if moderation == "partial" and strength != 1.0:
        raise ValueError("moderation='partial' is a UNet option; a DiT's UCE moderates as the authors do")
