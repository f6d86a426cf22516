"""`localize JOB [hydra overrides]`: run one job (or a sweep with -m) with its config from `conf/JOB.yaml`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from localize.config import register_configs
from localize.jobs import JOBS


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in JOBS:
        given = repr(argv[0]) if argv else "no job"
        sys.exit(f"usage: localize JOB [key=value ...] [-m]; got {given}; jobs: {', '.join(JOBS)}")
    job = argv[0]
    register_configs()

    def run(cfg: DictConfig) -> None:
        JOBS[job](cfg, Path(HydraConfig.get().runtime.output_dir))

    sys.argv = [f"localize {job}", *argv[1:]]
    hydra.main(config_path="pkg://localize.conf", config_name=job, version_base="1.3")(run)()
