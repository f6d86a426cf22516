"""Packing units' rows into batches."""

import pytest

from localize.batching import next_batch, pack_rows


@pytest.mark.parametrize("batch_size", [2, 3, 7, 64])
def test_batches_hold_every_row_once_and_fit(batch_size):
    sizes = [5, 1, 12, 3]
    batches = pack_rows([(u, range(size)) for u, size in enumerate(sizes)], batch_size)
    seen = {(u, i) for batch in batches for u, indices in batch for i in indices}
    assert seen == {(u, i) for u, size in enumerate(sizes) for i in range(size)}
    assert sum(len(indices) for batch in batches for _, indices in batch) == sum(sizes)
    assert all(sum(len(indices) + 1 for _, indices in batch) <= batch_size for batch in batches)


def test_batch_size_below_two_is_an_error():
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        pack_rows([(0, range(3))], 1)


def test_pieces_of_a_unit_keep_their_row_indices():
    batches = pack_rows([(0, range(4, 9)), (1, range(2, 3))], 4)
    assert [[(u, list(rows)) for u, rows in batch] for batch in batches] == [[(0, [4, 5, 6])], [(0, [7, 8])],
                                                                              [(1, [2])]]


def test_what_a_batch_leaves_packs_at_a_larger_size_as_if_never_split():
    """The probe takes small batches first; what is left must not keep their boundaries, or every later batch
    repeats a unit's source row once per fragment."""
    pieces = [(0, range(10)), (1, range(3))]
    batch, rest = next_batch(pieces, 2)
    assert batch == [(0, range(0, 1))] and rest == [(0, range(1, 10)), (1, range(3))]
    batch, rest = next_batch(rest, 4)
    assert batch == [(0, range(1, 4))] and rest == [(0, range(4, 10)), (1, range(3))]
    assert pack_rows(rest, 64) == [[(0, range(4, 10)), (1, range(3))]]  # one source row per unit
    assert next_batch([(0, range(2)), (1, range(1))], 3) == ([(0, range(2))], [(1, range(1))])
