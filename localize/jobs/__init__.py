"""Command-line jobs, found through the `localize.jobs` entry points so `localize` imports no method package.

Each entry point names a `Job`: its config schema (registered as `base_<name>`, under `conf/<name>.yaml`), its
`run(cfg, out_dir)`, and optionally the config key a bare first argument sets (`localize report DIR`).
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
    positional: str | None = None


def job_names() -> list[str]:
    return sorted(point.name for point in entry_points(group="localize.jobs"))


def load_jobs() -> dict[str, Job]:
    """Every installed job, by name."""
    return {point.name: point.load() for point in entry_points(group="localize.jobs")}
