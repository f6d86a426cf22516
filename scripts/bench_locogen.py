"""LOCOGEN's window search, batched against the reference's one-generation-per-window loop, in one process.

    python scripts/bench_locogen.py                      # the organism, one prompt x seed, m=2, 25 steps
    python scripts/bench_locogen.py m=3 device=cuda dtype=fp16

- batched: `batched_window_scores`, the altered row, the original row and every window as rows of batches of
  `batch_size` rows;
- serial: `serial_window_scores`, what the reference does: the altered conditioning computed once, then one
  generation per window (the original prompt, the window layers' conditioning replaced).
Prints both wall times (the batched one also generates the original and altered prompts), their ratio and the
largest score difference. A warm-up generation runs first.
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
import torch
from benchmarking import BenchSettings, timed
from hydra.core.config_store import ConfigStore

from localize import generate, load_model
from localize.scoring import ClipScorer
from locogen.layer_search import SearchSettings, Unit, batched_window_scores, serial_window_scores


@dataclass
class BenchConfig(BenchSettings):
    prompt: str = "a photo of a ball in the style of Velmor"
    altered: str = "a photo of a ball"
    text: str = "a ball in the style of Velmor"
    m: int = 2


ConfigStore.instance().store(name="bench_locogen", node=BenchConfig)


@hydra.main(version_base=None, config_name="bench_locogen")
def main(cfg: BenchConfig) -> None:
    model = load_model("organism", device=cfg.device, dtype=cfg.dtype)
    scorer = ClipScorer("organism-clip", "organism", device=cfg.device)
    unit = Unit(cfg.prompt, cfg.altered, cfg.text, cfg.seed)
    settings = SearchSettings(m=cfg.m, steps=cfg.steps, guidance=cfg.guidance, batch_size=cfg.batch_size)
    generate(model, [unit.prompt], [unit.seed], steps=2)  # warm-up
    (_, _, (batched,)), batched_time = timed(lambda: batched_window_scores(model, scorer, [unit], settings))
    serial, serial_time = timed(lambda: serial_window_scores(model, scorer, unit, settings))
    difference = max(abs(a - b) for a, b in zip(batched, serial, strict=True))
    print(f"organism on {model.device} ({model.dtype}), {torch.get_num_threads()} threads; {cfg.steps} steps, "
          f"CFG {cfg.guidance}; {len(serial)} windows of m={cfg.m} for {unit.prompt!r}")
    print(f"batched (windows + original + altered rows): {batched_time:7.2f} s")
    print(f"serial  (one generation per window):          {serial_time:7.2f} s")
    print(f"speed-up: {serial_time / batched_time:.2f}x; largest score difference: {difference:.2e}")


if __name__ == "__main__":
    main()
