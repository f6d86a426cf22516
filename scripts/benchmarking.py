"""Shared by the `bench_*.py` scripts: their sampler and device settings, and the wall time of a call with CUDA
work finished on both sides."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class BenchSettings:
    """The organism's sampler, batch size and device, as the benchmarks' Hydra config fields."""

    seed: int = 0
    steps: int = 25
    guidance: float = 7.5
    batch_size: int = 64
    device: str = "cpu"
    dtype: str | None = None


def timed(function):
    """`(function(), seconds)`."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start
