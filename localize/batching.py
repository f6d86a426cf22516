"""Packing many configurations of many units into batches of rows, each batch holding a unit's source row.

A unit (a prompt x seed) has one source row (what restorations copy from, ROME's row 0) and `size` patched rows.
`pack_rows` fills batches of at most `batch_size` rows; a unit split across batches repeats its source row.
"""

from __future__ import annotations


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
