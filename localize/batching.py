"""Packing many configurations of many units into batches of rows, each batch holding a unit's source row.

A unit (a prompt x seed) has one source row (what restorations copy from, ROME's row 0) and `size` patched rows.
`pack_rows` fills batches of at most `batch_size` rows; a unit split across batches repeats its source row, so a
batch is self-contained (restorations copy from a row of the same batch).
`score_packed` generates and CLIP-scores such units: the loop causal tracing, LOCOGEN and the neuron curve share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from localize.checks import AUTO
from localize.generation import generate
from localize.memory import halving_on_oom, rows_that_fit
from localize.model import Model
from localize.patches import Patch
from localize.scoring import ClipScorer

Piece = tuple[int, range]  # (unit, indices of its patched rows); each piece in a batch also costs a source row


def pack_rows(pieces: list[Piece], batch_size: int) -> list[list[Piece]]:
    """Batches of at most `batch_size` rows: the pieces in order, a piece split where a batch fills."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (a source row and a patched row), got {batch_size}")
    batches, batch, free = [], [], batch_size
    for unit, rows in pieces:
        start = 0
        while start < len(rows):
            if free < 2:
                batches.append(batch)
                batch, free = [], batch_size
            take = min(len(rows) - start, free - 1)
            batch.append((unit, rows[start:start + take]))
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
    batch_size: int | str,
    steps: int,
    guidance: float,
    progress: bool = False,
    desc: str = "batches",
    memory_budget: float | None = None,
) -> tuple[list[float], list[list[float]]]:
    """Generate every unit's rows, packed by `pack_rows`, and CLIP-score them: the score of each unit's source
    row, and of each of its patched rows. `batch_size`: rows per batch, or "auto" (`localize.memory`: measured
    on the first batches, within `memory_budget` GiB); after an out-of-memory error the rows not yet scored are
    packed again at half the batch. A row's score depends only on its unit and patches, not on its batch."""
    source_scores = [0.0] * len(units)
    row_scores = [[0.0] * len(unit.row_patches) for unit in units]

    def run(batch: list[Piece]) -> None:
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

    remaining = [(u, range(len(unit.row_patches))) for u, unit in enumerate(units)]
    rows = sum(len(piece) + 1 for _, piece in remaining)
    with tqdm(total=rows - len(units), desc=desc, unit="row", disable=not progress) as bar:  # patched rows
        if batch_size == AUTO and rows <= 4:
            batch_size = max(rows, 2)
        elif batch_size == AUTO:  # probed on the first batches of 2 and of 4 rows; the second one counts
            batch_size = rows_that_fit(lambda n: run(pack_rows(remaining, n)[0]), model.device, (2, 4),
                                       memory_budget, minimum=2)
            first, *later = pack_rows(remaining, 4)
            remaining = [piece for batch in later for piece in batch]
            bar.update(sum(len(piece) for _, piece in first))

        def run_remaining(size: int) -> None:
            nonlocal remaining
            batches = pack_rows(remaining, size)
            for done, batch in enumerate(batches, 1):
                run(batch)
                remaining = [piece for later in batches[done:] for piece in later]
                bar.update(sum(len(piece) for _, piece in batch))

        halving_on_oom(run_remaining, batch_size, minimum=2)
    return source_scores, row_scores
