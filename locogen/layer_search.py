"""LOCOGEN's window search: which m consecutive cross-attention layers control an attribute.

Batch convention: for each unit (prompt x seed) in a batch, its source row is the ALTERED prompt (what window
layers read), followed by its patched rows: index 0 is the original prompt untouched, index 1 + w the original
prompt with window w's layers reading the altered row's conditioning (conditional half). Units are packed into
batches of at most `batch_size` rows; a unit split across batches repeats its altered row.

Objective: `lower` (styles, objects: images are scored against the original attribute's text; the window that
lowers the score most controls it) or `raise` (facts: scored against the updated fact's text; the window that
raises it most). CLIP score = 100 * max(cos, 0) (see `localize.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from localize.batching import PackedUnit, RowPatches, score_packed
from localize.generation import generate
from localize.model import Model
from localize.scoring import ClipScorer
from localize.tokens import token_ids
from locogen.settings import SearchSettings, Unit
from locogen.windows import cross_attention_context, window_layers, window_patches, window_replace_patches, windows


def _check_units(model: Model, units: Sequence[Unit]) -> None:
    if not units:
        raise ValueError("no prompt to search with: the prompt set is empty")
    for unit in units:
        for prompt in (unit.prompt, unit.altered):
            for tokenizer in model.tokenizers:
                token_ids(tokenizer, prompt)


def batched_window_scores(
    model: Model, scorer: ClipScorer, units: Sequence[Unit], settings: SearchSettings, progress: bool = False
) -> tuple[list[float], list[float], list[list[float]]]:
    """Scores of each unit's altered prompt, original prompt, and original with each window altered."""
    layers = window_layers(model, settings.blocks)
    settings.check(len(layers))
    _check_units(model, units)
    all_windows = windows(len(layers), settings.m)
    rows = [_untouched, *(_window_rows(model, window, settings.blocks) for window in all_windows)]
    packed = [PackedUnit(unit.altered, unit.prompt, unit.seed, unit.text, rows) for unit in units]
    altered, scores = score_packed(model, scorer, packed, settings.batch_size, settings.steps, settings.guidance,
                                   progress, desc="window rows", memory_budget=settings.memory_budget)
    return altered, [unit_scores[0] for unit_scores in scores], [unit_scores[1:] for unit_scores in scores]


def _untouched(row: int, altered_row: int) -> list:
    return []


def _window_rows(model: Model, window: tuple[int, ...], blocks: str) -> RowPatches:
    return lambda row, altered_row: window_patches(model, window, row, altered_row, blocks)


def serial_window_scores(model: Model, scorer: ClipScorer, unit: Unit, settings: SearchSettings) -> list[float]:
    """What the reference does: the altered prompt's conditioning computed once, then one generation per window
    with the window layers' conditioning replaced (conditional half). A DiT's window blocks read a text stream
    that changes with the image and step, so there each window is one generation of [altered, original] with
    the original row's window blocks restored from the altered row."""
    layers = window_layers(model, settings.blocks)
    settings.check(len(layers))
    dit = model.spec.denoiser != "unet"
    context = None if dit else cross_attention_context(model, unit.altered)
    scores = []
    for window in windows(len(layers), settings.m):
        if dit:
            patches = window_patches(model, window, 1, 0, settings.blocks)
            images = generate(model, [unit.altered, unit.prompt], [unit.seed] * 2, steps=settings.steps,
                              guidance=settings.guidance, patches=patches)[1:]
        else:
            images = generate(model, [unit.prompt], [unit.seed], steps=settings.steps, guidance=settings.guidance,
                              patches=window_replace_patches(window, context))
        scores.append(scorer.score(images, [unit.text]).item())
    return scores


def search(
    model: Model, scorer: ClipScorer, units: Sequence[Unit], settings: SearchSettings, progress: bool = False
) -> pd.DataFrame:
    """One row per unit x window: `window` (index = start layer), `layers` (the window's cross-attention layer
    indices, a list) and their module `names` (a list), `score` and the unit's
    `score_original` and `score_altered`; `effect` = how far the window moves the score in the objective's
    direction from the original (positive = towards the altered prompt)."""
    altered, original, window_scores = batched_window_scores(model, scorer, units, settings, progress)
    layers = window_layers(model, settings.blocks)
    all_windows = windows(len(layers), settings.m)
    sign = -1.0 if settings.objective == "lower" else 1.0
    rows = []
    for unit, a, o, scores in zip(units, altered, original, window_scores, strict=True):
        for window, score in zip(all_windows, scores, strict=True):
            rows.append({
                "prompt": unit.prompt, "altered": unit.altered, "text": unit.text, "seed": unit.seed,
                "window": window[0], "layers": list(window),
                "names": [layers[k] for k in window],
                "score": score, "score_original": o, "score_altered": a, "effect": sign * (score - o),
            })
    return pd.DataFrame(rows)
