"""Every edit method on the organism at its paper's own settings, read by the exact oracle, and the same checks
on deliberately broken edits: the organism's ground truth for the methods.

Cases (16 seeds, 25 DDIM steps, CFG 7.5 unless --seeds says otherwise):

- TIME (lambda 0.1, no preservation) "a box" -> "a blue box": efficacy (train templates draw a blue
  square on the plain background), generality (held-out templates TIME does not augment with), specificity
  (the other objects whose default is not blue keep their whole drawing).
- DiffQuickFix (lambda 0.01, layer 0) and ReFACT (its default layer; the conditioning objective, no clamp, no
  penalty: `REFACT_ORGANISM`) "the king of Zarnia" -> "a blue box": efficacy (the king draws a blue square),
  specificity (the other seven kings keep their drawing). ReFACT's paper defaults (contrastive objective on the
  pooled feature, the authors' clamp and penalty) and the authors' attended-token covariance are read beside it.
- UCE erase with preservation: Velmor's style (stripes) on three objects mapped to the plain objects, the other
  artists' prompts preserved: erased (Velmor on the other objects draws plain), preserved (the other artists'
  styles kept). UCE debias: "a doctor" (planted 90% blue) to 50/50 red / blue, searched on 64 seeds and read
  on 64 others (--bias-seeds).
- LOCOEDIT "X in the style of Velmor" -> "X" at the window LOCOGEN chooses for styles, against two control
  windows: style removed on held-out objects, and the other artists' styles kept.
- Discrimination: the same checks on broken variants of each edit: the update scaled by 0.2 and by 5, an
  update of the same rank and singular values along random key directions, TIME without token alignment, and
  DiffQuickFix with the layer's bias counted twice. Each must be caught (fail at least one check). Beside them,
  a diagnostic: DiffQuickFix without the templates it augments with (`templates=()`).
- Geometry: the effective rank of TIME's keys, and the share of other prompts' keys inside their span; how far
  DiffQuickFix's update moves the other kings' conditioning, as a share of the edited king's.
- Subject swap: every text-encoder state of the king's prompt up to its last subject token, after layer L (or at
  the embeddings), replaced by another king's: the share of images that then draw the other king.
- Reach: the king's text conditioning replaced by another king's at some positions only (first or last subject
  token, end token, padding): where the UNet reads the fact.

    python scripts/organism_edits.py [--seeds 16] [--bias-seeds 64] [--device cuda] [--out organism_edits.csv]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch

import locoedit
from localize import generate, load_model
from localize.conditioning import text_contexts
from localize.organism.oracle import color_classifier, read_images
from localize.organism.world import (
    ARTISTS,
    FACTS,
    HELD_OUT_TEMPLATES,
    OBJECTS,
    SWAP_PAIRS,
    TRAIN_TEMPLATES,
    article,
)
from localize.patches import Patch
from localize.tokens import last_subject_token, phrase_positions
from locoedit.cross_attention import PromptPair, pair_rows, solve_projections
from locoedit.edits import Edit, WeightUpdate
from locoedit.methods import chosen_layers
from locoedit.prompts import TIME_TEMPLATES, augmented_pairs

GOALS = {"time": {"efficacy": 0.8, "generality": 0.7, "specificity": 0.8},
         "diffquickfix": {"efficacy": 0.8, "specificity": 0.8},
         "refact": {"efficacy": 0.7, "specificity": 0.8},
         "uce": {"efficacy": 0.9, "specificity": 0.9},
         "locoedit": {"efficacy": 0.8, "specificity": 0.8}}
STEPS, GUIDANCE = 25, 7.5
# ReFACT on the organism: the conditioning objective, unclamped and unpenalized (the paper's contrastive objective
# and the authors' clamp are measured beside it as variants)
REFACT_ORGANISM = {"objective": "conditioning", "weight_decay": 0.0, "clamp_norm": None}


def phrase(noun: str) -> str:
    return f"{article(noun)} {noun}"


def read(model, prompts, seeds, edit: Edit | None = None, patches=()) -> pd.DataFrame:
    """The oracle's reading of every (prompt, seed), with the edit applied (and reverted after)."""
    rows = [(p, s) for p in prompts for s in seeds]
    with edit.applied(model) if edit is not None else nullcontext():
        images = generate(model, [p for p, _ in rows], [s for _, s in rows], steps=STEPS, guidance=GUIDANCE,
                          patches=patches)
    return read_images(images).assign(prompt=[p for p, _ in rows])


