"""`localize locogen`'s run (its config and checks: `locogen.job`).

Writes into the job's output directory: `windows.parquet` (one row per window: mean score and effect with
bootstrap CIs, `chosen`), `layer_curve.png`; with `neurons.enabled`, for the chosen window's layers
`neurons.parquet` (one row per prompt x seed x k x selection), `neuron_scores.parquet` (Welch t of every
candidate neuron) and `neuron_curve.png`; `summary.txt`, and last `results.parquet` (one row per prompt x seed
x window, `chosen` marking the chosen window's rows, config values as columns; LOCOEDIT reads its `layers`)
with `config.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from localize.loading import model_from_config, scorer_from_config
from localize.results import atomic_write, listed, write_results
from locogen.curves import layer_curve, neuron_curve, neuron_summary, window_summary
from locogen.job import neuron_settings_of, objective_of, search_settings, units_of
from locogen.layer_search import search
from locogen.neurons import ablation_curve, score_neurons
from locogen.settings import NeuronSettings
from locogen.windows import window_layers


def run_locogen(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    objective = objective_of(cfg)
    settings, neuron_settings = search_settings(cfg), neuron_settings_of(cfg)
    model = model_from_config(cfg.model)
    settings.check(len(window_layers(model, settings.blocks)))
    if cfg.neurons.enabled and model.spec.denoiser != "unet":
        raise ValueError(f"neurons.enabled: LOCOGEN's neuron scores are read from a UNet's cross-attention "
                         f"projections; the {model.family} family is a DiT: set neurons.enabled=false")
    scorer = scorer_from_config(cfg.scorer, model.device)
    table = search(model, scorer, units_of(cfg), settings, progress=cfg.progress)
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
            f"chosen window: layers {listed(chosen['layers'])} ({listed(chosen['names'])})\n"
            f"  score {chosen['score']:.2f} [{chosen['score_ci_low']:.2f}, {chosen['score_ci_high']:.2f}], "
            f"effect {chosen['effect']:.2f} [{chosen['effect_ci_low']:.2f}, {chosen['effect_ci_high']:.2f}]\n"
            + summary[["window", "layers", "score", "effect", "effect_ci_low", "effect_ci_high"]]
            .assign(layers=summary["layers"].map(listed))
            .to_string(index=False, float_format=lambda v: f"{v:.2f}") + "\n" + neuron_text)
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(text))
    print(text, end="")
    write_results(table, cfg, out_dir)
    return table


def _neurons(cfg: DictConfig, model, scorer, chosen, settings: NeuronSettings, title: str, out_dir: Path) -> str:
    """Neuron scores and the ablation curve in the chosen window; returns the summary's neuron lines."""
    layers = [int(k) for k in chosen["layers"]]
    entries = cfg.prompts.entries
    prompts = list(dict.fromkeys(e.prompt for e in entries))
    neutral = list(dict.fromkeys(e.neutral or e.altered for e in entries))
    scores = score_neurons(model, layers, prompts, neutral, settings.projections)
    texts = {e.prompt: e.text or e.attribute for e in entries}
    curve = ablation_curve(model, scorer, prompts, [texts[p] for p in prompts], list(cfg.seeds), scores, settings,
                           progress=cfg.progress)
    summary = neuron_summary(curve, cfg.confidence, cfg.resamples)
    ranked = pd.DataFrame([{"address": n.address, **vars(n)} for n in scores.neurons]).assign(t=scores.t)
    atomic_write(out_dir / "neuron_scores.parquet", lambda tmp: ranked.to_parquet(tmp, index=False))
    atomic_write(out_dir / "neurons.parquet", lambda tmp: curve.to_parquet(tmp, index=False))
    neuron_curve(summary, f"{title}\n{settings.ablation}-ablated neurons of layers {listed(layers)}",
                 out_dir / "neuron_curve.png")
    wide = summary.pivot_table(index="k", columns="selection", values="drop")
    return (f"neurons ({settings.ablation} ablation, layers {listed(layers)}, {len(scores.neurons)} candidates): "
            "mean CLIP drop by k\n" + wide.to_string(float_format=lambda v: f"{v:.2f}") + "\n")
