"""Full-size random models at their native resolution, end to end through the command line on CPU (slow): SD 1.5
at 512 px runs `trace` (every cross-attention state of one prompt), `locogen` (all 15 windows of m=2) and `edit`
(TIME, UCE); SD-XL at 1024 px runs `locogen` with two windows; IF stage I at 64 px runs `trace`. One denoising
step each, `batch_size=auto`; float32, but SD-XL and IF in bfloat16 (in float32 they do not fit this 23 GiB
machine: IF-I-XL with T5-XXL is 36 GB of weights). Each run prints its wall time and peak resident memory (the
README's table):

    .venv/bin/python -m pytest -m slow -s tests/test_full_size.py
"""

import subprocess
import sys
import time

import pandas as pd
import pytest

ONE = "prompts.entries=[{prompt:'a painting of a lighthouse in the style of Monet',attribute:Monet," \
      "altered:'a painting of a lighthouse'}]"
F32, BF16 = "model.dtype=null", "model.dtype=bf16"
COMMON = ["model.device=cpu", "scorer=organism", "steps=1", "seeds=[0]", "progress=false"]
RUNS = {
    "sd15 512 px trace": ("trace", "random_sd15_full", [F32, ONE, "unet_kinds=[cross_attn]", "text_kinds=[]"]),
    "sd15 512 px locogen": ("locogen", "random_sd15_full", [F32, ONE, "m=2", "neurons.enabled=false"]),
    "sd15 512 px edit time": ("edit", "random_sd15_full", [
        F32,
        "method=time", "+params.source='a photo of a rose'", "+params.destination='a photo of a blue rose'",
        "evaluate=['a photo of a rose']"]),
    "sd15 512 px edit uce": ("edit", "random_sd15_full", [
        F32,
        "method=uce", "+params.concepts=['a painting in the style of Monet']",
        "evaluate=['a painting of a lighthouse']"]),
    "sdxl 1024 px locogen": ("locogen", "random_sdxl_full", [BF16, ONE, "m=69", "neurons.enabled=false"]),
    "if 64 px trace": ("trace", "random_if_full", [BF16, ONE, "unet_kinds=[cross_attn]", "text_kinds=[]"]),
}


REPORTING_PEAK = ("import atexit, resource, sys; atexit.register(lambda: print('peak rss kib', "
                  "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
                  "from localize.cli import main; main()")


def run_measured(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float, float]:
    """The command, its wall time (s) and its peak resident memory (GiB, as the process itself reads it)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", REPORTING_PEAK, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=3600)
    seconds = time.perf_counter() - start
    reported = result.stderr.rsplit("peak rss kib", 1)
    peak = int(reported[1].split()[0]) / 2**20 if len(reported) == 2 else float("nan")  # none when killed
    return result, seconds, peak


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_full_size_models_run_every_job_at_native_resolution(name, tmp_path):
    job, model, overrides = RUNS[name]
    out = tmp_path / "run"
    result, seconds, peak = run_measured([job, f"model={model}", *COMMON, *overrides, f"hydra.run.dir={out}"],
                                         tmp_path)
    assert result.returncode == 0, (f"exit {result.returncode} after {seconds:.0f} s (-9: killed, e.g. out of "
                                    f"memory)\n{result.stderr[-3000:]}")
    assert len(pd.read_parquet(out / "results.parquet"))
    print(f"\nfull size | {name} | {seconds:.0f} s | peak {peak:.1f} GiB")
