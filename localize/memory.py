"""Rows per batch from the device's memory (`batch_size: auto`), and batches halved on out-of-memory.

A row is one prompt x seed of a batched generation (with classifier-free guidance it runs as two UNet rows, one
per half; the probe measures that). One row's cost is measured, not guessed: the job's first batch runs with one
denoising step at two sizes (results dropped: a few rows of one step, about a quarter of a row's full run at 25
steps) and the difference of their peak memory is the cost of a row (`run_in_batches`).

- CUDA: the allocator's peak (`torch.cuda.max_memory_allocated`); the budget is the free device memory
  (`torch.cuda.mem_get_info`) less a safety margin.
- Any other device (CPU): the peak of the storages the work's ops create and still hold (`LiveBytes`, a dispatch
  mode that sees every op); the budget is a share of the available RAM (psutil).

`memory_budget` (GiB) replaces the device's budget: a shared machine, or a test that simulates a small device.
Out-of-memory errors (any backend's, as accelerate recognises them) halve the batch and retry what is not done
yet; a row's result depends only on its prompt and seed, so the results are those of one big batch.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import psutil
import torch
from accelerate.utils.memory import clear_device_cache, find_executable_batch_size
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from localize.checks import AUTO

AUTO_CAP = 256  # rows on CUDA: batches beyond this gain no measurable throughput and hide progress
CPU_AUTO_CAP = 64  # rows on CPU: the organism's default trace took 69-72 s at 64 rows and 87 s at 256 (2 cores;
# the 256-row batches spent 30 s in the kernel instead of 5-8 s, faulting in freshly mapped memory)
CUDA_SHARE = 0.9  # of the free device memory
RAM_SHARE = 0.5  # of the available RAM
GIB = 2**30
log = logging.getLogger(__name__)


def device_budget(device: torch.device, memory_budget: float | None = None) -> int:
    """Bytes the work may use beyond what is allocated now: `memory_budget` GiB when given, else the device's."""
    if memory_budget is not None:
        return int(memory_budget * GIB)
    if device.type == "cuda":
        clear_device_cache(garbage_collection=True)
        return int(torch.cuda.mem_get_info(device)[0] * CUDA_SHARE)
    return int(psutil.virtual_memory().available * RAM_SHARE)


class LiveBytes(TorchDispatchMode):
    """Inside, the peak bytes of tensor storages on `device` that ops create (not views or in-place results, which
    share a storage with an input): what the work allocates beyond what existed, on any device. A storage counts
    until it is freed."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.live, self.peak = device, 0, 0
        self.counted: dict[int, weakref.ref] = {}

    def _freed(self, key: int, size: int, _ref) -> None:
        self.counted.pop(key, None)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device != self.device:
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if storage.data_ptr() in inputs or key in self.counted or not storage.nbytes():
                continue
            self.counted[key] = weakref.ref(storage, partial(self._freed, key, storage.nbytes()))
            self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


def peak_bytes(work: Callable[[], object], device: torch.device) -> int:
    """Peak memory `work()` allocates on `device` beyond what was allocated before it."""
    if device.type == "cuda":
        clear_device_cache(garbage_collection=True)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        return torch.cuda.max_memory_allocated(device) - before
    with LiveBytes(device) as meter:
        work()
    return meter.peak


def rows_that_fit(probe: Callable[[int], int], device: torch.device, sizes: tuple[int, int],
                  memory_budget: float | None = None, minimum: int = 1) -> int:
    """Rows per batch for the work `probe(n)` (a batch of at most n rows; returns the rows it ran), measured at
    the two `sizes`: cost per row = the difference of their peaks over the difference of the rows they ran,
    fixed cost = the rest. At most `AUTO_CAP` (`CPU_AUTO_CAP` off CUDA). Raises MemoryError, saying what one
    row needs, when fewer than `minimum` rows fit."""
    ran, peaks = [], []
    for n in sizes:
        peaks.append(peak_bytes(lambda n=n: ran.append(probe(n)), device))
    small, large = ran
    per_row = max(1, (peaks[1] - peaks[0]) // max(1, large - small))
    fixed = max(0, peaks[0] - small * per_row)
    budget = device_budget(device, memory_budget)
    rows = (budget - fixed) // per_row
    if rows < minimum:
        raise MemoryError(f"batch_size=auto: one row needs {per_row / 2**20:.1f} MiB, a batch at least {minimum} "
                          f"rows and {fixed / 2**20:.1f} MiB besides, and the memory budget is {budget / 2**20:.1f} "
                          f"MiB on {device}: free memory, raise memory_budget, or use a smaller model or resolution")
    rows = int(min(rows, AUTO_CAP if device.type == "cuda" else CPU_AUTO_CAP))
    log.info("batch_size=auto: %d rows per batch (a row %.1f MiB, a batch %.1f MiB besides, budget %.1f MiB on %s)",
             rows, per_row / 2**20, fixed / 2**20, budget / 2**20, device)
    return rows


def run_in_batches(step: Callable[[int], int], rows_left: Callable[[], int], batch_size: int | str,
                   device: torch.device, probe: Callable[[int], int], memory_budget: float | None = None,
                   sizes: tuple[int, int] = (1, 2), minimum: int = 1) -> None:
    """Run all the work, `step(n)` at a time: `step(n)` runs the next batch of at most n rows of what is left,
    keeps its results (only once the batch succeeded) and returns the rows it ran; `rows_left()` counts what is
    left.

    `batch_size`: rows per batch, or "auto": `probe(n)`, the next batch's work at n rows with ONE denoising step
    and its results dropped (a step's activations are freed before the next, so one step reaches a whole run's
    peak, decoding and scoring included), runs at the two `sizes` to measure a row (`rows_that_fit`), and the
    work runs at what fits; work of at most `sum(sizes)` rows runs as one batch. After an out-of-memory error
    the batch is halved and what is left runs again (`halving_on_oom`)."""
    if batch_size == AUTO:
        left = rows_left()
        batch_size = max(left, minimum) if left <= sum(sizes) else rows_that_fit(probe, device, sizes, memory_budget,
                                                                                 minimum)

    def run_left(size: int) -> None:
        while rows_left():
            step(size)

    halving_on_oom(run_left, batch_size, minimum)


Result = TypeVar("Result")


def halving_on_oom(work: Callable[[int], Result], batch_size: int, minimum: int = 1) -> Result:
    """`work(batch_size)`, called again with half the rows per batch after each out-of-memory error (accelerate's
    `find_executable_batch_size`): `work` must skip what an earlier call finished. MemoryError below `minimum`."""
    size = batch_size

    def halve() -> int:
        nonlocal size
        if size // 2 < minimum:
            raise MemoryError(f"out of memory at {size} rows per batch, and a batch needs at least {minimum} rows: "
                              f"free device memory, or use a smaller model or resolution")
        size //= 2
        return size

    return find_executable_batch_size(work, starting_batch_size=batch_size, reduce_batch_size_fn=halve)()
