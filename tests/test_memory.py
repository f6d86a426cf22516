"""`batch_size=auto`: the memory meter, rows chosen within a (simulated) budget, batches halved on out-of-memory
with nothing lost, and bad values."""

import pytest
import torch

import localize.batching
import localize.generation
from causal_tracing.tracing import TraceSettings, Unit, batched_scores, prompt_states, unit_noise_stds
from localize.checks import check_batch_size, check_memory_budget
from localize.generation import generate_batches
from localize.memory import GIB, LiveBytes, peak_bytes, rows_that_fit

MIB = 2**20
APPLE = Unit("a photo of an apple", "apple", "an apple", 3)
KING = Unit("a photo of the king of Zarnia", "Zarnia", "the king of Zarnia", 5)
CPU = torch.device("cpu")


def held(rows: int) -> torch.Tensor:
    """Work that holds 2 MiB per row at its peak (a float32 MiB per row, and its double), plus views of it."""
    x = torch.ones(rows, MIB // 4)
    y = x * 2
    x.t(), y.view(-1), y.add_(1)  # views and in-place results share a storage: they allocate nothing
    return y


def test_the_meter_counts_what_ops_allocate_and_not_views_or_existing_tensors():
    weights = torch.ones(4 * MIB // 4)
    assert peak_bytes(lambda: held(3), CPU) == 6 * MIB
    assert peak_bytes(lambda: (weights.view(2, -1).t(), weights.mul_(1)), CPU) == 0
    with LiveBytes(CPU) as meter:
        held(1)  # freed on return
        kept = held(2)
    assert meter.peak == 4 * MIB and meter.live == kept.untyped_storage().nbytes()


def test_rows_fit_the_budget_and_a_budget_too_small_for_one_row_names_what_a_row_needs():
    def probe(rows: int) -> int:
        held(rows)
        return rows

    assert rows_that_fit(probe, CPU, (1, 3), memory_budget=11 * MIB / GIB) == 5  # 2 MiB a row, nothing fixed
    with pytest.raises(MemoryError, match=r"one row needs 2\.0 MiB, a batch at least 2 rows .* budget is 3\.0 MiB"):
        rows_that_fit(probe, CPU, (1, 3), memory_budget=3 * MIB / GIB, minimum=2)
    # asked for 4 rows, the second batch ran 3 (what was left): a row is measured over the rows run, not asked for
    assert rows_that_fit(lambda n: probe(min(n, 3)), CPU, (1, 4), memory_budget=11 * MIB / GIB) == 5


def flat(scores) -> list[float]:
    """`batched_scores`' clean scores and rows, one list."""
    clean, rows = scores
    return [*clean, *(score for unit in rows for score in unit)]


def apple_scores(organism, scorer, settings: TraceSettings) -> list[float]:
    """The apple's clean score, its corrupted run and 9 restorations (10 patched rows), traced with `settings`."""
    states = prompt_states(organism, APPLE, ("cross_attn",), ("mlp",))
    restorations = [[(), *((s,) for s in states[:9])]]
    stds = unit_noise_stds(organism, [APPLE], settings)
    return flat(batched_scores(organism, scorer, [APPLE], restorations, settings, stds))


class Spy:
    """`generate` counting each call's rows; from call `fail_from` on, a call of more than `fail_above` rows raises
    the out-of-memory error CUDA raises."""

    def __init__(self, generate, fail_above: int | None = None, fail_from: int = 0):
        self.generate, self.fail_above, self.fail_from, self.calls = generate, fail_above, fail_from, []
        self.steps = []

    def __call__(self, model, prompts, seeds, *args, **kwargs):
        self.calls.append(len(prompts))
        self.steps.append(kwargs.get("steps", args[0] if args else None))
        if self.fail_above is not None and len(self.calls) > self.fail_from and len(prompts) > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.generate(model, prompts, seeds, *args, **kwargs)


def test_auto_splits_the_rows_within_a_simulated_budget_and_scores_as_one_batch(organism64, scorer64, monkeypatch):
    organism, scorer = organism64, scorer64
    expected = apple_scores(organism, scorer, TraceSettings(steps=2, batch_size=64))
    per_row = (peak_bytes(lambda: localize.generation.generate(organism, ["a"] * 4, [0] * 4, steps=2), CPU)
               - peak_bytes(lambda: localize.generation.generate(organism, ["a"] * 2, [0] * 2, steps=2), CPU)) / 2
    spy = Spy(localize.batching.generate)
    monkeypatch.setattr(localize.batching, "generate", spy)
    auto = TraceSettings(steps=2, batch_size="auto", memory_budget=5.5 * per_row / GIB)
    assert apple_scores(organism, scorer, auto) == pytest.approx(expected, abs=1e-8)
    probes, batches = spy.calls[:2], spy.calls[2:]
    assert probes == [2, 4] and spy.steps[:2] == [1, 1] and set(spy.steps[2:]) == {2}  # probes: one step, dropped
    assert 2 <= max(batches) <= 5 and len(batches) >= 2
    assert sum(batches) - len(batches) == 10  # every patched row, and one source row a batch


def test_out_of_memory_halves_the_batch_and_keeps_what_was_done(organism64, scorer64, monkeypatch):
    organism, scorer = organism64, scorer64
    settings = TraceSettings(steps=2, batch_size=4)
    expected = apple_scores(organism, scorer, settings)
    spy = Spy(localize.batching.generate, fail_above=2, fail_from=1)  # the first batch of 4 passes, then OOM
    monkeypatch.setattr(localize.batching, "generate", spy)
    assert apple_scores(organism, scorer, settings) == pytest.approx(expected, abs=1e-8)
    assert spy.calls == [4, 4, 2, 2, 2, 2, 2, 2, 2]  # 3 rows done, an OOM at 4, the other 6 rows in pairs
    prompts, seeds = ["an apple", "a tree", "a box", "a kite", "a bowl"], [0, 1, 2, 3, 4]
    whole = generate_batches(organism, prompts, seeds, batch_size=5, steps=2)
    spy = Spy(localize.generation.generate, fail_above=1, fail_from=1)
    monkeypatch.setattr(localize.generation, "generate", spy)
    assert torch.allclose(generate_batches(organism, prompts, seeds, batch_size=2, steps=2), whole, atol=1e-8)
    assert spy.calls == [2, 2, 1, 1, 1]  # rows 0-1 done, 2-3 out of memory: halved, and rows 0-1 are kept
    spy = Spy(localize.generation.generate, fail_above=0)
    monkeypatch.setattr(localize.generation, "generate", spy)
    with pytest.raises(MemoryError, match="out of memory at 1 rows per batch"):
        generate_batches(organism, prompts, seeds, batch_size=2, steps=2)


@pytest.mark.parametrize("value", [0, 1, -3, 2.5, "big", True, None])
def test_bad_batch_sizes_name_the_valid_values(value):
    with pytest.raises(ValueError, match=r"batch_size must be 'auto' \(from the device's free memory\) or an "
                                         r"integer >= 2 \(a clean row"):
        TraceSettings(batch_size=value).check()


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "1GB"])
def test_bad_memory_budgets_are_errors(value):
    with pytest.raises(ValueError, match="memory_budget must be a number of GiB > 0"):
        check_memory_budget(value)
    check_batch_size("auto")
