"""`localize locogen`: LOCOGEN's window search over a prompt set.

Writes into the job's output directory: `windows.parquet` (one row per window: mean score and effect with
bootstrap CIs, `chosen`), `layer_curve.png`, `summary.txt`, and last `results.parquet` (one row per prompt x seed
x window, `chosen` marking the chosen window's rows, config values as columns; LOCOEDIT reads its `layers`)
with `config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from localize.config import ModelConfig, PromptSet, ScorerConfig
from localize.jobs import Job
from localize.loading import model_from_config, scorer_from_config
from localize.results import atomic_write, write_results
from locogen.curves import layer_curve, window_summary
from locogen.layer_search import SearchSettings, Unit, make_units, search


@dataclass
class LocogenJob:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptSet = field(default_factory=PromptSet)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    m: int = 2
    objective: str | None = None  # lower | raise; None: raise for facts, lower otherwise
    steps: int = 25
    guidance: float = 7.5
    batch_size: int = 64
    confidence: float = 0.95
    resamples: int = 1000
    progress: bool = True


def objective_of(cfg: DictConfig) -> str:
    return cfg.objective or ("raise" if cfg.prompts.kind == "fact" else "lower")


def units_of(cfg: DictConfig, objective: str) -> list[Unit]:
    """Every entry with every seed; scored against `text` (lower) or `altered_text` (raise)."""
    entries = cfg.prompts.entries
    for entry in entries:
        if entry.altered is None:
            raise ValueError(f"prompt set {cfg.prompts.name!r}: entry {entry.prompt!r} has no altered prompt")
    texts = [(e.text or e.attribute) if objective == "lower" else (e.altered_text or e.altered) for e in entries]
    return make_units([e.prompt for e in entries], [e.altered for e in entries], texts, list(cfg.seeds))


def run_locogen(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    objective = objective_of(cfg)
    settings = SearchSettings(m=cfg.m, steps=cfg.steps, guidance=cfg.guidance, batch_size=cfg.batch_size,
                              objective=objective)
    units = units_of(cfg, objective)
    model = model_from_config(cfg.model)
    settings.check(model)
    scorer = scorer_from_config(cfg.scorer, model.device)
    table = search(model, scorer, units, settings, progress=cfg.progress)
    summary = window_summary(table, cfg.confidence, cfg.resamples)
    chosen = summary[summary["chosen"]].iloc[0]
    table["chosen"] = table["window"] == chosen["window"]
    title = f"LOCOGEN m={cfg.m}: {cfg.prompts.name} ({cfg.prompts.kind}) on {cfg.model.name_or_path}"
    atomic_write(out_dir / "windows.parquet", lambda tmp: summary.to_parquet(tmp, index=False))
    layer_curve(table, summary, title, objective, out_dir / "layer_curve.png")
    units_table = table.drop_duplicates(["prompt", "seed"])
    text = (f"{title}\nobjective: {objective} the CLIP score; {len(units_table)} units (prompts x seeds)\n"
            f"mean score: original {units_table['score_original'].mean():.2f}, altered "
            f"{units_table['score_altered'].mean():.2f}\n"
            f"chosen window: layers {chosen['layers']} ({chosen['names']})\n"
            f"  score {chosen['score']:.2f} [{chosen['score_ci_low']:.2f}, {chosen['score_ci_high']:.2f}], "
            f"effect {chosen['effect']:.2f} [{chosen['effect_ci_low']:.2f}, {chosen['effect_ci_high']:.2f}]\n"
            + summary[["window", "layers", "score", "effect", "effect_ci_low", "effect_ci_high"]]
            .to_string(index=False, float_format=lambda v: f"{v:.2f}") + "\n")
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(text))
    print(text, end="")
    write_results(table, cfg, out_dir)
    return table


JOB = Job(LocogenJob, run_locogen)
