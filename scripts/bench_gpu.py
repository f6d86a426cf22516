"""The GPU benchmark: full-size random SD 1.5 (512 px) and SD-XL (1024 px) in fp16 with SDPA attention, each with
`generate` against its diffusers pipeline, one LOCOGEN window search and one causal trace, the last two with
`batch_size=auto`.

    python scripts/bench_gpu.py                                   # on a CUDA GPU: the figures in the README
    python scripts/bench_gpu.py device=cpu dtype=null size=tiny steps=2 trace_states=6   # what the test runs

Per model it prints: images/s of `generate` and of the pipeline and their ratio, with the largest pixel
difference (`bench_generate.side_by_side`); LOCOGEN over every window of m=2 cross-attention layers (one prompt,
one seed); a trace of `trace_states` states (one prompt, one seed); for each, wall time, peak device memory
(CUDA: `torch.cuda.max_memory_allocated`) and the rows per batch `batch_size=auto` chose. Scores use the
organism's CLIP (no other CLIP can be downloaded here; scoring is a small share of the time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import hydra
import torch
from bench_generate import GenerateBench, side_by_side
from benchmarking import timed
from hydra.core.config_store import ConfigStore

from causal_tracing.tracing import TraceSettings, batched_scores, prompt_states, unit_noise_stds
from causal_tracing.tracing import Unit as TraceUnit
from localize import random_model
from localize.generation import image_size
from localize.model import Model
from localize.scoring import ClipScorer
from locogen.layer_search import SearchSettings, batched_window_scores
from locogen.layer_search import Unit as WindowUnit

PROMPT, ALTERED, ATTRIBUTE = "a painting of a lighthouse in the style of Monet", "a painting of a lighthouse", "Monet"


@dataclass
class GpuBench:
    families: list[str] = field(default_factory=lambda: ["sd1", "sdxl"])
    size: str = "full"
    steps: int = 25
    guidance: float = 7.5
    rows: int = 4  # rows of the generate-vs-pipeline comparison
    repeats: int = 3
    trace_states: int = 50
    device: str = "cuda"
    dtype: str | None = "fp16"


ConfigStore.instance().store(name="bench_gpu", node=GpuBench)


class ChosenRows(logging.Handler):
    """The rows per batch `batch_size=auto` chose, read from `localize.memory`'s log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rows: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("batch_size=auto"):
            self.rows.append(record.args[0])


def measured(model: Model, work, chosen: ChosenRows) -> dict:
    """Wall time, peak device memory (CUDA) and the batch `auto` chose, for `work()`."""
    chosen.rows.clear()
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    _, seconds = timed(work)
    peak = (f"{torch.cuda.max_memory_allocated(model.device) / 2**30:.1f} GiB" if model.device.type == "cuda"
            else "not measured off CUDA")
    return {"s": seconds, "peak": peak, "rows per batch": chosen.rows[0] if chosen.rows else None}


def bench_family(family: str, cfg: GpuBench, scorer: ClipScorer, chosen: ChosenRows) -> None:
    model = random_model(family, cfg.size, device=cfg.device, dtype=cfg.dtype)
    pixels = image_size(model, None, None)[0]  # native: 512 for SD 1.5, 1024 for SD-XL
    layers = len(model.cross_attention_layers)
    attention = {type(p).__name__ for p in model.unet.attn_processors.values()}  # AttnProcessor2_0: SDPA
    print(f"\n{family} {cfg.size} ({layers} cross-attention layers), {pixels} px, {model.device} {model.dtype}, "
          f"{', '.join(sorted(attention))}; {cfg.steps} steps, CFG {cfg.guidance}")
    compared = side_by_side(model, GenerateBench(family=family, size=cfg.size, resolution=pixels, steps=cfg.steps,
                                                 guidance=cfg.guidance, rows=cfg.rows, repeats=cfg.repeats))
    ours, theirs = cfg.rows / compared["localize s"], cfg.rows / compared["pipeline s"]
    print(f"  generate: {ours:.3f} images/s, pipeline {theirs:.3f} images/s: ratio {compared['ratio']:.3f}x; "
          f"max abs pixel difference {compared['max abs pixel difference']:.1e}")
    search = SearchSettings(m=2, steps=cfg.steps, guidance=cfg.guidance, batch_size="auto")
    window_unit = WindowUnit(PROMPT, ALTERED, PROMPT, 0)
    locogen = measured(model, lambda: batched_window_scores(model, scorer, [window_unit], search), chosen)
    print(f"  LOCOGEN, {layers - 1} windows of m=2: {locogen['s']:.1f} s, peak {locogen['peak']}, "
          f"auto chose {locogen['rows per batch']} rows per batch")
    trace_settings = TraceSettings(steps=cfg.steps, guidance=cfg.guidance, batch_size="auto")
    unit = TraceUnit(PROMPT, ATTRIBUTE, ATTRIBUTE, 0)
    states = prompt_states(model, unit, ("resnet", "self_attn", "cross_attn", "ff"), ())[:cfg.trace_states]
    stds = unit_noise_stds(model, [unit], trace_settings)
    trace = measured(model, lambda: batched_scores(model, scorer, [unit], [[(), *((s,) for s in states)]],
                                                   trace_settings, stds), chosen)
    print(f"  trace, {len(states)} UNet states + the corrupted run: {trace['s']:.1f} s, peak "
          f"{trace['peak']}, auto chose {trace['rows per batch']} rows per batch")


@hydra.main(version_base=None, config_name="bench_gpu")
def main(cfg: GpuBench) -> None:
    chosen = ChosenRows()
    logging.getLogger("localize.memory").addHandler(chosen)
    scorer = ClipScorer("organism-clip", "organism", device=cfg.device)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for family in cfg.families:
        bench_family(family, cfg, scorer, chosen)  # the model is freed on return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
