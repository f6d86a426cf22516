"""`localize report RUN_OR_SWEEP_DIR`: one self-contained HTML report of every finished run under a directory.

Writes `report.html` (into the directory, or to `output`) atomically, and into the job's own output directory
`results.parquet` (one row per run shown: path, kind) with `config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import MISSING, DictConfig

from localize.jobs import Job
from localize.report import write_report
from localize.results import write_results


@dataclass
class ReportJob:
    """`run_dir`: a job's or a sweep's output directory; `output`: the HTML file (default RUN_DIR/report.html)."""

    run_dir: str = MISSING
    output: str | None = None


def check_report(cfg: DictConfig) -> None:
    try:
        found = Path(cfg.run_dir).is_dir()
    except OSError:  # a name longer than the file system allows
        found = False
    if not found:
        raise ValueError(f"run_dir {cfg.run_dir!r} is not a directory: give a job's or a sweep's output directory")


def run_report(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    path, runs = write_report(Path(cfg.run_dir), Path(cfg.output) if cfg.output else None, exclude=out_dir)
    table = pd.DataFrame([{"run": str(run.path), "kind": run.kind} for run in runs])
    print(f"report of {len(runs)} run(s): {path.resolve()}")
    write_results(table, cfg, out_dir)
    return table


JOB = Job(ReportJob, "localize.jobs.report:run_report", positional="run_dir", check=check_report)
