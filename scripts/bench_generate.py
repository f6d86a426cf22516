"""`generate` against the diffusers pipeline on the same model, side by side in one run: throughput ratio and the
largest pixel difference.

    python scripts/bench_generate.py                                  # full-size random SD 1.5, 256 px, 4 steps
    python scripts/bench_generate.py device=cuda dtype=fp16 resolution=512 steps=25 rows=8

Both sides get the same prompts, seeds (one CPU generator per row), steps, guidance and scheduler. Each side runs
`repeats` times after one warm-up call, alternating, and its median wall time counts. Goals (issue 19): ratio
(localize images/s over the pipeline's) >= 0.95, max abs pixel difference <= 1e-4.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import hydra
import torch
from benchmarking import timed
from hydra.core.config_store import ConfigStore

from localize import generate, random_model

PROMPTS = ["a photo of a red rose", "a painting of a lighthouse in the style of Monet", "a dog on a beach",
           "an astronaut riding a horse"]


@dataclass
class GenerateBench:
    family: str = "sd1"
    size: str = "full"
    resolution: int = 256  # pixels; 0: the model's native size
    steps: int = 4
    guidance: float = 7.5
    rows: int = 2
    repeats: int = 3
    device: str = "cpu"
    dtype: str | None = None


ConfigStore.instance().store(name="bench_generate", node=GenerateBench)


def side_by_side(model, cfg: GenerateBench) -> dict[str, float]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(cfg.rows)]
    seeds = list(range(cfg.rows))
    size = {"height": cfg.resolution, "width": cfg.resolution} if cfg.resolution else {}  # 0: native

    def ours():
        return generate(model, prompts, seeds, steps=cfg.steps, guidance=cfg.guidance, **size)

    def pipeline():
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.no_grad():
            return model.pipeline(prompts, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                                  generator=generators, output_type="pt", **size)[0]

    model.pipeline.set_progress_bar_config(disable=True)
    ours(), pipeline()  # warm-up
    times = {"localize": [], "pipeline": []}
    for _ in range(cfg.repeats):
        images, seconds = timed(ours)
        times["localize"].append(seconds)
        reference, seconds = timed(pipeline)
        times["pipeline"].append(seconds)
    median = {side: statistics.median(t) for side, t in times.items()}
    return {"localize s": median["localize"], "pipeline s": median["pipeline"],
            "ratio": median["pipeline"] / median["localize"],
            "max abs pixel difference": (images.float() - reference.float()).abs().max().item()}


@hydra.main(version_base=None, config_name="bench_generate")
def main(cfg: GenerateBench) -> None:
    model = random_model(cfg.family, cfg.size, device=cfg.device, dtype=cfg.dtype)
    result = side_by_side(model, cfg)
    print(f"{cfg.family} {cfg.size}, {cfg.resolution} px, {cfg.rows} rows, {cfg.steps} steps, CFG {cfg.guidance}, "
          f"{cfg.device} {cfg.dtype or 'float32'}, median of {cfg.repeats}:")
    print(f"  localize.generate {result['localize s']:.2f} s, pipeline {result['pipeline s']:.2f} s: "
          f"throughput ratio {result['ratio']:.3f}x (goal >= 0.95)")
    print(f"  max abs pixel difference {result['max abs pixel difference']:.2e} (goal <= 1e-4)")


if __name__ == "__main__":
    main()
