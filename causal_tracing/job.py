"""`localize trace`: causal tracing of a prompt set, with its effects table, heatmaps and summary.

Writes into the job's output directory: `effects.parquet` (one row per state key: mean indirect effect and
bootstrap CI), `heatmap_text_encoder_E.png` (token roles), `heatmap_text_encoder_E_prompt_P.png` (each
prompt's tokens), `heatmap_unet.png`, `summary.txt`, and last `results.parquet`
(one row per prompt x seed x state x token, config values as columns) with `config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from causal_tracing.effects import state_effects, summary_text
from causal_tracing.figures import prompt_token_heatmaps, text_encoder_heatmaps, unet_heatmap
from causal_tracing.states import TEXT_KINDS, UNET_KINDS, check_kinds
from causal_tracing.tracing import TraceSettings, Unit, trace
from localize.config import PromptJobConfig
from localize.jobs import Job
from localize.loading import model_from_config, scorer_from_config
from localize.results import atomic_write, write_results
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
    unet_kinds: list[str] = field(default_factory=lambda: list(UNET_KINDS))
    text_kinds: list[str] = field(default_factory=lambda: list(TEXT_KINDS))
    min_drop: float = 1.0
    top: int = 5


def units_of(cfg: DictConfig) -> list[Unit]:
    """Every prompt of the set with every seed; the scored text defaults to the attribute."""
    if not cfg.prompts.entries:
        raise ValueError(f"prompt set {cfg.prompts.name!r} has no entries")
    if not cfg.seeds:
        raise ValueError("seeds is empty: give at least one seed")
    return [Unit(item.prompt, item.attribute, item.text or item.attribute, int(seed))
            for item in cfg.prompts.entries for seed in cfg.seeds]


def run_trace(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    settings = TraceSettings(
        steps=cfg.steps, guidance=cfg.guidance, noise_scale=cfg.noise.scale, noise_std=cfg.noise.std,
        step_range=tuple(cfg.step_range) if cfg.step_range is not None else None, batch_size=cfg.batch_size,
        min_drop=cfg.min_drop,
    )
    settings.check()
    check_kinds(cfg.unet_kinds, cfg.text_kinds)
    check_interval_settings(cfg.confidence, cfg.resamples)
    units = units_of(cfg)
    model = model_from_config(cfg.model)
    scorer = scorer_from_config(cfg.scorer, model.device)
    table = trace(model, scorer, units, settings, cfg.unet_kinds, cfg.text_kinds, progress=cfg.progress)
    effects = state_effects(table, cfg.confidence, cfg.resamples)
    title = f"{cfg.prompts.name} ({cfg.prompts.kind}) on {cfg.model.name_or_path}"
    atomic_write(out_dir / "effects.parquet", lambda tmp: effects.to_parquet(tmp, index=False))
    text_encoder_heatmaps(effects, title, out_dir)
    prompt_token_heatmaps(table, title, out_dir)
    unet_heatmap(effects, title, out_dir)
    summary = summary_text(table, effects, f"causal tracing: {title}", cfg.confidence, cfg.top)
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(summary))
    print(summary, end="")
    write_results(table, cfg, out_dir)
    return table


JOB = Job(TraceJob, run_trace)
