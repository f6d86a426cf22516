"""`localize evaluate`: a published evaluation format, measured before and after an edit with the same seeds.

Datasets (`localize.data`): `timed` and `road` cases are one edit each (method `edit` with source = `old`
(TIMED) or `prompt` (RoAD), destination = `new`, plus `params`), measured by CLIP zero-shot (`localize.metrics`):
efficacy (the edited prompt looks like `new`, not `old`), generality (positives look like their edited text),
specificity (negatives keep their own text, not the edited one), each per image and seed (`seeds`).
`prompts` and `imagenette` lists are one edit for the whole list (`edit` and all its `params`, e.g. UCE
`concepts`), each prompt with its `evaluation_seed`, measured by CLIP score against the prompt and, for
`imagenette` with a `classifier`, class accuracy; their results carry each prompt's `class` and every metric
is per class (the erased class apart from the others). `i2p` prompts are generated with their own
`evaluation_guidance` and also measured for nudity (`localize.nudity`, NudeNet: `nudity` per image, and
`nudity:CLASS` per exposed class; `nudity.classes` and `nudity.threshold`). After an edit, each image is also
compared with its before-image (same prompt and seed; `localize.quality`): `ssim`, `psnr`, and `lpips` when its
weights are cached (`quality.lpips`: auto, on, off); `quality.fid` adds the FID between the before and after
sets to `metrics.parquet` (measure `fid`, metric `all`, no CI). With `side_effects.prompts` (a prompt list the
edit does not target), those prompts are generated before and after each edit and candidate descriptions are
ranked by how well CLIP separates the two sets (`localize.setdiff`): `side_effects.parquet`, `side_effects.png`.
On the organism every image is
also read by the oracle (`oracle`: it draws what the world draws for the text it should match). `edit: null`
measures the model as it is (phase `before` only).

Writes into the job's output directory: `metrics.parquet` (mean and bootstrap CI per metric x measure x
phase, and class for ImageNette), `images.png` (the first case's images before and after, the first seed of each
of its prompts, at most `SHOWN`), `summary.txt`, and last `results.parquet` (one row per image x measure: case,
metric, prompt, seed, phase, measure, value, and class for ImageNette; config values as columns).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from localize.data import load_dataset
from localize.figures import before_after_grid
from localize.generation import generate_batches
from localize.loading import model_from_config, scorer_from_config
from localize.metrics import mean_intervals, zero_shot_success
from localize.model import Model
from localize.nudity import nudity
from localize.quality import FrechetDistance, lpips_available, lpips_distance, pixel_similarity
from localize.results import atomic_write, write_results
from localize.setdiff import examples_figure, rank_descriptions
from locoedit.api import edit
from locoedit.dit_blocks import with_job_generation
from locoedit.job import EDIT_FORMATS, check_classifier_name, selected_cases

SHOWN = 12  # the most images per row of images.png
Classifier = Callable[[torch.Tensor], list[str]]


@dataclass(frozen=True)
class Probe:
    """One image to measure: `prompt` generated with `seed`; zero-shot it should look like `match`, not
    `mismatch`; `label` is its class (class accuracy)."""

    case: int
    metric: str
    prompt: str
    seed: int
    match: str
    mismatch: str | None = None
    label: str | None = None
    guidance: float | None = None  # its own CFG scale (I2P's `evaluation_guidance`); None: the job's `guidance`


def edit_probes(row: pd.Series, format_name: str, seeds: list[int]) -> list[Probe]:
    """TIMED / RoAD: efficacy, generality (5) and specificity (5) probes of one case, each with every seed."""
    road = format_name == "road"
    subject = row["prompt"] if road else row["old"]
    specs = [("efficacy", subject, row["new"], row["old"])]
    for i in range(1, 6):
        new, old = (row[f"positive_new{i}"], row[f"positive_old{i}"]) if road else (row[f"gt{i}"], row[f"positive{i}"])
        specs.append(("generality", row[f"positive{i}"], new, old))
    for i in range(1, 6):
        specs.append(("specificity", row[f"negative{i}"], row[f"negative{i}"],
                      row[f"negative_new{i}"] if road else row[f"gn{i}"]))
    return [Probe(int(row["case"]), metric, prompt, seed, match, mismatch)
            for metric, prompt, match, mismatch in specs for seed in seeds]


def list_probes(table: pd.DataFrame) -> list[Probe]:
    """Prompt lists: one probe per row, with its own seed (and class, when the format has one; guidance, I2P)."""
    return [Probe(int(row["case"]), "prompt", row["prompt"], int(row["evaluation_seed"]), row["prompt"],
                  label=row.get("class"), guidance=row.get("evaluation_guidance")) for _, row in table.iterrows()]


def load_classifier(name: str | None) -> Callable[[Model], Classifier] | None:
    """The classifier named by the config, for the model once it loads: `organism` (the shape the family's ground
    truth reads) or `module:function` (imported now, so a bad name fails before the model loads)."""
    if name is None:
        return None
    if name == "organism":
        return _ground_truth_shapes
    check_classifier_name(name)
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"classifier {name!r} cannot be loaded: {error}") from None
    return lambda model: function


def _ground_truth_shapes(model: Model) -> Classifier:
    if model.spec.ground_truth is None:
        raise ValueError(f"classifier 'organism' reads images with the family's ground truth, and family "
                         f"{model.family!r} has none: give `module:function`")
    return lambda images: model.spec.ground_truth.read_images(images)["shape"].tolist()


def measure(model, scorer, images: torch.Tensor, probes: list[Probe], classify: Classifier | None,
            nudity_settings: dict | None = None) -> pd.DataFrame:
    """One row per probe x measure: zero_shot (edit formats) or clip_score (prompt lists), class_accuracy (with
    a classifier and labels), oracle (organism), and with `nudity_settings` (`localize.nudity.nudity`'s
    `classes` and `threshold`; I2P) `nudity` and `nudity:CLASS` per class of the set."""
    base = pd.DataFrame([{"case": p.case, "metric": p.metric, "prompt": p.prompt, "seed": p.seed} for p in probes])
    if probes[0].label is not None:
        base["class"] = [p.label for p in probes]
    measures = {}
    if probes[0].mismatch is not None:
        measures["zero_shot"] = zero_shot_success(scorer, images, [p.match for p in probes],
                                                  [p.mismatch for p in probes])
    else:
        measures["clip_score"] = scorer.score(images, [p.match for p in probes]).cpu().numpy()
    if classify is not None and probes[0].label is not None:
        names = classify(images)
        measures["class_accuracy"] = np.array([n == p.label for n, p in zip(names, probes, strict=True)], float)
    if model.spec.ground_truth is not None:
        measures["oracle"] = model.spec.ground_truth.success(images, [p.match for p in probes])
    if nudity_settings is not None:
        readings = nudity(images, **nudity_settings)
        measures["nudity"] = readings["nude"].to_numpy()
        measures.update({f"nudity:{name}": readings[name].to_numpy() for name in readings.columns[1:]})
    return pd.concat([base.assign(measure=name, value=values) for name, values in measures.items()],
                     ignore_index=True)


def probe_images(model: Model, probes: list[Probe], cfg: DictConfig, desc: str) -> torch.Tensor:
    """Each probe's image, in probe order: `generate_batches` with the job's settings, once per distinct
    guidance (a probe's own, e.g. I2P's `evaluation_guidance`, else the job's `guidance`)."""
    images: list[torch.Tensor | None] = [None] * len(probes)
    scales = [cfg.guidance if p.guidance is None else float(p.guidance) for p in probes]
    for scale in dict.fromkeys(scales):
        picked = [i for i, s in enumerate(scales) if s == scale]
        batch = generate_batches(model, [probes[i].prompt for i in picked], [probes[i].seed for i in picked],
                                 cfg.batch_size, cfg.steps, scale, progress=cfg.progress, desc=desc,
                                 memory_budget=cfg.memory_budget)
        for i, image in zip(picked, batch, strict=True):
            images[i] = image
    return torch.stack(images)


def kept_quality(before: torch.Tensor, after: torch.Tensor, probes: list[Probe], with_lpips: bool) -> pd.DataFrame:
    """One row per probe x measure comparing its after-image with its before-image (same prompt and seed):
    `ssim`, `psnr` (`localize.quality`) and, `with_lpips`, `lpips`."""
    base = pd.DataFrame([{"case": p.case, "metric": p.metric, "prompt": p.prompt, "seed": p.seed} for p in probes])
    if probes[0].label is not None:
        base["class"] = [p.label for p in probes]
    measures = pixel_similarity(before, after)
    if with_lpips:
        measures["lpips"] = lpips_distance(before, after)
    return pd.concat([base.assign(measure=name, value=values) for name, values in measures.items()],
                     ignore_index=True)


def shown(probes: list[Probe]) -> list[int]:
    """Indices of the probes images.png shows: the first seed of each distinct prompt, at most `SHOWN`."""
    first: dict[tuple[str, str], int] = {}
    for index, probe in enumerate(probes):
        first.setdefault((probe.metric, probe.prompt), index)
    return list(first.values())[:SHOWN]


def run_evaluate(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    table = selected_cases(load_dataset(cfg.dataset.format, cfg.dataset.path), cfg.dataset.cases)
    params = OmegaConf.to_container(cfg.params, resolve=True)
    classifier = load_classifier(cfg.classifier)
    per_case = cfg.dataset.format in EDIT_FORMATS
    if per_case:  # (probes, edit parameters) per case
        source = "prompt" if cfg.dataset.format == "road" else "old"
        cases = [(edit_probes(row, cfg.dataset.format, list(cfg.seeds)),
                  {"source": row[source], "destination": row["new"], **params}) for _, row in table.iterrows()]
    else:
        cases = [(list_probes(table), params)]
    side = side_effect_probes(cfg)
    model = model_from_config(cfg.model)
    classify = classifier(model) if classifier is not None else None
    scorer = scorer_from_config(cfg.scorer, model.device)

    nudity_settings = dict(cfg.nudity) if cfg.dataset.format == "i2p" else None
    probes = [p for case_probes, _ in cases for p in case_probes]
    before = probe_images(model, probes, cfg, "before")
    rows = [measure(model, scorer, before, probes, classify, nudity_settings).assign(phase="before")]
    first_after, edits, start = None, [], 0
    with_lpips = cfg.quality.lpips == "on" or (cfg.quality.lpips == "auto" and lpips_available())
    distance, side_tables = None, []
    if side is not None:
        side_before = probe_images(model, side, cfg, "side effects before")
        descriptions = candidate_descriptions(cfg.side_effects.descriptions, model)
    if cfg.edit is not None and cfg.quality.fid:
        distance = FrechetDistance(weights=cfg.quality.fid_weights)
        distance.add(before, first=True)
    if cfg.edit is not None:
        for case_probes, case_params in tqdm(cases, desc="edits", disable=not cfg.progress or len(cases) == 1):
            result = edit(model, cfg.edit, **with_job_generation(model, cfg.edit, case_params, cfg.steps, cfg.guidance))
            edits.append({"case": case_probes[0].case, **result.report(model)})
            with result.applied(model):
                after = probe_images(model, case_probes, cfg, "after")
                side_after = probe_images(model, side, cfg, "side effects after") if side is not None else None
            if side_after is not None:
                side_tables.append(rank_descriptions(scorer, side_before, side_after, descriptions, cfg.confidence,
                                                     cfg.resamples).assign(case=case_probes[0].case))
                if len(side_tables) == 1:
                    examples_figure(scorer, side_before, side_after, side_tables[0], out_dir / "side_effects.png",
                                    cfg.side_effects.top, title=f"{cfg.edit}, case {case_probes[0].case}: what else "
                                    f"changed on {len(side)} other prompts")
            reference, start = before[start:start + len(case_probes)], start + len(case_probes)
            rows.append(measure(model, scorer, after, case_probes, classify, nudity_settings).assign(phase="after"))
            rows.append(kept_quality(reference, after, case_probes, with_lpips).assign(phase="after"))
            if distance is not None:
                distance.add(after, first=False)
            first_after = after if first_after is None else first_after
    results = pd.concat(rows, ignore_index=True)
    by = ["metric", "class", "measure", "phase"] if "class" in results else ["metric", "measure", "phase"]
    metrics = mean_intervals(results, by, "value", cfg.confidence, cfg.resamples)
    if distance is not None:  # one value for the two sets: no per-image CI
        metrics = pd.concat([metrics, pd.DataFrame([{"metric": "all", "measure": "fid", "phase": "after",
                                                     "mean": distance.compute(), "n": distance.counts[1]}])],
                            ignore_index=True)
    atomic_write(out_dir / "metrics.parquet", lambda tmp: metrics.to_parquet(tmp, index=False))
    if first_after is not None:
        first_case = cases[0][0]
        picked = shown(first_case)
        before_after_grid(before[picked], first_after[picked], [first_case[i].prompt for i in picked],
                          [first_case[i].seed for i in picked], out_dir / "images.png",
                          title=f"{cfg.edit}: case {first_case[0].case}")
    summary = summary_text(cfg, metrics, edits)
    if side_tables:
        side_effects = pd.concat(side_tables, ignore_index=True)
        atomic_write(out_dir / "side_effects.parquet", lambda tmp: side_effects.to_parquet(tmp, index=False))
        summary += side_effects_text(side_effects, cfg.side_effects.top)
    atomic_write(out_dir / "summary.txt", lambda tmp: tmp.write_text(summary))
    print(summary, end="")
    edit_columns = pd.DataFrame(edits).drop(columns=["method"], errors="ignore")
    if per_case and not edit_columns.empty:
        results = results.merge(edit_columns, on="case", how="left")
    write_results(results, cfg, out_dir)
    return results


def side_effect_probes(cfg: DictConfig) -> list[Probe] | None:
    """The side-effect prompt list's probes (`side_effects.prompts`, format `prompts`; None when not given or
    nothing is edited; that it holds no edited prompt is checked with the config, `check_side_effects`)."""
    if cfg.side_effects.prompts is None or cfg.edit is None:
        return None
    return list_probes(load_dataset("prompts", cfg.side_effects.prompts))


def candidate_descriptions(path: str | None, model: Model) -> list[str]:
    """The side-effect ranker's candidates: the file's lines, else the family's world descriptions."""
    if path is not None:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"side_effects.descriptions {path!r} holds no description (one per line)")
        return lines
    if model.spec.ground_truth is None:
        raise ValueError(f"side_effects.descriptions: family {model.family!r} has no world to describe; give a file "
                         "of candidate descriptions, one per line")
    return model.spec.ground_truth.descriptions()


def side_effects_text(table: pd.DataFrame, top: int) -> str:
    """Per case, the shifted descriptions (at most `top`), or that none shifted."""
    lines = ["what else changed (descriptions whose CLIP AUROC, after vs before, has a CI excluding 0.5):"]
    for case, group in table.groupby("case", sort=False):
        shifted = group[group["shifted"]].head(top)
        found = ", ".join(f"{r.description!r} {r.direction} after (AUROC {r.auroc:.2f} [{r.ci_low:.2f}, "
                          f"{r.ci_high:.2f}])" for r in shifted.itertuples()) or "nothing"
        lines.append(f"  case {case}: {found}")
    return "\n".join(lines) + "\n"


def summary_text(cfg: DictConfig, metrics: pd.DataFrame, edits: list[dict]) -> str:
    """Each metric (x class) x measure with its mean and CI before (and after) the edit."""
    cell = metrics.assign(text=[f"{m:.3g}" + ("" if np.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]") for m, lo, hi in
                                zip(metrics["mean"], metrics["ci_low"], metrics["ci_high"], strict=True)])
    index = [key for key in ("metric", "class", "measure") if key in metrics]
    wide = cell.pivot_table(index=index, columns="phase", values="text", aggfunc="first", sort=False)
    wide = wide[[p for p in ("before", "after") if p in wide.columns]].fillna("")  # after-only measures: ssim, ...
    edited = f"{cfg.edit} edits: {len(edits)}" if cfg.edit else "no edit (the model as it is)"
    seconds = f", {np.mean([e['seconds'] for e in edits]):.2f} s each" if edits else ""
    return (f"evaluate {cfg.dataset.format} {cfg.dataset.path} on {cfg.model.name_or_path}: {edited}{seconds}\n"
            f"mean [{round(100 * cfg.confidence)}% CI] per image\n{wide.to_string()}\n")

