"""Shared by the `bench_*.py` scripts: wall time of a call, with CUDA work finished on both sides."""

from __future__ import annotations

import time

import torch


def timed(function):
    """`(function(), seconds)`."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start
