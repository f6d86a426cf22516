"""`localize locogen`: LOCOGEN's window search over a prompt set.

Writes into the job's output directory: `windows.parquet` (one row per window: mean score and effect with
bootstrap CIs, `chosen`), `layer_curve.png`; with `neurons.enabled`, for the chosen window's layers
`neurons.parquet` (one row per prompt x seed x k x selection), `neuron_scores.parquet` (Welch t of every
candidate neuron) and `neuron_curve.png`; `summary.txt`, and last `results.parquet` (one row per prompt x seed
x window, `chosen` marking the chosen window's rows, config values as columns; LOCOEDIT reads its `layers`)
with `config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from localize.config import PromptJobConfig
from localize.jobs import Job
from localize.loading import model_from_config, scorer_from_config
from localize.results import atomic_write, write_results
from localize.stats import check_interval_settings
from locogen.curves import layer_curve, neuron_curve, neuron_summary, window_summary
from locogen.layer_search import SearchSettings, Unit, make_units, search
from locogen.neurons import NeuronSettings, ablation_curve, check_prompt_counts, score_neurons


@dataclass
class NeuronsConfig:
    """Neuron-level localization in the chosen window: the prompt set's prompts against their `neutral` ones."""

    enabled: bool = True
    ks: list[int] | None = None  # None: 1, 2, 4, ... up to all candidate neurons
    projections: list[str] = field(default_factory=lambda: ["to_k", "to_v"])
    ablation: str = "mean"  # mean (the neutral prompts' mean activation) | zero
    random_draws: int = 3


@dataclass
class LocogenJob(PromptJobConfig):
    m: int = 2
    objective: str | None = None  # lower | raise; None: raise for facts, lower otherwise
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)


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
    check_interval_settings(cfg.confidence, cfg.resamples)
    neuron_settings = NeuronSettings(
        ks=tuple(cfg.neurons.ks) if cfg.neurons.ks is not None else None,
        projections=tuple(cfg.neurons.projections), ablation=cfg.neurons.ablation,
        random_draws=cfg.neurons.random_draws, steps=cfg.steps, guidance=cfg.guidance, batch_size=cfg.batch_size,
    )
    if cfg.neurons.enabled:
        neuron_settings.check()
        check_prompt_counts([e.prompt for e in cfg.prompts.entries],
                            [e.neutral or e.altered for e in cfg.prompts.entries])
    model = model_from_config(cfg.model)
    settings.check(model)
    scorer = scorer_from_config(cfg.scorer, model.device)
    table = search(model, scorer, units, settings, progress=cfg.progress)
    summary = window_summary(table, cfg.confidence, cfg.resamples)
    chosen = summary[summary["chosen"]].iloc[0]
    table["chosen"] = table["window"] == chosen["window"]
    title = f"LOCOGEN m={cfg.m}: {cfg.prompts.name} ({cfg.prompts.kind}) on {cfg.model.name_or_path}"
    atomic_write(out_dir / "windows.parquet", lambda tmp: summary.to_parquet(tmp, index=False))
    layer_curve(table, summary, title, objective, out_dir / "layer_curve.png", cfg.confidence)
    units_table = table.drop_duplicates(["prompt", "seed"])
    neuron_text = ""
    if cfg.neurons.enabled:
        neuron_text = _neurons(cfg, model, scorer, chosen, neuron_settings, title, out_dir)
    text = (f"{title}\nobjective: {objective} the CLIP score; {len(units_table)} units (prompts x seeds)\n"
            f"mean score: original {units_table['score_original'].mean():.2f}, altered "
            f"{units_table['score_altered'].mean():.2f}\n"
            f"chosen window: layers {chosen['layers']} ({chosen['names']})\n"
            f"  score {chosen['score']:.2f} [{chosen['score_ci_low']:.2f}, {chosen['score_ci_high']:.2f}], "
            f"effect {chosen['effect']:.2f} [{chosen['effect_ci_low']:.2f}, {chosen['effect_ci_high']:.2f}]\n"
            + summary[["window", "layers", "score", "effect", "effect_ci_low", "effect_ci_high"]]
            .to_string(index=False, float_format=lambda v: f"{v:.2f}") + "\n" + neuron_text)
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(text))
    print(text, end="")
    write_results(table, cfg, out_dir)
    return table


def _neurons(cfg: DictConfig, model, scorer, chosen, settings: NeuronSettings, title: str, out_dir: Path) -> str:
    """Neuron scores and the ablation curve in the chosen window; returns the summary's neuron lines."""
    layers = [int(k) for k in chosen["layers"].split(",")]
    entries = cfg.prompts.entries
    prompts = list(dict.fromkeys(e.prompt for e in entries))
    neutral = list(dict.fromkeys(e.neutral or e.altered for e in entries))
    scores = score_neurons(model, layers, prompts, neutral, settings.projections)
    texts = {e.prompt: e.text or e.attribute for e in entries}
    curve = ablation_curve(model, scorer, prompts, [texts[p] for p in prompts], list(cfg.seeds), scores, settings,
                           progress=cfg.progress)
    summary = neuron_summary(curve, cfg.confidence, cfg.resamples)
    ranked = pd.DataFrame([vars(n) for n in scores.neurons]).assign(t=scores.t)
    atomic_write(out_dir / "neuron_scores.parquet", lambda tmp: ranked.to_parquet(tmp, index=False))
    atomic_write(out_dir / "neurons.parquet", lambda tmp: curve.to_parquet(tmp, index=False))
    neuron_curve(summary, f"{title}\n{settings.ablation}-ablated neurons of layers {chosen['layers']}",
                 out_dir / "neuron_curve.png")
    wide = summary.pivot_table(index="k", columns="selection", values="drop")
    return (f"neurons ({settings.ablation} ablation, layers {chosen['layers']}, {len(scores.neurons)} candidates): "
            "mean CLIP drop by k\n" + wide.to_string(float_format=lambda v: f"{v:.2f}") + "\n")


JOB = Job(LocogenJob, run_locogen)
