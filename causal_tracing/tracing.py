"""Causal tracing runs: clean, corrupted and restored generations as rows of one batch, scored with CLIP.

Batch convention (ROME's, extended to many units): a batch holds, for each unit (prompt x seed) in it, its
clean row first and then restored rows of that unit, every one with the unit's prompt and seed. Restored rows
carry the unit's corruption (noise on the attribute's embeddings) and restore their states from the unit's
clean row of the same batch (`Patch(op="restore")`): UNet states in both CFG halves at every step of the step
range, text states in the conditional half. A restoration of no state is the corrupted run. Units are
chunked into batches of at most `batch_size` rows; a unit split across batches repeats its clean row.

A row's image depends only on its prompt, seed and patches, so the batched scores equal `serial_scores`,
the reference loop of ROME's `trace_with_patch` (one generation of [clean, restored] per restoration).

No row is spent on a state whose image is known without generating it (`causal_tracing.pruning`): a state the
corruption cannot reach in a causal text encoder (`unreached`), and a text state whose restoration conditions
the UNet bit-identically to the corrupted run, the clean run or an earlier restoration (`same_conditioning`).
Such states are recorded with that run's score, `generated` False and `same_as` naming the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from causal_tracing.corruption import attribute_positions, corruption_patches, noise_stds
from causal_tracing.pruning import Known, same_conditioning, unreached
from causal_tracing.settings import TraceSettings, Unit, check_kinds
from causal_tracing.states import State, text_states, token_roles, unet_states
from localize.batching import PackedUnit, RowPatches, score_packed
from localize.generation import generate
from localize.model import Model
from localize.patches import Patch
from localize.scoring import ClipScorer
from localize.tokens import token_ids

Restoration = tuple[State, ...]  # states restored together in one row; () is the corrupted run


def restore_patches(restoration: Restoration, row: int, clean_row: int, settings: TraceSettings) -> list[Patch]:
    """Patches that copy each state of `restoration` from `clean_row` into `row`."""
    patches = []
    for state in restoration:
        if state.group == "unet":
            patches.append(Patch(state.site, "restore", rows=(row,), source_rows=(clean_row,),
                                 steps=settings.step_range))
        else:
            patches.append(Patch(state.site, "restore", tokens=state.tokens, rows=(row,), source_rows=(clean_row,),
                                 branch="cond"))
    return patches


def unit_noise_stds(model: Model, units: Sequence[Unit], settings: TraceSettings) -> list[float]:
    """Each text encoder's noise std for tracing `units` (measured on all their attributes)."""
    return noise_stds(model, [unit.attribute for unit in units], settings.noise_scale, settings.noise_std)


class _Corruption:
    """The noise stds and each unit's attribute positions, checked before anything is generated."""

    def __init__(self, model: Model, units: Sequence[Unit], stds: list[float]):
        self.stds = stds
        self.positions = {(u.prompt, u.attribute): attribute_positions(model, u.prompt, u.attribute) for u in units}

    def patches(self, unit: Unit, rows) -> list[Patch]:
        return corruption_patches(self.positions[unit.prompt, unit.attribute], self.stds, unit.seed, rows)


def batched_scores(
    model: Model,
    scorer: ClipScorer,
    units: Sequence[Unit],
    restorations: Sequence[Sequence[Restoration]],
    settings: TraceSettings,
    stds: list[float],
    progress: bool = False,
) -> tuple[list[float], list[list[float]]]:
    """Clean score of each unit, and the score of each of its restorations (`restorations[u][i]`).

    `stds`: each text encoder's corruption noise std (`unit_noise_stds`)."""
    settings.check()
    corruption = _Corruption(model, units, stds)

    def row_patches(unit: Unit, restoration: Restoration) -> RowPatches:
        return lambda row, clean_row: (corruption.patches(unit, [row])
                                       + restore_patches(restoration, row, clean_row, settings))

    packed = [PackedUnit(unit.prompt, unit.prompt, unit.seed, unit.text, [row_patches(unit, r) for r in unit_rows])
              for unit, unit_rows in zip(units, restorations, strict=True)]
    return score_packed(model, scorer, packed, settings.batch_size, settings.steps, settings.guidance, progress,
                        desc="tracing", memory_budget=settings.memory_budget)


def serial_scores(
    model: Model,
    scorer: ClipScorer,
    unit: Unit,
    restorations: Sequence[Restoration],
    settings: TraceSettings,
    stds: list[float],
) -> tuple[float, list[float]]:
    """The reference loop (ROME's `trace_with_patch`): one generation of [clean, restored] per restoration."""
    settings.check()
    corruption = _Corruption(model, [unit], stds)
    clean, scores = None, []
    for restoration in restorations:
        patches = corruption.patches(unit, [1]) + restore_patches(restoration, 1, 0, settings)
        images = generate(model, [unit.prompt] * 2, [unit.seed] * 2, steps=settings.steps,
                          guidance=settings.guidance, patches=patches)
        clean_score, score = scorer.score(images, [unit.text] * 2).tolist()
        clean = clean_score if clean is None else clean
        scores.append(score)
    return clean, scores


