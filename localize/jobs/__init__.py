"""Command-line jobs, found through the `localize.jobs` entry points so `localize` imports no method package.

Each entry point names a `Job`: its config schema (registered as `base_<name>`, under `conf/<name>.yaml`) and
its `run(cfg, out_dir)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from omegaconf import DictConfig


@dataclass(frozen=True)
class Job:
    schema: type
    run: Callable[[DictConfig, Path], object]


def job_names() -> list[str]:
    return sorted(point.name for point in entry_points(group="localize.jobs"))


def load_jobs() -> dict[str, Job]:
    """Every installed job, by name."""
    return {point.name: point.load() for point in entry_points(group="localize.jobs")}
