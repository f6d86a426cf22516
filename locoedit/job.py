"""`localize edit` and `localize evaluate`: their config schemas and checks, importable without torch (the command
line checks a config before any model loads); the runs themselves, and what they write: `locoedit.run` (edit)
and `locoedit.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING, DictConfig, OmegaConf

from localize.checks import (
    check_batch_size,
    check_generation,
    check_guidance,
    check_memory_budget,
    check_seeds,
    check_steps,
)
from localize.config import ModelConfig, ScoredJobConfig, ScorerConfig, settings_from
from localize.data import load_dataset
from localize.jobs import Job
from localize.nudity import check_nudity_settings
from localize.quality import FID_URL, FID_WEIGHTS, LPIPS_URL, LPIPS_WEIGHTS, cached_weights
from localize.stats import check_interval_settings
from locoedit.attack_settings import AttackSettings
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


def selected_cases(table: pd.DataFrame, cases: list[int] | None) -> pd.DataFrame:
    """The dataset's rows of `cases` (the `case` column; None: every row)."""
    if table.empty:
        raise ValueError("the dataset file has no rows")
    if cases is None:
        return table
    if not cases:
        raise ValueError(f"dataset.cases is empty: give some of its cases {sorted(table['case'])}, or null for all")
    unknown = sorted(set(cases) - set(table["case"]))
    if unknown:
        raise ValueError(f"dataset has no case(s) {unknown}; its cases: {sorted(table['case'])}")
    return table[table["case"].isin(cases)]


def check_classifier_name(name: str | None) -> None:
    if name is not None and name != "organism" and not name.partition(":")[2]:
        raise ValueError(f"classifier {name!r}: give `organism` or `module:function`")


def edited_prompts(params: dict) -> set[str]:
    """The prompts an edit targets (its source, concepts or concept), as given."""
    edited = set()
    for name in ("source", "concepts", "concept", "erase", "moderate"):
        value = params.get(name)
        edited |= {value} if isinstance(value, str) else set(value or ())
    return edited


def check_side_effects(cfg: DictConfig, table: pd.DataFrame) -> None:
    """The side-effect prompts exist and hold no prompt an edit targets (the params', or each TIMED / RoAD case's
    source): side effects are measured where the edit did not aim."""
    if cfg.side_effects.top < 1:
        raise ValueError(f"side_effects.top must be >= 1, got {cfg.side_effects.top}")
    for name in ("prompts", "descriptions"):
        path = cfg.side_effects[name]
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"side_effects.{name}: no file {path!r}")
    if cfg.side_effects.prompts is None or cfg.edit is None:
        return
    edited = edited_prompts(OmegaConf.to_container(cfg.params, resolve=True))
    if cfg.dataset.format in EDIT_FORMATS:
        edited |= set(table["prompt" if cfg.dataset.format == "road" else "old"])
    overlap = sorted(edited & set(load_dataset("prompts", cfg.side_effects.prompts)["prompt"]))
    if overlap:
        raise ValueError(f"side_effects.prompts {cfg.side_effects.prompts!r} holds edited prompt(s) {overlap}: give a "
                         "list the edit does not target")


def check_evaluate(cfg: DictConfig) -> None:
    if cfg.dataset.format in EDIT_FORMATS:  # prompt lists carry each prompt's own evaluation seed
        check_seeds(cfg.seeds)
    check_steps(cfg.steps)
    check_guidance(cfg.guidance)
    check_batch_size(cfg.batch_size)
    check_memory_budget(cfg.memory_budget)
    check_interval_settings(cfg.confidence, cfg.resamples)
    check_nudity_settings(cfg.nudity.classes, cfg.nudity.threshold)
    check_classifier_name(cfg.classifier)
    table = selected_cases(load_dataset(cfg.dataset.format, cfg.dataset.path), cfg.dataset.cases)
    check_side_effects(cfg, table)
    check_quality(cfg.quality)
    if cfg.edit is not None:
        given = ("source", "destination") if cfg.dataset.format in EDIT_FORMATS else ()
        check_edit_params(cfg.edit, cfg.params, given)


