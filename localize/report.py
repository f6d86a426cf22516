"""One self-contained HTML report of a run or a sweep directory: every image embedded, no external file.

A run is a directory holding `results.parquet` (written last by every job, so its presence means the run
finished); earlier `localize report` runs (Hydra job name `report`) are not shown. Each run gets a section: its
kind (read off the files it wrote), its overrides (a sweep's `.hydra/overrides.yaml`), its summary, its metric
tables, its figures (tracing heatmaps, LOCOGEN layer and neuron curves, before/after grids) and the resolved
config that produced it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from localize.results import atomic_write, listed

# kind -> (the file that marks it, the metric tables it shows: file, title, columns (None: all), top rows)
KINDS: dict[str, tuple[str, list[tuple[str, str, list[str] | None, int | None]]]] = {
    "demo": ("demo.txt", []),
    "trace": ("effects.parquet", [("effects.parquet", "strongest causal states (mean indirect effect)",
                                   ["site", "group", "token_role", "effect", "ci_low", "ci_high", "units"], 10)]),
    "locogen": ("windows.parquet", [("windows.parquet", "windows (LOCOGEN)",
                                    ["window", "layers", "score", "effect", "effect_ci_low", "effect_ci_high",
                                     "chosen"], None)]),
    "evaluate": ("metrics.parquet", [("metrics.parquet", "metrics (mean and CI per image)", None, None),
                                     ("side_effects.parquet", "what else changed (descriptions ranked by how far "
                                      "CLIP separates after from before; AUROC 0.5 = no change)",
                                      ["case", "rank", "description", "auroc", "ci_low", "ci_high", "direction",
                                       "shifted"], 10)]),
    "edit": ("edit.safetensors", []),
    "attack": ("metrics.parquet", [("metrics.parquet", "success rate per condition (does the erased concept come "
                                    "back?)", ["concept", "condition", "mean", "ci_low", "ci_high", "n"], None)]),
}
RESULTS = "results.parquet"


class EmptyReportError(FileNotFoundError):
    """A directory with no finished run in it."""


@dataclass(frozen=True)
class Run:
    """A finished run: its directory, its kind, its name (the path under the report's root) and its overrides."""

    path: Path
    kind: str
    name: str
    overrides: str


def find_runs(root: Path, exclude: Path | None = None) -> list[Run]:
    """Every finished run under `root`: `root` itself first when it is one (a demo's summary), then the others in
    the order they finished (their results file's modification time: a demo's stages in the order they ran), path
    order between equal times; `exclude` (and below) is skipped."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a directory (give a run or sweep directory)")
    runs = []
    for results in sorted(root.rglob(RESULTS), key=lambda path: (path.parent != root, path.stat().st_mtime, path)):
        run = results.parent
        excluded = exclude is not None and run.resolve().is_relative_to(Path(exclude).resolve())
        if excluded or _job_name(run) == "report":
            continue
        job = _job_name(run)
        kind = job if job in KINDS else next((name for name, (marker, _) in KINDS.items() if (run / marker).exists()),
                                             "layers")
        runs.append(Run(run, kind, str(run.relative_to(root)), _overrides(run)))
    if not runs:
        raise EmptyReportError(f"no finished run under {str(root)!r}: no {RESULTS} found (a job writes it last)")
    return runs


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def _table(path: Path, title: str, columns: list[str] | None, top: int | None) -> str:
    table = pd.read_parquet(path)
    if columns is not None:
        table = table[[c for c in columns if c in table.columns]]
    if top is not None:
        table = (table.sort_values("effect", ascending=False) if "effect" in table.columns else table).head(top)
    table = table.map(lambda v: listed(v) if isinstance(v, (list, tuple, np.ndarray)) else v)  # list columns
    body = table.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0, classes="metrics")
    return f"<h4>{html.escape(title)}</h4>{body}"


def _text(path: Path) -> str:
    return f"<pre>{html.escape(path.read_text())}</pre>" if path.exists() else ""


def _job_name(run: Path) -> str | None:
    path = run / ".hydra" / "hydra.yaml"
    return yaml.safe_load(path.read_text())["hydra"]["job"]["name"] if path.exists() else None


def _overrides(run: Path) -> str:
    path = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.exists() else None
    return " ".join(overrides) if overrides else ""


def run_section(run: Run, anchor: str) -> str:
    parts = [f'<section id="{anchor}"><h2>{html.escape(run.kind)}: {html.escape(run.name)}</h2>']
    if run.overrides:
        parts.append(f"<p class=overrides>overrides: <code>{html.escape(run.overrides)}</code></p>")
    parts.append(_text(run.path / "demo.txt") or _text(run.path / "summary.txt"))
    for file, title, columns, top in KINDS.get(run.kind, ("", []))[1]:
        if (run.path / file).exists():
            parts.append(_table(run.path / file, title, columns, top))
    parts.extend(_image(png) for png in sorted(run.path.glob("*.png")))
    config = run.path / "config.yaml"
    if config.exists():
        parts.append(f"<details><summary>config</summary><pre>{html.escape(config.read_text())}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
section{border-top:1px solid #ccc;padding-top:1em;margin-top:2em}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:100%;image-rendering:pixelated}
figcaption{font-size:.8em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
table.metrics{border-collapse:collapse;font-size:.85em}table.metrics td,table.metrics th{padding:.2em .6em;
border-bottom:1px solid #ddd;text-align:right}code{font-size:.9em}"""


def build_report(root: Path, exclude: Path | None = None, title: str | None = None) -> tuple[str, list[Run]]:
    """The HTML text of the report over `root` and the runs it shows."""
    root = Path(root)
    runs = find_runs(root, exclude)
    title = title or f"localize report: {root.resolve().name}"
    index = "".join(f'<li><a href="#run{i}">{html.escape(run.kind)}: {html.escape(run.name)}</a> '
                    f"<code>{html.escape(run.overrides)}</code></li>" for i, run in enumerate(runs))
    sections = "\n".join(run_section(run, f"run{i}") for i, run in enumerate(runs))
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(runs)} run(s) under <code>{html.escape(str(root.resolve()))}</code></p><ul>{index}</ul>"
            f"{sections}</body></html>\n")
    return page, runs


def write_report(root: Path, path: Path | None = None, exclude: Path | None = None) -> tuple[Path, list[Run]]:
    """Write the report over `root` to `path` (default `root/report.html`) atomically."""
    page, runs = build_report(root, exclude)
    path = Path(path) if path is not None else Path(root) / "report.html"
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8")), runs
