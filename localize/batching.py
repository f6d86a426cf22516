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

from localize.generation import generate
from localize.memory import run_in_batches
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


def next_batch(pieces: list[Piece], batch_size: int) -> tuple[list[Piece], list[Piece]]:
    """The first batch `pack_rows` makes of `pieces`, and the pieces left after it: a piece the batch split
    continues whole, so packing what is left at a larger size never repeats a source row needlessly."""
    batch = pack_rows(pieces, batch_size)[0]
    unit, taken = batch[-1]
    whole = pieces[len(batch) - 1][1]
    rest = pieces[len(batch):]
    return batch, ([(unit, whole[len(taken):])] if len(taken) < len(whole) else []) + rest


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
    on the first batch with one step, within `memory_budget` GiB); after an out-of-memory error the rows not yet
    scored are packed again at half the batch. A row's score depends only on its unit and patches, not on its
    batch."""
    source_scores = [0.0] * len(units)
    row_scores = [[0.0] * len(unit.row_patches) for unit in units]

    def run(batch: list[Piece], keep: bool = True) -> int:
        """Generate and score `batch`; `keep` False: one denoising step, nothing recorded (the memory probe)."""
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
        images = generate(model, prompts, seeds, steps=steps if keep else 1, guidance=guidance, patches=patches)
        scores = scorer.score(images, [units[u].text for u, _ in slots]).tolist()
        for (u, i), score in zip(slots, scores, strict=True) if keep else ():
            if i is None:
                source_scores[u] = score
            else:
                row_scores[u][i] = score
        return len(prompts)

    remaining = [(u, range(len(unit.row_patches))) for u, unit in enumerate(units)]
    with tqdm(total=sum(len(unit.row_patches) for unit in units), desc=desc, unit="row", disable=not progress) as bar:

        def step(size: int) -> int:  # the next batch of at most `size` rows
            nonlocal remaining
            batch, rest = next_batch(remaining, size)
            rows = run(batch)
            remaining = rest
            bar.update(sum(len(piece) for _, piece in batch))  # patched rows
            return rows

        run_in_batches(step, lambda: sum(len(piece) + 1 for _, piece in remaining), batch_size, model.device,
                       lambda size: run(next_batch(remaining, size)[0], keep=False), memory_budget, sizes=(2, 4),
                       minimum=2)
    return source_scores, row_scores
