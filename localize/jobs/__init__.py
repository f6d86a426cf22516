"""Command-line jobs, found through the `localize.jobs` entry points so `localize` imports no method package.

Each entry point names a `Job`: its config schema (registered as `base_<name>`, under `conf/<name>.yaml`), its
`check(cfg)` of the config alone, its run as `module:function` (imported only when the job runs, so a config is
read and checked in seconds, before torch or any model loads), and optionally the config key a bare first
argument sets (`localize report DIR`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from localize.gpus import FREE, claimed_gpu


def no_check(cfg: DictConfig) -> None:
    """A job whose every value is checked by its schema's types."""


@dataclass(frozen=True)
class Job:
    schema: type
    runner: str  # "module:function", called as function(cfg, out_dir)
    positional: str | None = None
    check: Callable[[DictConfig], None] = no_check

    def run(self, cfg: DictConfig, out_dir: Path) -> object:
        """Check `cfg`, then run the job into `out_dir` (on a GPU of its own with `model.device=cuda:free`)."""
        self.check(cfg)
        module, _, function = self.runner.partition(":")
        runner = getattr(import_module(module), function)
        if OmegaConf.select(cfg, "model.device") != FREE:
            return runner(cfg, out_dir)
        with claimed_gpu():
            return runner(cfg, out_dir)


def job_names() -> list[str]:
    return sorted(point.name for point in entry_points(group="localize.jobs"))


def load_jobs() -> dict[str, Job]:
    """Every installed job, by name."""
    return {point.name: point.load() for point in entry_points(group="localize.jobs")}
