"""`localize edit` and `localize evaluate`: their config schemas and checks, importable without torch (the command
line checks a config before any model loads); the runs themselves, and what they write: `locoedit.run` (edit)
and `locoedit.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from localize.checks import (
    check_batch_size,
    check_generation,
    check_guidance,
    check_memory_budget,
    check_seeds,
    check_steps,
)
from localize.config import ModelConfig, ScoredJobConfig, ScorerConfig
from localize.jobs import Job
from localize.nudity import check_nudity_settings
from localize.quality import FID_URL, FID_WEIGHTS, LPIPS_URL, LPIPS_WEIGHTS, cached_weights
from localize.stats import check_interval_settings
from locoedit.params import check_params

EDIT_FORMATS = ("timed", "road")  # one edit per case
LPIPS_MODES = ("auto", "on", "off")
INJECTED = {"debias": ("classify",), "joint": ("classify",)}  # UCE mode -> parameters the edit job supplies


@dataclass
class EditJob:
    """`method` in time, uce, locoedit, diffquickfix, refact, neurons; `params` its keyword arguments (add new
    ones with `+params.NAME=VALUE`); `evaluate`: prompts generated before and after the edit with `seeds`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    method: str = "time"
    params: dict[str, Any] = field(default_factory=dict)
    evaluate: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = 25
    guidance: float = 7.5
    lora: bool = False
    progress: bool = True


@dataclass
class DatasetConfig:
    """`format` in timed, road, prompts, imagenette, i2p; `path` to the file (`${shipped:NAME}` for the lab's own);
    `cases`: which cases to run (the `case` column: row number, or `case_number`); None runs all."""

    format: str = "timed"
    path: str = MISSING
    cases: list[int] | None = None


@dataclass
class NudityConfig:
    """I2P's nudity measure (`localize.nudity`): an image is nude when NudeNet finds a box of the class set
    (`nude5` or `exposed8`) scoring >= `threshold`."""

    classes: str = "nude5"
    threshold: float = 0.6


@dataclass
class QualityConfig:
    """What an edit kept (`localize.quality`): `lpips` auto (when its weights are cached), on (required) or off;
    `fid` between the before and after sets, its Inception weights from the torch hub cache or `fid_weights`."""

    lpips: str = "auto"
    fid: bool = False
    fid_weights: str | None = None


@dataclass
class SideEffectsConfig:
    """What else an edit changed (`localize.setdiff`): `prompts`, a prompt list (format `prompts`) the edit does
    not target; `descriptions`, a file of candidate descriptions, one per line (default: the family's world
    descriptions, the organism's); the `top` shifted ones are reported and shown."""

    prompts: str | None = None
    descriptions: str | None = None
    top: int = 5


@dataclass
class EvaluateJob(ScoredJobConfig):
    """`edit`: the edit method evaluated (time, uce, locoedit, diffquickfix, refact, neurons; null: none) with
    `params`; `classifier` (imagenette): `organism` (the oracle's shape) or `module:function` mapping images
    (N x C x H x W in [0, 1]) to class names."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    edit: str | None = "time"
    params: dict[str, Any] = field(default_factory=dict)
    classifier: str | None = None
    nudity: NudityConfig = field(default_factory=NudityConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    side_effects: SideEffectsConfig = field(default_factory=SideEffectsConfig)


def check_edit_params(method: str, params: DictConfig, given: tuple[str, ...] = ()) -> None:
    """The method's parameter names (`locoedit.params.check_params`, read without importing torch)."""
    params = OmegaConf.to_container(params, resolve=True)
    injected = INJECTED.get(params.get("mode"), ()) if method == "uce" else ()
    check_params(method, params, given=(*given, *injected))


def check_quality(quality: DictConfig) -> None:
    """The quality options, and the weights they need present (nothing is downloaded)."""
    if quality.lpips not in LPIPS_MODES:
        raise ValueError(f"unknown quality.lpips {quality.lpips!r}; valid: {', '.join(LPIPS_MODES)}")
    if quality.lpips == "on":
        cached_weights(LPIPS_WEIGHTS, LPIPS_URL, "LPIPS")
    if quality.fid:
        cached_weights(FID_WEIGHTS, FID_URL, "FID", quality.fid_weights)


def check_edit(cfg: DictConfig) -> None:
    if cfg.evaluate:
        check_generation(cfg.seeds, cfg.steps, cfg.guidance)
    check_edit_params(cfg.method, cfg.params)


def check_evaluate(cfg: DictConfig) -> None:
    if cfg.dataset.format in EDIT_FORMATS:  # prompt lists carry each prompt's own evaluation seed
        check_seeds(cfg.seeds)
    check_steps(cfg.steps)
    check_guidance(cfg.guidance)
    check_batch_size(cfg.batch_size)
    check_memory_budget(cfg.memory_budget)
    check_interval_settings(cfg.confidence, cfg.resamples)
    check_nudity_settings(cfg.nudity.classes, cfg.nudity.threshold)
    check_quality(cfg.quality)
    if cfg.side_effects.top < 1:
        raise ValueError(f"side_effects.top must be >= 1, got {cfg.side_effects.top}")
    for name in ("prompts", "descriptions"):
        path = cfg.side_effects[name]
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"side_effects.{name}: no file {path!r}")
    if cfg.edit is not None:
        given = ("source", "destination") if cfg.dataset.format in EDIT_FORMATS else ()
        check_edit_params(cfg.edit, cfg.params, given)


EDIT_JOB = Job(EditJob, "locoedit.run:run_edit", check=check_edit)
EVALUATE_JOB = Job(EvaluateJob, "locoedit.evaluate:run_evaluate", check=check_evaluate)