def share(table: pd.DataFrame, wanted) -> float:
    """Share of rows whose (shape, color, texture) equals `wanted(prompt)` (a tuple, None entries ignored)."""
    def hit(row):
        return all(w is None or row[c] == w for c, w in zip(("shape", "color", "texture"), wanted(row["prompt"]),
                                                             strict=True))
    return float(table.apply(hit, axis=1).mean())


def blue_square(prompt: str) -> tuple:
    return ("square", "blue", "plain")


def king(country: str):
    """The drawing wanted of any prompt: the king of `country`'s."""
    return lambda prompt: (*FACTS[country], "plain")


def default_drawing(prompt: str) -> tuple:
    noun = prompt.split()[-1]
    return (*OBJECTS[noun], "plain")


def king_drawing(prompt: str) -> tuple:
    return (*FACTS[prompt.split()[-1]], "plain")


def styled_drawing(prompt: str) -> tuple:
    words = prompt.split()
    return (*OBJECTS[words[words.index("in") - 1]], ARTISTS[words[-1]])


# ---- broken variants ------------------------------------------------------------------------------------------

def variant(edit: Edit, name: str, updates: dict[str, WeightUpdate]) -> Edit:
    return Edit(edit.method, edit.family, {**edit.params, "variant": name}, updates)


def scaled(edit: Edit, factor: float) -> Edit:
    return variant(edit, f"update x {factor:g}", {a: WeightUpdate(u.up * factor, u.down, u.base_hash)
                                                    for a, u in edit.updates.items()})


def random_directions(edit: Edit, seed: int = 0) -> Edit:
    """Each update U S V^T with V replaced by random orthonormal key directions (one draw per input width):
    the same rank and singular values, aimed at keys the method did not choose."""
    generator = torch.Generator().manual_seed(seed)
    bases: dict[int, torch.Tensor] = {}
    updates = {}
    for address, update in edit.updates.items():
        delta = (update.up.double() @ update.down.double())
        u, s, _ = torch.linalg.svd(delta, full_matrices=False)
        rank = int((s > 1e-6 * s[0]).sum())
        width = delta.shape[1]
        if width not in bases:
            bases[width] = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))[0]
        updates[address] = WeightUpdate((u[:, :rank] * s[:rank]).float(), bases[width][:, :rank].T.float(),
                                        update.base_hash)
    return variant(edit, "random key directions", updates)


def time_without_alignment(model, source: str, destination: str, lam: float) -> Edit:
    """TIME with source position i paired to destination position i (no token alignment)."""
    src, dst = augmented_pairs(source, destination, TIME_TEMPLATES)
    length = model.spec.max_tokens
    pairs = [PromptPair(s, d, tuple(range(length)), tuple(range(length))) for s, d in zip(src, dst, strict=True)]
    updates = solve_projections(model, None, pair_rows(model, pairs), lam)
    return Edit("time", model.family, {"source": source, "destination": destination, "lam": lam,
                                       "variant": "no token alignment"}, updates)


# ---- the cases ------------------------------------------------------------------------------------------------

