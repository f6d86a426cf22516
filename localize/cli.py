"""`localize JOB [hydra overrides]`: run one job (or a sweep with -m) with its config from `conf/JOB.yaml`.

A job with a positional key takes a bare first argument for it: `localize report DIR` is `run_dir=DIR` (DIR
with no `=`, or an existing path such as a sweep job's `.../prompts=styles`). Run directories:
`conf/hydra/output/localize.yaml`; in a sweep, a job whose directory already holds its finished results for the
same config (`progress` aside) is skipped, so re-running an interrupted sweep with its `hydra.sweep.dir` redoes only
the rest. A job that runs first removes what the previous run in its directory wrote (`localize.results`). A single
run's config is composed and checked (`Job.check`) before Hydra creates its run directory, so a bad key or value
is an error that writes nothing.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from localize.config import register_configs
from localize.jobs import job_names, load_jobs
from localize.results import fresh_outputs

DISPLAY_KEYS = ("progress",)  # change nothing in the results; also left out of sweep directory names


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (any path, spaces and quotes included). Hydra reads a backslash as
    an escape only in a run of backslashes before a quote (or the closing quote), so only those runs are doubled."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value) + "'"


def _compared(config: DictConfig) -> dict:
    container = OmegaConf.to_container(config, resolve=True)
    return {key: value for key, value in container.items() if key not in DISPLAY_KEYS}


def finished(cfg: DictConfig, out_dir: Path) -> bool:
    """A job's output directory already holds its results (written last) for this same resolved config, display
    keys aside: a re-run sweep skips it."""
    config = out_dir / "config.yaml"
    return ((out_dir / "results.parquet").is_file() and config.is_file()
            and _compared(OmegaConf.load(config)) == _compared(cfg))


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # e.g. a name longer than the file system allows: not a path
        return False


def _unwritable(directory: Path) -> str | None:
    """Why `directory` cannot be created and written into (its nearest existing ancestor is a file, or not
    writable), or None."""
    existing = directory.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    return None if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable"


def check_before_running(name: str, job, overrides: list[str]) -> None:
    """Compose the job's config from `overrides` and check it, and that its run directory can be written, before
    Hydra creates that directory or anything loads (a single run; a sweep's jobs check their own configs). Exits
    with the error naming the bad value."""
    with initialize_config_module(config_module="localize.conf", version_base="1.3"):
        try:
            cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
            run_dir = Path(str(cfg.hydra.run.dir))
            with open_dict(cfg):
                del cfg["hydra"]
            job.check(cfg)
        except (HydraException, OmegaConfBaseException, ValueError, TypeError, FileNotFoundError) as error:
            cause = f"\n{error.__cause__}" if isinstance(error, HydraException) and error.__cause__ else ""
            sys.exit(f"localize {name}: {error}{cause}")
    why = _unwritable(run_dir)
    if why is not None:
        sys.exit(f"localize {name}: cannot write the run directory {run_dir}: {why}; give another with "
                 "hydra.run.dir=DIR")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = job_names()
    if not argv or argv[0] not in names:
        given = repr(argv[0]) if argv else "no job"
        sys.exit(f"usage: localize JOB [key=value ...] [-m]; got {given}; jobs: {', '.join(names)}")
    name = argv[0]
    jobs = load_jobs()
    register_configs(jobs)
    positional = jobs[name].positional
    bare = len(argv) > 1 and not argv[1].startswith("-") and ("=" not in argv[1] or _exists(argv[1]))
    if positional and bare:
        argv[1] = f"{positional}={quoted(argv[1])}"
    if not any(arg.startswith("-") for arg in argv[1:]):  # not a sweep (-m), --cfg, --help, ...
        check_before_running(name, jobs[name], argv[1:])

    def run(cfg: DictConfig) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        if HydraConfig.get().mode == RunMode.MULTIRUN and finished(cfg, out_dir):
            print(f"skipping {out_dir}: finished with this config (its results.parquet exists)")
            return
        jobs[name].check(cfg)  # before anything in out_dir changes
        with fresh_outputs(out_dir):
            jobs[name].run(cfg, out_dir)

    sys.argv = [f"localize {name}", *argv[1:]]
    hydra.main(config_path="pkg://localize.conf", config_name=name, version_base="1.3")(run)()
