"""`localize attack`'s run (its config and checks: `locoedit.job`; the attack itself: `locoedit.attack`).

Writes into the job's output directory: `metrics.parquet` (success rate and bootstrap CI per condition, over every
concept and seed, and per concept), `images.png` (each concept at the first seed: original, edited, attacked),
`summary.txt`, and last `results.parquet`: one row per concept x seed x condition (`original`, `edited`,
`attacked`) with `success`, and per concept the attack's first and last loss; config values as columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from localize.figures import image_rows
from localize.generation import generate
from localize.loading import model_from_config, scorer_from_config
from localize.metrics import mean_intervals
from localize.results import atomic_write, write_results
from locoedit.api import edit
from locoedit.attack import SoftPrompt, generate_soft, optimize, success
from locoedit.dit_blocks import with_job_generation
from locoedit.job import attack_pairs, attack_settings

CONDITIONS = ("original", "edited", "attacked")


def run_attack(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    params = OmegaConf.to_container(cfg.params, resolve=True)
    pairs = attack_pairs(cfg.method, params, cfg.attack.concepts, cfg.attack.guides)
    settings = attack_settings(cfg)
    model = model_from_config(cfg.model)
    scorer = scorer_from_config(cfg.scorer, model.device) if model.spec.ground_truth is None else None
    seeds, train_seeds = list(cfg.seeds), list(settings.train_seeds)

    def images(prompt: str, at: list[int]) -> torch.Tensor:
        return generate(model, [prompt] * len(at), at, cfg.steps, cfg.guidance, progress=cfg.progress)

    references = {concept: images(concept, train_seeds) for concept, _ in pairs}
    shown = {concept: {"original": images(concept, seeds)} for concept, _ in pairs}
    result = edit(model, cfg.method, **with_job_generation(model, cfg.method, params, cfg.steps, cfg.guidance))
    losses = {}
    with result.applied(model):
        for concept, guide in pairs:
            soft = SoftPrompt(model, concept, guide)
            losses[concept] = optimize(model, soft, references[concept], settings)
            shown[concept]["edited"] = images(concept, seeds)
            shown[concept]["attacked"] = generate_soft(model, soft, seeds, cfg.steps, cfg.guidance)
    rows = []
    for concept, guide in pairs:
        loss = losses[concept]
        for condition in CONDITIONS:
            read = success(model, scorer, shown[concept][condition], concept, guide)
            rows += [{"concept": concept, "guide": guide, "seed": seed, "condition": condition, "success": value,
                      "loss_first": loss[0] if loss else float("nan"), "loss_last": loss[-1] if loss else float("nan")}
                     for seed, value in zip(seeds, read, strict=True)]
    table = pd.DataFrame(rows)
    metrics = pd.concat([mean_intervals(table.assign(concept="all"), ["concept", "condition"], "success",
                                        cfg.confidence, cfg.resamples),
                         mean_intervals(table, ["concept", "condition"], "success", cfg.confidence, cfg.resamples)],
                        ignore_index=True)
    atomic_write(out_dir / "metrics.parquet", lambda tmp: metrics.to_parquet(tmp, index=False))
    image_rows({c: torch.stack([shown[concept][c][0] for concept, _ in pairs]) for c in CONDITIONS},
               [concept for concept, _ in pairs], [seeds[0]] * len(pairs), out_dir / "images.png",
               title=f"{cfg.method}: does the erased concept come back? (attack: {settings.steps} steps)")
    summary = summary_text(cfg, metrics, result.report(model)["seconds"])
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(summary))
    print(summary, end="")
    write_results(table, cfg, out_dir)
    return table


def summary_text(cfg: DictConfig, metrics: pd.DataFrame, seconds: float) -> str:
    """The success rate of each condition, over all concepts and per concept."""
    lines = [f"attack on {cfg.model.name_or_path}: {cfg.method} edit ({seconds:.2f} s), soft prompt fitted with "
             f"{cfg.attack.steps} steps; success rate [{round(100 * cfg.confidence)}% CI] at seeds "
             f"{list(cfg.seeds)}:"]
    for concept, group in metrics.groupby("concept", sort=False):
        cells = group.set_index("condition").loc[list(CONDITIONS)]
        lines.append(f"  {concept}: " + ", ".join(f"{condition} {row['mean']:.2f} [{row['ci_low']:.2f}, "
                                                  f"{row['ci_high']:.2f}]" for condition, row in cells.iterrows()))
    return "\n".join(lines) + "\n"