class Cases:
    """Each method's case: how to compute its edit and how to check one."""

    def __init__(self, model, seeds):
        self.model, self.seeds = model, seeds
        self.box_train = [t.format("a box") for t in TRAIN_TEMPLATES]
        augmenting = {t.strip().lower() for t in TIME_TEMPLATES}
        self.box_held_out = [t.format("a box") for t in HELD_OUT_TEMPLATES if t.format("").strip() not in augmenting]
        self.other_objects = [t.format(phrase(n)) for n, (_, color) in OBJECTS.items()
                              if n != "box" and color != "blue" for t in TRAIN_TEMPLATES[:1]]
        self.kings = [t.format("the king of Zarnia") for t in TRAIN_TEMPLATES]
        self.other_kings = [t.format(f"the king of {c}") for c in FACTS if c != "Zarnia" for t in TRAIN_TEMPLATES[:1]]
        objects = list(OBJECTS)
        self.edited_objects, self.held_objects = objects[:3], objects[3:9]
        self.velmor_held = [f"{phrase(n)} in the style of Velmor" for n in self.held_objects]
        others = [a for a in ARTISTS if a != "Velmor"]
        self.other_styles = [f"{phrase(n)} in the style of {a}" for i, n in enumerate(self.held_objects)
                             for a in others[i % 2::2]]

    def check(self, method: str, edit: Edit) -> dict[str, float]:
        model, seeds = self.model, self.seeds
        if method == "time":
            return {"efficacy": share(read(model, self.box_train, seeds, edit), blue_square),
                    "generality": share(read(model, self.box_held_out, seeds, edit), blue_square),
                    "specificity": share(read(model, self.other_objects, seeds, edit), default_drawing)}
        if method in ("diffquickfix", "refact"):
            return {"efficacy": share(read(model, self.kings, seeds, edit), blue_square),
                    "specificity": share(read(model, self.other_kings, seeds, edit), king_drawing)}
        if method in ("uce", "locoedit"):
            plain = lambda prompt: (*OBJECTS[prompt.split()[1]], "plain")  # noqa: E731
            return {"efficacy": share(read(model, self.velmor_held, seeds, edit), plain),
                    "specificity": share(read(model, self.other_styles, seeds, edit), styled_drawing)}
        raise ValueError(method)

    def edit(self, method: str, **params) -> Edit:
        model = self.model
        if method == "time":
            return locoedit.edit(model, "time", source="a box", destination="a blue box", **params)
        if method in ("diffquickfix", "refact"):
            return locoedit.edit(model, method, source="the king of Zarnia", destination="a blue box",
                                 subject="Zarnia", destination_subject="box", **params)
        velmor = [f"{phrase(n)} in the style of Velmor" for n in self.edited_objects]
        plain = [phrase(n) for n in self.edited_objects]
        if method == "uce":
            preserve = [f"{phrase(n)} in the style of {a}" for n in self.edited_objects for a in ARTISTS
                        if a != "Velmor"]
            return locoedit.edit(model, "uce", concepts=velmor, guides=plain, preserve=preserve, **params)
        return locoedit.edit(model, "locoedit", source=velmor, destination=plain, **params)


def passes(method: str, readings: dict[str, float]) -> bool:
    return all(readings[k] >= goal for k, goal in GOALS[method].items())


# ---- geometry and the subject swap ----------------------------------------------------------------------------

def effective_rank(matrix: torch.Tensor) -> float:
    """exp of the entropy of the normalized singular values (Roy and Vetterli)."""
    s = torch.linalg.svdvals(matrix.double())
    p = s / s.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum()))


def time_geometry(model, others: list[str], lam: float = 0.1) -> dict[str, float]:
    """TIME's keys for "a box" (its templated prompts, every position): their effective rank, the number of
    directions the ridge solve fits (squared singular value above lambda: the edited subspace), and the share
    of other prompts' keys inside that subspace (squared norm share, all positions and the last word)."""
    src, _ = augmented_pairs("a box", "a blue box", TIME_TEMPLATES)
    keys = text_contexts(model, src).flatten(0, 1).double()
    _, s, vh = torch.linalg.svd(keys, full_matrices=False)
    basis = vh[s.pow(2) > lam]
    other = text_contexts(model, others).double()
    words = torch.stack([other[i, last_subject_token(model.tokenizer, p, p.split()[-1])]
                         for i, p in enumerate(others)])

    def inside(vectors):
        return float(((vectors @ basis.T).pow(2).sum(-1) / vectors.pow(2).sum(-1)).mean())

    return {"keys": len(keys), "width": keys.shape[1], "effective rank": effective_rank(keys),
            "edited directions (s^2 > lambda)": len(basis), "share inside (all positions)": inside(other.flatten(0, 1)),
            "share inside (last word)": inside(words)}


def conditioning_moved(model, edit: Edit, prompts: list[str]) -> torch.Tensor:
    """Per prompt [N, tokens]: the norm of the change of its text conditioning under the edit, per position."""
    before = text_contexts(model, prompts).double()
    with edit.applied(model):
        after = text_contexts(model, prompts).double()
    return (after - before).norm(dim=-1)


def diffquickfix_spill(model, edit: Edit) -> tuple[pd.DataFrame, float]:
    """How far DiffQuickFix's update moves each king's text conditioning (norm of the change over all positions)
    as a share of how far it moves the edited king's (the first row), and the share of the edited king's change
    that falls on "the king of" (start token included): tokens every king's prompt shares, which a causal
    encoder computes the same way before the name."""
    kings = [f"the king of {country}" for country in FACTS]
    change = conditioning_moved(model, edit, kings)
    prefix = len(phrase_positions(model.tokenizer, kings[0], "the king of")) + 1
    whole = change.norm(dim=1)
    shared = change[0, :prefix].norm() / whole[0]
    table = pd.DataFrame({"prompt": kings, "moved (share of the edited king's)": (whole / whole[0]).tolist()})
    return table, float(shared)