def prompt_states(model: Model, unit: Unit, unet_kinds, text_kinds) -> list[State]:
    """Every traced state of a unit: denoiser components, then text states at the unit's token positions."""
    roles = [
        token_roles(tokenizer, unit.prompt, positions, tokenizer.model_max_length)
        for tokenizer, positions in zip(model.tokenizers, attribute_positions(model, unit.prompt, unit.attribute),
                                        strict=True)
    ]
    return unet_states(model, unet_kinds) + text_states(model, roles, text_kinds)


def known_results(model: Model, unit: Unit, states: Sequence[State], settings: TraceSettings,
                  stds: list[float]) -> dict[State, Known]:
    """The states of `unit` whose restored image is known without generating it, each with the run it equals
    (`causal_tracing.pruning`): `unreached` ones (the corrupted run), then `same_conditioning` ones."""
    corruption = _Corruption(model, [unit], stds)
    known: dict[State, Known] = {state: "corrupted" for state in states if unreached(model, state)}

    def row_patches(state: State | None, row: int) -> list[Patch]:
        restored = restore_patches((state,), row, 0, settings) if state is not None else []
        return corruption.patches(unit, [row]) + restored

    known |= same_conditioning(model, unit.prompt, [state for state in states if state not in known], row_patches)
    return known


def _same_as(known: Known | None) -> str:
    """The `same_as` column: "" (generated), "corrupted", "clean", or the earlier state as `site@position`."""
    if known is None or isinstance(known, str):
        return known or ""
    return f"{known.site}@{known.tokens[0]}"


def _token_text(model: Model, unit: Unit, state: State) -> str:
    if state.tokens is None:
        return ""
    if state.token_role == "padding":
        return f"<padding x{len(state.tokens)}>"
    encoder = int(state.location.rsplit(".", 1)[1])
    tokenizer = model.tokenizers[encoder]
    return tokenizer.convert_ids_to_tokens(token_ids(tokenizer, unit.prompt)[state.tokens[0]])


def trace(
    model: Model,
    scorer: ClipScorer,
    units: Sequence[Unit],
    settings: TraceSettings = TraceSettings(),
    unet_kinds=None,
    text_kinds=("self_attn", "mlp"),
    progress: bool = False,
) -> pd.DataFrame:
    """Trace every state of every unit: one row per unit x state (text states: per token position).
    `unet_kinds`: the denoiser's state kinds (None: all of them; UNets: resnet, self_attn, cross_attn, ff;
    DiTs: image, text).

    Columns: the unit (`prompt, attribute, text, seed`), the state (`site, group, kind, location, layer, token`
    (first position, -1 for UNet states), `token_role, token_text, key`), the scores (`score_clean,
    score_corrupted, score_restored`), `indirect_effect` = (restored - corrupted) / (clean - corrupted), NaN
    where the corruption lowered the clean score by less than `settings.min_drop`, `generated`: False for a
    state whose image is known without generating it (`known_results`), scored as the run it equals, which
    `same_as` names (`corrupted`, `clean` or `site@position`; "" when generated).
    """
    if not units:
        raise ValueError("no prompt to trace: the prompt set is empty")
    settings.check()
    check_kinds(unet_kinds, text_kinds)
    stds = unit_noise_stds(model, units, settings)
    states = [prompt_states(model, unit, unet_kinds, text_kinds) for unit in units]
    known = [known_results(model, unit, unit_states, settings, stds)
             for unit, unit_states in zip(units, states, strict=True)]
    generated = [[state for state in unit_states if state not in unit_known]
                 for unit_states, unit_known in zip(states, known, strict=True)]
    restorations = [[(), *((s,) for s in unit_generated)] for unit_generated in generated]
    clean, restored = batched_scores(model, scorer, units, restorations, settings, stds, progress)
    rows = []
    for unit, unit_states, unit_known, unit_generated, score_clean, scores in zip(
            units, states, known, generated, clean, restored, strict=True):
        corrupted, drop = scores[0], score_clean - scores[0]
        measured = drop > 0 and drop >= settings.min_drop
        by_run = {"clean": score_clean, "corrupted": corrupted, **dict(zip(unit_generated, scores[1:], strict=True))}
        for state in unit_states:
            score = by_run[unit_known.get(state, state)]
            rows.append({
                "prompt": unit.prompt, "attribute": unit.attribute, "text": unit.text, "seed": unit.seed,
                "site": state.site, "group": state.group, "kind": state.kind, "location": state.location,
                "layer": state.layer, "token": state.tokens[0] if state.tokens else -1,
                "token_role": state.token_role or "", "token_text": _token_text(model, unit, state),
                "key": state.key, "score_clean": score_clean, "score_corrupted": corrupted, "score_restored": score,
                "indirect_effect": (score - corrupted) / drop if measured else float("nan"),
                "generated": state not in unit_known, "same_as": _same_as(unit_known.get(state)),
            })
    return pd.DataFrame(rows)
