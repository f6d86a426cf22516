"""`localize trace`'s run (its config and checks: `causal_tracing.job`).

Writes into the job's output directory: `effects.parquet` (one row per state key: mean indirect effect and
bootstrap CI), `heatmap_text_encoder_E.png` (token roles), `heatmap_text_encoder_E_prompt_P.png` (each
prompt's tokens), `heatmap_unet.png`, `summary.txt`, and last `results.parquet`
(one row per prompt x seed x state x token, config values as columns) with `config.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from causal_tracing.effects import state_effects, summary_text
from causal_tracing.figures import prompt_token_heatmaps, text_encoder_heatmaps, unet_heatmap
from causal_tracing.job import settings_of, units_of
from causal_tracing.tracing import trace
from localize.loading import model_from_config, scorer_from_config
from localize.results import atomic_write, write_results


def run_trace(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    model = model_from_config(cfg.model)
    scorer = scorer_from_config(cfg.scorer, model.device)
    table = trace(model, scorer, units_of(cfg), settings_of(cfg), cfg.unet_kinds, cfg.text_kinds,
                  progress=cfg.progress)
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