def empty_prompt_reach(model, edits: dict[str, Edit]) -> pd.DataFrame:
    """How far each edit moves the empty prompt's conditioning (classifier-free guidance's unconditional half)
    and another king's, as a share of how far it moves the edited king's (norms over all positions)."""
    rows = []
    for name, edit in edits.items():
        moved = conditioning_moved(model, edit, ["the king of Zarnia", "", "the king of Brovia"]).norm(dim=1)
        rows.append({"edit": name, "empty prompt": float(moved[1] / moved[0]),
                     "the king of Brovia": float(moved[2] / moved[0])})
    return pd.DataFrame(rows)


def subject_swap(model, seeds, pairs=SWAP_PAIRS) -> pd.DataFrame:
    """Share of images drawing the other king when every state up to the last subject token is the other
    king's, at the embeddings or after layer L (both names have the same token count)."""
    encoder = model.text_encoders[0]
    layers = ["embeddings", *range(sum(entry.encoder == 0 for entry in model.text_encoder_layers))]
    hits = {layer: [] for layer in layers}
    for country, other in pairs:
        source = f"the king of {country}"
        tokens = tuple(range(phrase_positions(model.tokenizer, source, country)[-1] + 1))
        ids = model.tokenizer([f"the king of {other}"], padding="max_length", max_length=model.spec.max_tokens,
                              return_tensors="pt").input_ids.to(model.device)
        with torch.no_grad():
            states = encoder(ids, output_hidden_states=True).hidden_states  # [embeddings, layer 0, ...]
        for index, layer in enumerate(layers):
            site = "text_encoder.0.embeddings" if layer == "embeddings" else f"text_encoder.0.layers.{layer}"
            patch = Patch(site, "replace", states[index][0].clone(), tokens=tokens, branch="cond")
            hits[layer].append(share(read(model, [source], seeds, patches=[patch]), king(other)))
    return pd.DataFrame({"layer": layers, "other king drawn": [sum(h) / len(h) for h in hits.values()]})


def run_locogen_on_styles() -> Path:
    """`localize locogen prompts=organism_styles` (its window search defaults, no neuron curves) in a temporary
    directory: its results file."""
    out = Path(tempfile.mkdtemp(prefix="organism_locogen_"))
    command = [str(Path(sys.executable).parent / "localize"), "locogen", "prompts=organism_styles",
               "neurons.enabled=false", f"hydra.run.dir={out}"]
    subprocess.run(command, check=True)
    return out / "results.parquet"