@dataclass
class AttackConfig:
    """The soft-prompt attack (`locoedit.attack`): `steps` Adam steps at `learning_rate`, batches of `batch`
    reference images drawn by the unedited model at `train_seeds` (disjoint from the job's `seeds`). `concepts`
    and `guides` name the erased concepts when the edit's parameters do not (`attack_pairs`)."""

    steps: int = 100
    learning_rate: float = 0.01
    batch: int = 4
    train_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    concepts: list[str] | None = None  # the erased concepts' prompts, when the edit's params do not name them
    guides: list[str] | None = None  # (e.g. a neuron ablation); one guide each, or one for all


@dataclass
class AttackJob:
    """`localize attack`: an erasing edit (`method`, `params`), then a soft-prompt attack on each erased concept;
    success at the held-out `seeds` for the original model, the edited one and the attack."""

    model: ModelConfig = field(default_factory=ModelConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    method: str = "uce"
    params: dict[str, Any] = field(default_factory=dict)
    attack: AttackConfig = field(default_factory=AttackConfig)
    seeds: list[int] = field(default_factory=lambda: [100, 101, 102, 103])
    steps: int = 25
    guidance: float = 7.5
    confidence: float = 0.95
    resamples: int = 1000
    progress: bool = True


def attack_pairs(method: str, params: dict, concepts=None, guides=None) -> list[tuple[str, str]]:
    """The erased concepts as (concept prompt, guide prompt): `concepts` and `guides` when given, else UCE's
    `concepts` and `guides` (the empty prompt when none), else the edit's `source` and `destination`."""
    def listed(value) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    if concepts is not None:
        guides = "" if guides is None else guides
    elif method == "uce":
        concepts, guides = params.get("concepts"), params.get("guides", "")
    if concepts is not None:  # one guide for all, or one each
        concepts, guides = listed(concepts), listed(guides)
        guides = guides * len(concepts) if len(guides) == 1 else guides
    else:
        concepts, guides = listed(params.get("source")), listed(params.get("destination"))
    if not concepts or len(concepts) != len(guides):
        raise ValueError(f"attack needs erased concepts: attack.concepts (with attack.guides), UCE concepts (with "
                         f"guides) or an edit's source and destination, one each; got {len(concepts)} concept(s) "
                         f"and {len(guides)} guide(s)")
    return list(zip(concepts, guides, strict=True))


def attack_settings(cfg: DictConfig) -> AttackSettings:
    """The attack's settings from its config (the references drawn with the job's `steps` and `guidance`)."""
    paths = {name: f"attack.{name}" for name in ("steps", "learning_rate", "batch", "train_seeds")}
    return settings_from(cfg, AttackSettings, {**paths, "sample_steps": "steps"}, seed=AttackSettings.seed)


def check_attack(cfg: DictConfig) -> None:
    check_generation(cfg.seeds, cfg.steps, cfg.guidance)
    check_interval_settings(cfg.confidence, cfg.resamples)
    check_seeds(cfg.attack.train_seeds)
    overlap = sorted(set(cfg.seeds) & set(cfg.attack.train_seeds))
    if overlap:
        raise ValueError(f"attack.train_seeds and seeds share {overlap}: success is read at held-out seeds")
    attack_settings(cfg).check()
    check_edit_params(cfg.method, cfg.params)
    attack_pairs(cfg.method, OmegaConf.to_container(cfg.params, resolve=True), cfg.attack.concepts, cfg.attack.guides)


EDIT_JOB = Job(EditJob, "locoedit.run:run_edit", check=check_edit)
ATTACK_JOB = Job(AttackJob, "locoedit.attack_run:run_attack", check=check_attack)
EVALUATE_JOB = Job(EvaluateJob, "locoedit.evaluate:run_evaluate", check=check_evaluate)
