"""The GPU benchmark and the generate-vs-pipeline benchmark run end to end on CPU at tiny size, so neither can rot
before a GPU runs it."""

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "scripts"


def run(script: str, *overrides: str, tmp_path: Path) -> str:
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *overrides, f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_gpu_runs_at_tiny_size_on_cpu(tmp_path):
    out = run("bench_gpu.py", "device=cpu", "dtype=null", "size=tiny", "steps=2", "rows=2", "repeats=1",
              "trace_states=6", tmp_path=tmp_path)
    for family in ("sd1", "sdxl"):
        assert f"\n{family} tiny" in out
    for line in ("x; max abs pixel difference", "LOCOGEN, ", "trace, 6 UNet states"):
        assert out.count(line) == 2
    assert out.count("auto chose None") == 0  # batch_size=auto chose a batch in every search and trace


def test_bench_generate_matches_the_pipeline_at_tiny_size(tmp_path):
    out = run("bench_generate.py", "size=tiny", "resolution=0", "steps=2", "repeats=1", tmp_path=tmp_path)
    difference = float(out.split("max abs pixel difference ")[1].split()[0])
    assert difference <= 1e-5
