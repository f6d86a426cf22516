"""Every edit method on the organism, scored by its exact oracle: the organism's ground truth for the methods.

- TIME "an apple" -> "a blue apple": efficacy (train templates read blue), generality (held-out templates),
  specificity (the other objects keep their default colors; the ball, blue by default, is left out: a leak of
  blue could not show on it); at the paper's lambda 0.1, at lambda 100, and at 0.1
  with preserved prompts (the other objects in a style context, the kings; none of them measured).
- UCE erase: Velmor's style (stripes) mapped to the plain object, Quessa's preserved: efficacy (Velmor prompts
  of held-out objects read plain), specificity (Quessa prompts still read checker).
- UCE debias: "a doctor" (planted 90% blue) over red / blue: the split after debiasing.
- DiffQuickFix and ReFACT "the king of Zarnia" -> "a blue box": efficacy (the king reads a blue square),
  specificity (the other kings keep their shape and color); DiffQuickFix at the paper's lambda 0.01, at 1, and
  at 0.01 preserving unrelated prompts (the objects, the roles).
- LOCOEDIT "X in the style of Velmor" -> "X" at LOCOGEN's chosen window (styles: 5,6) against a control window.
- Reach: which of the king's text positions the UNet reads the fact from. The text conditioning every
  cross-attention layer receives at the subject token, the end token, the padding after it, or both is replaced
  by "a blue box"'s at the paired positions (conditional branch only), and the oracle reads the images: an edit
  can only work through positions that carry the fact.

    python scripts/organism_edits.py [--seeds 16] [--device cuda]
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import pandas as pd
import torch

import locoedit
from localize import generate, load_model
from localize.conditioning import text_contexts
from localize.organism.oracle import read_images
from localize.organism.world import FACTS, HELD_OUT_TEMPLATES, OBJECTS, TRAIN_TEMPLATES, article
from localize.patches import Patch
from locoedit.debias import organism_classifier
from locoedit.text_encoder import subject_positions


def read(model, prompts, seeds, edit=None) -> pd.DataFrame:
    rows = [(p, s) for p in prompts for s in seeds]
    with edit.applied(model) if edit is not None else nullcontext():
        images = generate(model, [p for p, _ in rows], [s for _, s in rows], steps=25, guidance=7.5)
    return read_images(images).assign(prompt=[p for p, _ in rows])


def share(table: pd.DataFrame, **wanted) -> float:
    hit = pd.Series(True, index=table.index)
    for column, value in wanted.items():
        hit &= table[column] == value
    return float(hit.mean())


def phrase(noun: str) -> str:
    return f"{article(noun)} {noun}"


def reach(model, source: str, destination: str, subject: str, destination_subject: str, seeds) -> dict[str, float]:
    """Share of images read as the destination's (shape, color) when the source's text conditioning takes the
    destination's values at the subject token, the end token, the padding after it, or both (every
    cross-attention layer, conditional branch)."""
    context = text_contexts(model, [destination])[0]
    src, dst = subject_positions(model, 0, [source], [destination], subject, destination_subject)[0]
    wanted = read(model, [destination], seeds[:1])[["shape", "color"]].iloc[0].to_dict()
    shares = {}
    for span, chosen in (("subject", slice(0, 1)), ("end token", slice(1, 2)), ("padding", slice(2, None)),
                         ("end token and padding", slice(1, None))):
        value = torch.zeros_like(context)
        value[list(src[chosen])] = context[list(dst[chosen])]
        patches = [Patch(f"cross_attn.{k}.context", "replace", value, tokens=tuple(src[chosen]), branch="cond")
                   for k in range(len(model.cross_attention_layers))]
        images = generate(model, [source] * len(seeds), seeds, steps=25, guidance=7.5, patches=patches)
        shares[span] = share(read_images(images), **wanted)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    model = load_model("organism", device=args.device)
    seeds = list(range(args.seeds))
    results = []

    def record(method, measure, value, goal=None, **extra):
        results.append({"method": method, "measure": measure, "value": value, "goal": goal, **extra})
        print(f"{method:12s} {measure:28s} {value:6.2f}" + (f"  (goal {goal})" if goal else "") +
              (f"  {extra}" if extra else ""))

    train = [t.format("an apple") for t in TRAIN_TEMPLATES]
    held_out = [t.format("an apple") for t in HELD_OUT_TEMPLATES]
    others = [t.format(phrase(n)) for n, (_, color) in OBJECTS.items() if n != "apple" and color != "blue"
              for t in TRAIN_TEMPLATES[:2]]
    # Preserved prompts (an option beyond the paper): the other objects in another context than the measured one,
    # and the kings; none of them is a measured prompt.
    preserve = [f"{phrase(n)} in the style of Quessa" for n in OBJECTS if n != "apple"] + [
        f"the king of {c}" for c in FACTS]
    for lam, kept_prompts in ((0.1, ()), (100.0, ()), (0.1, preserve)):
        edit = locoedit.edit(model, "time", source="an apple", destination="a blue apple", lam=lam,
                             preserve=kept_prompts)
        label = {"lam": lam, "preserved": len(kept_prompts)}
        record("time", "efficacy", share(read(model, train, seeds, edit), color="blue"), ">= 0.8", **label)
        record("time", "generality", share(read(model, held_out, seeds, edit), color="blue"), ">= 0.7", **label)
        table = read(model, others, seeds, edit)
        kept = table.apply(lambda r: r["color"] == OBJECTS[r["prompt"].split()[-1]][1], axis=1).mean()
        record("time", "specificity", float(kept), ">= 0.9", **label)

    objects = list(OBJECTS)
    edited, held = objects[:3], objects[3:]
    concepts = [f"{phrase(n)} in the style of Velmor" for n in edited]
    preserve = [f"{phrase(n)} in the style of Quessa" for n in objects]
    edit = locoedit.edit(model, "uce", concepts=concepts, guides=[phrase(n) for n in edited], preserve=preserve)
    velmor = read(model, [f"{phrase(n)} in the style of Velmor" for n in held], seeds, edit)
    record("uce-erase", "efficacy (held-out objects)", share(velmor, texture="plain"))
    record("uce-erase", "Quessa kept", share(read(model, preserve, seeds, edit), texture="checker"))

    attributes = ["a red doctor", "a blue doctor"]
    before = read(model, ["a doctor"], seeds)
    record("uce-debias", "red share before", share(before, color="red"))
    edit = locoedit.edit(model, "uce", mode="debias", concept="a doctor", attributes=attributes,
                         classify=organism_classifier(attributes), seeds=range(100, 100 + args.seeds))
    after = read(model, ["a doctor"], seeds, edit)
    record("uce-debias", "red share after (new seeds)", share(after, color="red"), "0.4-0.6",
           rounds=len(edit.info["history"]))

    kings = [t.format("the king of Zarnia") for t in TRAIN_TEMPLATES]
    other_kings = [t.format(f"the king of {c}") for c in FACTS if c != "Zarnia" for t in TRAIN_TEMPLATES[:2]]
    unrelated = [phrase(n) for n in OBJECTS] + ["a doctor", "a nurse"]
    for method, params in (("diffquickfix", {}), ("diffquickfix", {"lam": 1.0}),
                           ("diffquickfix", {"preserve": unrelated}), ("refact", {"layer": 0}),
                           ("refact", {"layer": 1})):
        edit = locoedit.edit(model, method, source="the king of Zarnia", destination="a blue box",
                             subject="Zarnia", destination_subject="box", **params)
        label = {k: len(v) if isinstance(v, (list, tuple)) else v for k, v in edit.params.items()
                 if k in ("lam", "layer", "preserve") and v is not None}
        record(method, "efficacy (blue square)", share(read(model, kings, seeds, edit), shape="square",
                                                        color="blue"), **label)
        table = read(model, other_kings, seeds, edit)
        kept = table.apply(lambda r: (r["shape"], r["color"]) == FACTS[r["prompt"].split()[-1]], axis=1).mean()
        record(method, "specificity (other kings)", float(kept), **label)
        if method == "refact":
            first, last = edit.info["mismatch"]
            record(method, "end-span mismatch, first step", first, **label)
            record(method, "end-span mismatch, last step", last, **label)
    for span, value in reach(model, "the king of Zarnia", "a blue box", "Zarnia", "box", seeds).items():
        record("reach", f"fact read at {span}", value)

    velmor_all = [f"{phrase(n)} in the style of Velmor" for n in objects]
    for window in ((5, 6), (0, 1), (8, 9)):
        edit = locoedit.edit(model, "locoedit", source=velmor_all[:3], destination=[phrase(n) for n in edited],
                             layers=list(window))
        table = read(model, velmor_all[3:], seeds, edit)
        record("locoedit", "style removed (held-out)", share(table, texture="plain"), window=str(window))
    pd.DataFrame(results).to_csv("organism_edits.csv", index=False)


if __name__ == "__main__":
    main()
