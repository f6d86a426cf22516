"""`localize edit`'s run (its config and checks: `locoedit.job`).

Writes into the job's output directory: `edit.safetensors` (`locoedit.load_edit`), `lora.safetensors` (with
`lora=true`), `images.png` (each evaluation prompt x seed before and after the edit), `summary.txt` (the edit's
report: wall time, parameters changed, rank), and `results.parquet`: one row per prompt x seed x phase
(`before` / `after`) with the ground truth's reading (shape, color, texture) on a family that has one (the
organism's oracle), else the CLIP score of the image against its prompt; config values as columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from localize.figures import before_after_grid
from localize.generation import generate
from localize.loading import model_from_config, scorer_from_config
from localize.model import Model
from localize.results import atomic_write, write_results
from localize.tokens import token_ids
from locoedit.api import edit
from locoedit.debias import clip_classifier
from locoedit.dit_blocks import with_job_generation


def _readings(model: Model, scorer, images, prompts: list[str]) -> pd.DataFrame:
    """The ground truth's exact reading when the family has one (the organism), else the CLIP score."""
    if model.spec.ground_truth is not None:
        return model.spec.ground_truth.read_images(images)
    return pd.DataFrame({"clip_score": scorer.score(images, prompts).cpu().numpy()})


def rounded(value):
    """`value` with every float in it to 3 significant digits (a summary line a reader can take in)."""
    if isinstance(value, float):
        return float(f"{value:.3g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def run_edit(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    params = OmegaConf.to_container(cfg.params, resolve=True)
    model = model_from_config(cfg.model)
    for prompt in cfg.evaluate:  # before the edit is computed and saved
        for tokenizer in model.tokenizers:
            token_ids(tokenizer, prompt)
    truth = model.spec.ground_truth
    debiasing = cfg.method == "uce" and params.get("mode") in ("debias", "joint") and params.get("attributes")
    scorer = scorer_from_config(cfg.scorer, model.device) if truth is None or debiasing else None
    if debiasing:
        attributes = list(params.get("attributes", []))
        params["classify"] = (truth.classifier(attributes) if truth is not None
                              else clip_classifier(scorer, attributes))
    result = edit(model, cfg.method, **with_job_generation(model, cfg.method, params, cfg.steps, cfg.guidance))
    result.save(out_dir / "edit.safetensors")
    if cfg.lora:
        result.to_lora(out_dir / "lora.safetensors")
    report = result.report(model)
    table = pd.DataFrame([report])
    if cfg.evaluate:
        prompts = [p for p in cfg.evaluate for _ in cfg.seeds]
        seeds = [s for _ in cfg.evaluate for s in cfg.seeds]
        run = lambda: generate(model, prompts, seeds, cfg.steps, cfg.guidance, progress=cfg.progress)  # noqa: E731
        before = run()
        with result.applied(model):
            after = run()
        rows = []
        for phase, images in (("before", before), ("after", after)):
            rows.append(_readings(model, scorer, images, prompts).assign(prompt=prompts, seed=seeds, phase=phase))
        table = pd.concat(rows, ignore_index=True).assign(**{k: v for k, v in report.items() if k != "method"})
        before_after_grid(before, after, prompts, seeds, out_dir / "images.png")
    lines = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in report.items()]
    if result.info:
        lines.append(f"info: {rounded(result.info)}")
    if cfg.evaluate and truth is not None:
        wide = table.pivot_table(index="prompt", columns="phase", values="color",
                                 aggfunc=lambda c: ", ".join(f"{k} {v}" for k, v in c.value_counts().items()))
        lines.append("oracle colors by prompt:\n" + wide.to_string())
    summary = "\n".join(lines) + "\n"
    print(summary)
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(summary))
    write_results(table, cfg, out_dir)
    return table
