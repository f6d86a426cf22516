"""TIME and UCE edit speed on the full-size random SD 1.5 model, against diffusers' TIME pipeline and the floor.

TIME: `locoedit.edit(model, "time", ...)` against diffusers' `StableDiffusionModelEditingPipeline.edit_model`
(layer lists rebuilt, `locoedit.peers.time_peer`) on the same weights, and against the floor: encoding the edit's
8 prompts (source and destination with TIME's 3 templates) in one batch; every side warmed up once, then the
median of `--repeats` runs. Prints the ratios. TIME is timed with an empty text-context cache
(`Model.context_cache`), as a first edit is. UCE: 100 erased concepts and 1000 preserved prompts in one edit,
split into encoding and solving; then a second edit of 100 other concepts with the same preserved prompts,
which the cache spares from encoding them again.

    python scripts/bench_edit.py [--device cuda] [--dtype fp16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarking import timed  # noqa: E402

import locoedit  # noqa: E402
from localize import random_model  # noqa: E402
from localize.conditioning import encode_contexts  # noqa: E402
from locoedit.peers import time_peer  # noqa: E402
from locoedit.prompts import TIME_TEMPLATES, augmented_pairs  # noqa: E402

SOURCE, DESTINATION = "a pack of roses", "a pack of blue roses"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = random_model("sd1", "full", device=args.device, dtype=args.dtype)
    print(f"full-size random SD 1.5 on {args.device} ({args.dtype}), torch threads {torch.get_num_threads()}")

    prompts = [p for pair in zip(*augmented_pairs(SOURCE, DESTINATION, TIME_TEMPLATES), strict=True) for p in pair]
    encode = torch.no_grad()(lambda texts: encode_contexts(model, texts))  # never cached
    encode(prompts)  # warm-up
    floor = statistics.median(timed(lambda: encode(prompts))[1] for _ in range(args.repeats))

    def edit():
        model.context_cache.clear()
        return locoedit.edit(model, "time", source=SOURCE, destination=DESTINATION)

    edit()
    ours = statistics.median(timed(edit)[1] for _ in range(args.repeats))
    result = edit()
    applied = timed(lambda: result.apply(model))[1]
    result.revert(model)
    print(f"TIME: encode {len(prompts)} prompts (floor) {floor:.3f} s | localize edit {ours:.3f} s "
          f"({ours / floor:.2f}x the floor) | apply {applied:.3f} s | report {result.report(model)}")
    if args.dtype in ("fp32", "float32"):
        peer = time_peer(model)  # each edit_model call restarts from the original weights
        peer.edit_model(SOURCE, DESTINATION)  # warm-up, as for localize's edit
        theirs = statistics.median(timed(lambda: peer.edit_model(SOURCE, DESTINATION))[1]
                                   for _ in range(args.repeats))
        print(f"TIME peer (diffusers edit_model, fixed): {theirs:.2f} s -> localize is {theirs / ours:.1f}x faster")
        del peer

    concepts = [f"a painting in the style of artist number {i}" for i in range(100)]
    others = [f"a painting in the style of artist number {i}" for i in range(100, 200)]
    preserved = [f"a photo of object number {i} on a table" for i in range(1000)]
    uce = lambda erased: locoedit.edit(model, "uce", concepts=erased, guides="a painting",  # noqa: E731
                                       preserve=preserved)
    model.context_cache.clear()
    uce_edit, first = timed(lambda: uce(concepts))
    encoding = timed(lambda: encode(concepts + ["a painting"] + preserved))[1]
    _, second = timed(lambda: uce(others))
    print(f"UCE: 100 erased + 1000 preserved: {first:.2f} s in all, of which encoding the 1101 prompts takes "
          f"{encoding:.2f} s; rank {uce_edit.rank}, {len(uce_edit.updates)} weights")
    print(f"UCE: a second edit, 100 other concepts with the same 1000 preserved: {second:.2f} s "
          f"({first / second:.1f}x faster than the first; the cache held {len(model.context_cache)} prompts)")


if __name__ == "__main__":
    main()
