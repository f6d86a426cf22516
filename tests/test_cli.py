"""The `localize` command: the layers job end to end, its outputs, and config errors."""

import subprocess
import sys

import pandas as pd


def localize(*args, cwd):
    command = [sys.executable, "-c", "from localize.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_layers_job_prints_the_table_and_writes_results(tmp_path):
    out = tmp_path / "run"
    result = localize("layers", "model=random_sdxl_full", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "70 cross-attention layers" in result.stdout
    assert "up_blocks.0.attentions.1.transformer_blocks.1.attn2" in result.stdout
    table = pd.read_parquet(out / "results.parquet")
    assert table["index"].tolist() == list(range(70))
    assert table.loc[45, "name"] == "up_blocks.0.attentions.1.transformer_blocks.1.attn2"
    assert (table["model.family"] == "sdxl").all()
    assert "family: sdxl" in (out / "config.yaml").read_text()
    assert not list(out.glob(".*.parquet*"))  # no temporary file left behind


def test_config_typos_and_unknown_jobs_are_errors(tmp_path):
    result = localize("layers", "model.famly=sd1", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert result.returncode != 0 and "famly" in result.stderr
    result = localize("layerz", cwd=tmp_path)
    assert result.returncode != 0 and "jobs: layers" in result.stderr
    result = localize("layers", "model=random_sd15_tiny", "model.family=sd3", f"hydra.run.dir={tmp_path / 'y'}",
                      cwd=tmp_path)
    assert result.returncode != 0 and "unknown model family 'sd3'" in result.stderr


def test_layers_job_on_the_organism(tmp_path):
    result = localize("layers", "model=organism", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 10 and (table["model.family"] == "organism").all()
