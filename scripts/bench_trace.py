"""Causal tracing, batched against the serial per-state loop, side by side in one process.

    python scripts/bench_trace.py                        # the organism, one prompt x seed, every state, 25 steps
    python scripts/bench_trace.py steps=10 batch_size=32 device=cuda dtype=fp16

Both trace the same restorations (the corrupted run and every UNet and text-encoder state of the unit):
- batched: `batched_scores`, the clean row, the corrupted row and the restorations as rows of batches of
  `batch_size` rows;
- serial: `serial_scores`, ROME's `trace_with_patch` loop, one generation of [clean, restored] per state.
Prints both wall times, their ratio and the largest score difference. A warm-up generation runs first.
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
import torch
from benchmarking import BenchSettings, timed
from hydra.core.config_store import ConfigStore

from causal_tracing.tracing import TraceSettings, Unit, batched_scores, prompt_states, serial_scores, unit_noise_stds
from localize import generate, load_model
from localize.scoring import ClipScorer


@dataclass
class BenchConfig(BenchSettings):
    prompt: str = "a photo of an apple"
    attribute: str = "apple"
    text: str = "an apple"


ConfigStore.instance().store(name="bench_trace", node=BenchConfig)


@hydra.main(version_base=None, config_name="bench_trace")
def main(cfg: BenchConfig) -> None:
    model = load_model("organism", device=cfg.device, dtype=cfg.dtype)
    scorer = ClipScorer("organism-clip", "organism", device=cfg.device)
    unit = Unit(cfg.prompt, cfg.attribute, cfg.text, cfg.seed)
    settings = TraceSettings(steps=cfg.steps, guidance=cfg.guidance, batch_size=cfg.batch_size)
    stds = unit_noise_stds(model, [unit], settings)
    restorations = [(), *((state,) for state in prompt_states(model, unit, ("resnet", "self_attn", "cross_attn", "ff"),
                                                                ("self_attn", "mlp")))]
    generate(model, [unit.prompt] * 2, [unit.seed] * 2, steps=2)  # warm-up
    (clean, (batched,)), batched_time = timed(
        lambda: batched_scores(model, scorer, [unit], [restorations], settings, stds))
    (serial_clean, serial), serial_time = timed(
        lambda: serial_scores(model, scorer, unit, restorations, settings, stds))
    difference = max(abs(a - b) for a, b in zip([*clean, *batched], [serial_clean, *serial], strict=True))
    print(f"organism on {model.device} ({model.dtype}), {torch.get_num_threads()} threads; {cfg.steps} steps, "
          f"CFG {cfg.guidance}; {len(restorations) - 1} states + the corrupted run of {unit.prompt!r}")
    print(f"batched (batches of {cfg.batch_size} rows): {batched_time:7.2f} s")
    print(f"serial  (one [clean, restored] generation per state): {serial_time:7.2f} s")
    print(f"speed-up: {serial_time / batched_time:.2f}x; largest score difference: {difference:.2e}")


if __name__ == "__main__":
    main()
