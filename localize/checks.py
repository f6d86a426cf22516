"""Checks of the values every generating call shares (seeds, steps, guidance), importable without torch: the
jobs' config checks and `generate` use the same ones, so a bad value gets the same message everywhere."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed wraps larger and negative values onto others


def check_seeds(seeds: Sequence) -> None:
    """Non-empty, each an integer in 0..2**63-1 (a fractional seed would be truncated, a negative one wrapped)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must be integers in 0..2**63-1; got {bad}")


def check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"steps must be an integer, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def check_guidance(guidance) -> None:
    """A finite number >= 0; classifier-free guidance runs when it is above 1."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0 (classifier-free guidance runs above 1), got "
                         f"{guidance!r}")


def check_generation(seeds: Sequence, steps, guidance) -> None:
    check_seeds(seeds)
    check_steps(steps)
    check_guidance(guidance)


AUTO = "auto"  # batch_size: rows per batch from the device's free memory (`localize.memory`)


def check_batch_size(batch_size, minimum: int = 1, why: str = "") -> None:
    """'auto' or an integer >= `minimum` (`why` says what a batch must hold)."""
    if batch_size == AUTO:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < minimum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"batch_size must be 'auto' (from the device's free memory) or an integer >= {minimum}"
                         f"{reason}, got {batch_size!r}")


def check_memory_budget(memory_budget) -> None:
    """None (the device's free memory) or a finite number of GiB > 0."""
    if memory_budget is None:
        return
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real) \
            or not math.isfinite(memory_budget) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a number of GiB > 0, or null for the device's free memory; got "
                         f"{memory_budget!r}")
