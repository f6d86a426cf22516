"""Packing many configurations of many units into batches of rows, each batch holding a unit's source row.

A unit (a prompt x seed) has one source row (what restorations copy from, ROME's row 0) and `size` patched rows.
`pack_rows` fills batches of at most `batch_size` rows; a unit split across batches repeats its source row.
`score_packed` generates and CLIP-scores such units: the loop causal tracing, LOCOGEN and the neuron curve share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from localize.generation import generate
from localize.model import Model
from localize.patches import Patch
from localize.scoring import ClipScorer


def pack_rows(sizes: list[int], batch_size: int) -> list[list[tuple[int, range]]]:
    """Batches as lists of (unit, indices of its patched rows); each entry also costs the unit's source row."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (a source row and a patched row), got {batch_size}")
    batches, batch, free = [], [], batch_size
    for unit, size in enumerate(sizes):
        start = 0
        while start < size:
            if free < 2:
                batches.append(batch)
                batch, free = [], batch_size
            take = min(size - start, free - 1)
            batch.append((unit, range(start, start + take)))
            free -= take + 1
            start += take
    return batches + ([batch] if batch else [])


RowPatches = Callable[[int, int], list[Patch]]  # (the row's batch index, its source row's) -> its patches


@dataclass(frozen=True)
class PackedUnit:
    """One unit's rows, all with `seed` and scored against `text`: the source row (`source_prompt`), then one
    patched row of `prompt` per entry of `row_patches`."""

    source_prompt: str
    prompt: str
    seed: int
    text: str
    row_patches: Sequence[RowPatches]


def score_packed(
    model: Model,
    scorer: ClipScorer,
    units: Sequence[PackedUnit],
    batch_size: int,
    steps: int,
    guidance: float,
    progress: bool = False,
    desc: str = "batches",
) -> tuple[list[float], list[list[float]]]:
    """Generate every unit's rows, packed by `pack_rows`, and CLIP-score them: the score of each unit's source
    row, and of each of its patched rows."""
    source_scores = [0.0] * len(units)
    row_scores = [[0.0] * len(unit.row_patches) for unit in units]
    for batch in tqdm(pack_rows([len(u.row_patches) for u in units], batch_size), desc=desc, disable=not progress):
        prompts, seeds, patches, slots = [], [], [], []
        for u, indices in batch:
            unit, source_row = units[u], len(prompts)
            prompts.append(unit.source_prompt)
            seeds.append(unit.seed)
            slots.append((u, None))
            for i in indices:
                patches += unit.row_patches[i](len(prompts), source_row)
                prompts.append(unit.prompt)
                seeds.append(unit.seed)
                slots.append((u, i))
        images = generate(model, prompts, seeds, steps=steps, guidance=guidance, patches=patches)
        scores = scorer.score(images, [units[u].text for u, _ in slots]).tolist()
        for (u, i), score in zip(slots, scores, strict=True):
            if i is None:
                source_scores[u] = score
            else:
                row_scores[u][i] = score
    return source_scores, row_scores
