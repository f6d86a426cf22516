"""How well one LOCOEDIT closed form holds across a DiT's timesteps: the gap left per step, fitted and held out.

LOCOEDIT on a DiT (`locoedit.dit_blocks`) gathers its keys from generations at `--key-seeds`; the gap left is
||W' K' - W T|| / ||W K - W T|| over the chosen blocks' add_k_proj and add_v_proj, per step: on the key seeds'
own rows (`fit`) and with the edited model generating the source at `--held-out-seeds` (`held_out`). 0 = the
source projects exactly as the destination, 1 = unchanged. Runs on each family's tiny random model (offline), or
on a local copy of real weights with `--model-dir` (one family).

    python scripts/dit_locoedit_gap.py [--families flux sd3] [--steps 4] [--lams 0.01 0.1]
"""

from __future__ import annotations

import argparse

import pandas as pd

from localize import load_model, random_model
from locoedit import edit

GUIDANCE = {"flux": 3.5, "sd3": 4.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["flux", "sd3"], choices=sorted(GUIDANCE))
    parser.add_argument("--model-dir", help="a local diffusers directory of the (one) family instead of tiny weights")
    parser.add_argument("--source", default="a photo of a cat")
    parser.add_argument("--destination", default="a photo of a dog")
    parser.add_argument("--blocks", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--key-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--held-out-seeds", nargs="+", type=int, default=[7, 8])
    parser.add_argument("--lams", nargs="+", type=float, default=[0.01, 0.1])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.model_dir and len(args.families) != 1:
        parser.error("--model-dir takes one family")
    rows = []
    for family in args.families:
        model = (load_model(args.model_dir, device=args.device) if args.model_dir
                 else random_model(family, "tiny", device=args.device))
        for lam in args.lams:
            result = edit(model, "locoedit", source=args.source, destination=args.destination, layers=args.blocks,
                          lam=lam, templates=[], key_seeds=args.key_seeds, steps=args.steps,
                          guidance=GUIDANCE[family], held_out_seeds=args.held_out_seeds)
            gaps = result.info["gap_left"]
            for step, (fit, held_out) in enumerate(zip(gaps["fit"], gaps["held_out"], strict=True)):
                rows.append({"family": family, "lambda": lam, "step": step, "fit": fit, "held_out": held_out,
                             "key rows per block": result.info["key_rows_per_block"]})
    table = pd.DataFrame(rows)
    print(f"LOCOEDIT {args.source!r} -> {args.destination!r}, blocks {args.blocks}, {args.steps} steps, key seeds "
          f"{args.key_seeds}, held-out seeds {args.held_out_seeds}: gap left per step (0 = the destination's "
          "projections, 1 = unchanged)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
