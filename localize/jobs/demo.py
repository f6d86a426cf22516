"""`localize demo`: the lab end to end on the model organism, with a report.

Stages run in order, each an ordinary job (found through the `localize.jobs` entry points, configured by its
own `conf/<job>.yaml` plus the stage's Hydra overrides, so a mistyped key is an error) writing into
`<demo dir>/<stage name>/`: causal tracing -> LOCOGEN -> LOCOEDIT at the window LOCOGEN chose (its `inputs`
point a config key at an earlier stage's file) -> TIME and UCE edits -> evaluation -> the report.

Writes `demo.txt` (what was found and what each edit changed), `results.parquet` (one row per stage: job,
seconds, directory, headline) with `config.yaml`, then `report.html` over every stage.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

from localize.jobs import Job, load_jobs
from localize.report import write_report
from localize.results import atomic_write, listed, write_results


@dataclass
class Stage:
    """`job` run with `overrides` (then the demo's `common` ones) into `<demo dir>/<name>`; `inputs` maps a
    config key to a file of an earlier stage (relative to the demo directory)."""

    name: str = MISSING
    job: str = MISSING
    overrides: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass
class DemoJob:
    """`common`: overrides every stage takes, after its own (e.g. `[steps=4, "seeds=[0]"]` for a smoke run)."""

    stages: list[Stage] = field(default_factory=list)
    common: list[str] = field(default_factory=list)
    report: bool = True
    progress: bool = True


@contextlib.contextmanager
def _hydra_ready():
    """Compose job configs inside a running Hydra app, or set Hydra up for the call (the Python API)."""
    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_module(config_module="localize.conf", version_base="1.3"):
            yield


def stage_config(stage: DictConfig, common: list[str], progress: bool, out_dir: Path) -> DictConfig:
    """The stage's job config: `conf/<job>.yaml` with the stage's and the common overrides, then its inputs."""
    cfg = compose(config_name=stage.job, overrides=[*stage.overrides, *common])
    if "progress" in cfg:
        cfg.progress = progress
    for key, relative in stage.inputs.items():
        path = out_dir / relative
        if not path.exists():
            raise FileNotFoundError(f"stage {stage.name!r}: input {key}={relative!r} does not exist in {out_dir} "
                                    "(an earlier stage writes it)")
        OmegaConf.update(cfg, key, str(path), force_add=True)
    return cfg


def _modal(values: pd.Series) -> str:
    counts = values.value_counts()
    return f"{counts.index[0]} {counts.iloc[0]}/{len(values)}"


def drawing_changes(table: pd.DataFrame) -> list[str]:
    """Organism edits in plain words: the prompts whose oracle reading changed (before -> after, the most
    common reading and its count) and those that kept it (an image changed when its reading did)."""
    reading = table.assign(reading=table["color"] + " " + table["shape"] + " on " + table["texture"])
    changed, kept = [], []
    for prompt, group in reading.groupby("prompt", sort=False):
        before = group[group["phase"] == "before"].sort_values("seed")["reading"].to_numpy()
        after = group[group["phase"] == "after"].sort_values("seed")["reading"].to_numpy()
        if (before != after).any():
            changed.append(f"{prompt!r} {_modal(pd.Series(before))} -> {_modal(pd.Series(after))}")
        else:
            kept.append(f"{prompt!r} ({before[0]})" if len(set(before)) == 1 else repr(prompt))
    return [f"changed: {'; '.join(changed) or 'nothing'}",
            f"kept as before (every seed): {'; '.join(kept) or 'nothing'}"]


FORMAT_NAMES = {"timed": "TIMED", "road": "RoAD", "imagenette": "ImageNette"}
EDIT_MEASURES = {"efficacy": "the edited prompts draw the new text", "generality": "their other phrasings draw it",
                 "specificity": "the other prompts keep their own"}


def _share(wide: pd.DataFrame, row: tuple, phase: str) -> str:
    return f"{wide.loc[row, phase]:.0%}"


def evaluation_in_words(run: Path, wide: pd.DataFrame) -> str:
    """An evaluation's outcome in words (`wide`: its metrics, (metric, class, measure) x phase means): an edit
    format's efficacy, generality and specificity, read by the oracle where it read them (the organism), else by
    CLIP zero-shot; a class list's accuracy on the classes of the prompts the edit named and on the others.
    Empty when there is no edit."""
    if "after" not in wide.columns:
        return ""
    results = pd.read_parquet(run / "results.parquet")
    dataset = results["dataset.format"].iloc[0]
    what = f"{results['edit'].iloc[0]} on the {FORMAT_NAMES.get(dataset, dataset)}-format cases"
    measures = set(wide.index.get_level_values("measure"))
    if "class_accuracy" in measures:
        named = OmegaConf.load(run / "config.yaml").params
        prompts = {*named.get("concepts", []), *([named.source] if "source" in named else [])}
        edited = set(results.loc[results["prompt"].isin(prompts), "class"])
        rows = [row for row in wide.index if row[2] == "class_accuracy"]
        shares = {row[1]: f"{_share(wide, row, 'before')} -> {_share(wide, row, 'after')}" for row in rows}
        targeted = ", ".join(f"{cls} {shares[cls]}" for cls in shares if cls in edited)
        others = ", ".join(f"{cls} {shares[cls]}" for cls in shares if cls not in edited)
        return (f"{what}; images that draw their class, before -> after the edit: the class the edit names "
                f"{targeted or 'none'}; the other classes {others or 'none'}")
    measure = "oracle" if "oracle" in measures else "zero_shot"
    parts = [f"{words} in {_share(wide, (metric, '', measure), 'after')} of images "
             f"(before the edit {_share(wide, (metric, '', measure), 'before')})"
             for metric, words in EDIT_MEASURES.items() if (metric, "", measure) in wide.index]
    reader = "the oracle" if measure == "oracle" else "CLIP zero-shot"
    return f"{what}; after the edit, read by {reader}: {'; '.join(parts)}" if parts else ""


def headline(job: str, run: Path) -> str:
    """One line (or a few) on what a stage found or changed, read off its output files."""
    if job == "trace":
        effects = pd.read_parquet(run / "effects.parquet")
        lines = []
        for group, part in effects.groupby("group", sort=False):
            top = part.iloc[0]
            role = top["token_role"] if isinstance(top["token_role"], str) else ""
            where = f"{top['site']}" + (f" at the {role} tokens" if role else "")
            lines.append(f"strongest {group} state: {where} (indirect effect {top['effect']:.2f})")
        return "; ".join(lines)
    if job == "locogen":
        windows = pd.read_parquet(run / "windows.parquet")
        chosen = windows[windows["chosen"]].iloc[0]
        return (f"LOCOGEN chose cross-attention layers {listed(chosen['layers'])} (effect {chosen['effect']:.2f} "
                f"[{chosen['effect_ci_low']:.2f}, {chosen['effect_ci_high']:.2f}]) of {len(windows)} windows")
    if job == "edit":
        table = pd.read_parquet(run / "results.parquet")
        head = (f"{table['method'].iloc[0]}: {int(table['parameters_changed'].iloc[0])} parameters changed "
                f"(rank {int(table['rank'].iloc[0])}) in {table['seconds'].iloc[0]:.2f} s")
        if "phase" not in table:
            return head
        if "color" in table:
            changes = drawing_changes(table)
        else:
            changes = [f"{prompt!r}: CLIP score {group[group['phase'] == 'before']['clip_score'].mean():.1f} -> "
                       f"{group[group['phase'] == 'after']['clip_score'].mean():.1f}"
                       for prompt, group in table.groupby("prompt", sort=False)]
        return head + "\n    " + "\n    ".join(changes)
    if job == "evaluate":
        metrics = pd.read_parquet(run / "metrics.parquet")
        if "class" not in metrics:
            metrics["class"] = ""
        wide = metrics.fillna({"class": ""}).pivot_table(index=["metric", "class", "measure"], columns="phase",
                                                         values="mean", sort=False)
        numbers = "; ".join(f"{metric}{f' {cls}' if cls else ''} ({measure}) " + " -> ".join(
            f"{row[p]:.2f}" for p in ("before", "after") if p in row and pd.notna(row[p]))
            for (metric, cls, measure), row in wide.iterrows() if measure not in ("ssim", "psnr"))
        words = evaluation_in_words(run, wide)
        return f"{words}\n    {numbers}" if words else numbers
    return (run / "summary.txt").read_text().splitlines()[0] if (run / "summary.txt").exists() else ""


def check_demo(cfg: DictConfig) -> None:
    """The stages' jobs and names; each stage's config, composed as it will run, checked by its job (a stage
    with `inputs` is checked when an earlier stage has written them)."""
    if not cfg.stages:
        raise ValueError("the demo has no stages")
    jobs = load_jobs()
    for stage in cfg.stages:
        if stage.job not in jobs or stage.job == "demo":
            raise ValueError(f"stage {stage.name!r}: unknown job {stage.job!r}; valid: "
                             f"{', '.join(n for n in jobs if n != 'demo')}")
    names = [stage.name for stage in cfg.stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be distinct, got {names}")
    with _hydra_ready():
        for stage in cfg.stages:
            if not stage.inputs:
                try:
                    jobs[stage.job].check(compose(config_name=stage.job, overrides=[*stage.overrides, *cfg.common]))
                except (ValueError, TypeError) as error:  # a bad value, an edit parameter the method lacks
                    raise type(error)(f"stage {stage.name!r}: {error}") from None


def run_demo(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    jobs = load_jobs()
    rows = []
    with _hydra_ready():
        for stage in cfg.stages:
            print(f"== {stage.name}: localize {stage.job} {' '.join([*stage.overrides, *cfg.common])}", flush=True)
            start = time.perf_counter()
            jobs[stage.job].run(stage_config(stage, list(cfg.common), cfg.progress, out_dir), out_dir / stage.name)
            rows.append({"stage": stage.name, "job": stage.job, "seconds": time.perf_counter() - start,
                         "directory": str(out_dir / stage.name), "headline": headline(stage.job, out_dir / stage.name)})
    table = pd.DataFrame(rows)
    total = table["seconds"].sum()
    text = "\n".join(["localize demo: what was found and what each edit changed", *(
        f"- {row.stage} ({row.job}, {row.seconds:.0f} s): {row.headline}" for row in table.itertuples())])
    atomic_write(out_dir / "demo.txt", lambda tmp: tmp.write_text(text + "\n"))
    write_results(table, cfg, out_dir)
    report = ""
    if cfg.report:
        path, _ = write_report(out_dir)
        report = f"\nreport: {path.resolve()}"
    print(f"\n{text}\n\n{len(table)} stages in {total:.0f} s; outputs in {out_dir.resolve()}{report}")
    return table


JOB = Job(DemoJob, "localize.jobs.demo:run_demo", check=check_demo)
