"""`localize trace`: causal tracing of a prompt set, with its effects table, heatmaps and summary.

Its config schema and checks, importable without torch (the command line checks a config before any model
loads); the run itself, and what it writes: `causal_tracing.run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from causal_tracing.settings import TEXT_KINDS, TraceSettings, Unit, check_kinds
from localize.checks import check_seeds
from localize.config import PromptJobConfig, settings_from
from localize.jobs import Job
from localize.stats import check_interval_settings


@dataclass
class NoiseConfig:
    """Corruption noise: `scale` x the attributes' embedding std, or the absolute `std` when given."""

    scale: float = 3.0
    std: float | None = None


@dataclass
class TraceJob(PromptJobConfig):
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    step_range: list[int] | None = None  # [start, stop) denoising steps where UNet states are restored
    unet_kinds: list[str] | None = None  # denoiser state kinds; None: all the model's (UNet or DiT)
    text_kinds: list[str] = field(default_factory=lambda: list(TEXT_KINDS))
    min_drop: float = 1.0
    top: int = 5


def settings_of(cfg: DictConfig) -> TraceSettings:
    return settings_from(cfg, TraceSettings, {"noise_scale": "noise.scale", "noise_std": "noise.std"})


def units_of(cfg: DictConfig) -> list[Unit]:
    """Every prompt of the set with every seed; the scored text defaults to the attribute."""
    return [Unit(item.prompt, item.attribute, item.text or item.attribute, int(seed))
            for item in cfg.prompts.entries for seed in cfg.seeds]


def check_trace(cfg: DictConfig) -> None:
    settings_of(cfg).check()
    check_kinds(cfg.unet_kinds, cfg.text_kinds)
    check_interval_settings(cfg.confidence, cfg.resamples)
    if not cfg.prompts.entries:
        raise ValueError(f"prompt set {cfg.prompts.name!r} has no entries")
    check_seeds(cfg.seeds)


JOB = Job(TraceJob, "causal_tracing.run:run_trace", check=check_trace)