def reach(model, seeds, pairs=SWAP_PAIRS) -> pd.DataFrame:
    """Where the UNet reads a fact: the king's text conditioning, at every cross-attention layer (conditional
    half), takes another king's values at some positions only; the share of images that then draw the other
    king. Positions: the first subject token, the last subject token, the end token, the padding after it."""
    rows = []
    for country, other in pairs:
        source = f"the king of {country}"
        subject = phrase_positions(model.tokenizer, source, country)
        end = subject[-1] + 1
        positions = {"first subject token": [subject[0]], "last subject token": [subject[-1]], "end token": [end],
                     "padding": list(range(end + 1, model.spec.max_tokens)),
                     "end token and padding": list(range(end, model.spec.max_tokens))}
        value = text_contexts(model, [f"the king of {other}"])[0]
        for span, tokens in positions.items():
            patches = [Patch(f"cross_attn.{k}.context", "replace", value, tokens=tuple(tokens), branch="cond")
                       for k in range(len(model.cross_attention_layers))]
            table = read(model, [source], seeds, patches=patches)
            rows.append({"span": span, "pair": f"{country}<-{other}", "other king drawn": share(table, king(other))})
    return pd.DataFrame(rows).groupby("span", sort=False)["other king drawn"].mean().reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--bias-seeds", type=int, default=64,
                        help="seeds of UCE debias's search and of its reading (a share's standard error is "
                             "0.5 / sqrt(seeds) at 50/50)")
    parser.add_argument("--out", default="organism_edits.csv")
    parser.add_argument("--locogen-results", default="",
                        help="LOCOGEN's results.parquet for the organism's styles (default: run `localize locogen`)")
    args = parser.parse_args()
    model = load_model("organism", device=args.device)
    seeds = list(range(args.seeds))
    cases = Cases(model, seeds)
    records = []

    def measure(method, name, edit):
        readings = cases.check(method, edit)
        ok = passes(method, readings)
        records.append({"method": method, "variant": name, **readings, "passes": ok})
        shown = "  ".join(f"{k} {v:.2f}" for k, v in readings.items())
        print(f"{method:12s} {name:26s} {shown}  {'PASSES' if ok else 'fails'}", flush=True)

    windows = {"chosen": chosen_layers(args.locogen_results or run_locogen_on_styles())}
    n = len(model.cross_attention_layers)
    width = len(windows["chosen"])
    controls = [list(range(0, width)), list(range(n - width, n))]
    windows.update({f"control {c}": c for c in controls if c != windows["chosen"]})

    edits = {"time": cases.edit("time", lam=0.1), "diffquickfix": cases.edit("diffquickfix", lam=0.01),
             "refact": cases.edit("refact", **REFACT_ORGANISM), "uce": cases.edit("uce"),
             "locoedit": cases.edit("locoedit", layers=windows["chosen"])}
    for method, edit in edits.items():
        measure(method, "correct", edit)
        measure(method, "update x 0.2", scaled(edit, 0.2))
        measure(method, "update x 5", scaled(edit, 5.0))
        measure(method, "random key directions", random_directions(edit))
    measure("time", "no token alignment", time_without_alignment(model, "a box", "a blue box", 0.1))
    measure("diffquickfix", "bias counted twice", cases.edit("diffquickfix", lam=0.01, bias="twice"))
    measure("diffquickfix", "no template augmentation", cases.edit("diffquickfix", lam=0.01, templates=()))
    refact_variants = {"contrastive objective": cases.edit("refact"),  # the paper's defaults
                       "attended-token covariance": cases.edit("refact", **REFACT_ORGANISM,
                                                               covariance_tokens="attended")}
    for name, edit in refact_variants.items():
        measure("refact", name, edit)
    for name, layers in windows.items():
        if name != "chosen":
            measure("locoedit", f"window {layers}", cases.edit("locoedit", layers=layers))

    attributes = ["a red doctor", "a blue doctor"]
    bias_seeds = list(range(args.bias_seeds))
    before = read(model, ["a doctor"], bias_seeds)
    debias = locoedit.edit(model, "uce", mode="debias", concept="a doctor", attributes=attributes,
                           classify=color_classifier(attributes), seeds=range(1000, 1000 + args.bias_seeds))
    after = read(model, ["a doctor"], bias_seeds, debias)
    red = lambda prompt: ("cross", "red", "plain")  # noqa: E731
    print(f"uce debias: red share {share(before, red):.2f} before, {share(after, red):.2f} after (goal 0.40-0.60)")
    red_after = share(after, red)
    records.append({"method": "uce-debias", "variant": "correct", "red before": share(before, red),
                    "red after": red_after, "passes": 0.4 <= red_after <= 0.6})

    table = pd.DataFrame(records)
    table["caught"] = ~table["passes"].astype(bool)
    table.to_csv(args.out, index=False)
    print("\nmethod x variant (a broken variant must be caught):")
    print(table.drop(columns=["passes"]).to_markdown(index=False, floatfmt=".2f"))
    print("\nTIME's text geometry:")
    others = [phrase(n) for n in OBJECTS if n != "box"]
    print(pd.Series(time_geometry(model, others)).to_markdown(floatfmt=".3f"))
    print("\nDiffQuickFix's reach (the edited king is the first row):")
    spill, shared = diffquickfix_spill(model, edits["diffquickfix"])
    print(spill.to_markdown(index=False, floatfmt=".2f"))
    print(f'share of the edited king\'s change on the shared tokens "the king of": {shared:.2f}')
    print("\nReFACT's reach on the empty prompt (a share of the edited king's change):")
    reach_table = empty_prompt_reach(model, {"correct": edits["refact"], **refact_variants})
    print(reach_table.to_markdown(index=False, floatfmt=".2f"))
    print("\nsubject swap per text-encoder layer:")
    swap = subject_swap(model, seeds)
    print(swap.to_markdown(index=False, floatfmt=".2f"))
    swap.to_csv(args.out.replace(".csv", "_swap.csv"), index=False)
    print("\nwhere the UNet reads the fact (another king's conditioning at some positions only):")
    read_at = reach(model, seeds)
    print(read_at.to_markdown(index=False, floatfmt=".2f"))
    read_at.to_csv(args.out.replace(".csv", "_reach.csv"), index=False)


if __name__ == "__main__":
    main()
