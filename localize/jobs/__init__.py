"""Command-line jobs: each takes its resolved Hydra config and its output directory."""

from localize.jobs.layers import run_layers

JOBS = {"layers": run_layers}
