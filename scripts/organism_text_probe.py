"""Text-side probe of an organism text encoder, for comparing organism designs without training a UNet.

    python scripts/organism_text_probe.py                          # the shipped organism
    python scripts/organism_text_probe.py outputs/my_organism      # an exported weights directory

Prints, per text-encoder layer L, how far swapping every state of "the king of X" up to its last subject
token for another king's (after layer L; "embeddings" before layer 0) moves the final end token and padding
states toward the other king's: the projection of the change onto the difference of the two kings' states,
over that difference's squared norm (1: fully the other king; 0: unmoved), mean over the world's
`SWAP_PAIRS`. `scripts/organism_edits.py` measures the same swap on images. Then TIME's key
geometry ("a box" under TIME's templates, all 77 positions): edited directions (squared singular value above
lambda 0.1) and the share of the other objects' key norm inside them; and the share of the padding states'
variance that differs between the objects' prompts. Last, DiffQuickFix's keys (layer 0's attention output
projection inputs) over the kings: how much two kings' name keys overlap, how much of the other kings' name keys
lies inside the span of Zarnia's (plain prompt, and with the templates DiffQuickFix augments with), and how much
of the end span's keys differs between kings. Last, the edits themselves on the text side (the organism's UNet
with this text encoder; no image is generated): how far DiffQuickFix's update (lambda 0.01, with and without
its templates) moves each other king's conditioning as a share of the edited king's, and the same for the update
fitted at the last subject token's keys only and at the end span's only (with how far each moves the edited
king, as a share of the whole edit's move); how far counting the
layer's bias twice moves the edited king beyond the correct update; and UCE's erase as a map of the text
states (every organism cross-attention layer reads the raw context, so its update is W M for one M): how much
of held-out objects' erase distance it leaves, and how far it moves the other artists' prompts, as a share of
theirs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from localize.organism import weights
from localize.organism.world import FACTS, OBJECTS, SWAP_PAIRS, article
from localize.tokens import last_subject_token, phrase_positions
from localize.vocab import clip_tokenizer
from locoedit.edits import Edit, WeightUpdate
from locoedit.prompts import TIME_TEMPLATES, augmented_pairs
from locoedit.solver import RidgeProblem
from locoedit.text_encoder import diffquickfix_rows


def encode(encoder, tokenizer, prompts: list[str], swap=None) -> torch.Tensor:
    """Final states (N x 77 x width); `swap` = (layer index or None for the embeddings, positions, states)
    replaces those positions of that module's output."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    handle = None
    if swap is not None:
        layer, positions, states = swap
        module = encoder.embeddings if layer is None else encoder.encoder.layers[layer]

        def replace(module, args, output):
            output = output.clone()
            output[:, positions] = states[:, positions]
            return output

        handle = module.register_forward_hook(replace)
    try:
        with torch.no_grad():
            return encoder(ids.input_ids).last_hidden_state.double()
    finally:
        if handle is not None:
            handle.remove()


def subject_swap(encoder, tokenizer) -> pd.DataFrame:
    layers = [None, *range(len(encoder.encoder.layers))]
    moved = {layer: {"end token": [], "padding": []} for layer in layers}
    for country, other in SWAP_PAIRS:
        source, donor = f"the king of {country}", f"the king of {other}"
        last = phrase_positions(tokenizer, source, country)[-1]
        spans = {"end token": [last + 1], "padding": list(range(last + 2, tokenizer.model_max_length))}
        ids = tokenizer([donor], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            donor_states = encoder(ids.input_ids, output_hidden_states=True).hidden_states  # [embeddings, layers]
        plain, target = encode(encoder, tokenizer, [source])[0], encode(encoder, tokenizer, [donor])[0]
        for index, layer in enumerate(layers):
            swapped = encode(encoder, tokenizer, [source], (layer, list(range(last + 1)), donor_states[index]))[0]
            for span, positions in spans.items():
                change, gap = swapped[positions] - plain[positions], target[positions] - plain[positions]
                moved[layer][span].append(float((change * gap).sum() / gap.pow(2).sum()))
    return pd.DataFrame([{"swapped after": "embeddings" if layer is None else f"layer {layer}",
                          **{span: sum(v) / len(v) for span, v in spans.items()}}
                         for layer, spans in moved.items()])


def time_geometry(encoder, tokenizer, lam: float = 0.1) -> dict[str, float]:
    source, _ = augmented_pairs("a box", "a blue box", TIME_TEMPLATES)
    keys = encode(encoder, tokenizer, source).flatten(0, 1)
    _, singular, vh = torch.linalg.svd(keys, full_matrices=False)
    basis = vh[singular.pow(2) > lam]
    others = encode(encoder, tokenizer, [f"{article(n)} {n}" for n in OBJECTS if n != "box"])
    inside = float(((others.flatten(0, 1) @ basis.T).pow(2).sum(-1) / others.flatten(0, 1).pow(2).sum(-1)).mean())
    padding = others[:, 20:].mean(1)  # every object prompt ends well before position 20
    between = float((padding - padding.mean(0)).pow(2).sum() / padding.pow(2).sum())
    return {"edited directions (s^2 > lambda)": len(basis), "share of other keys inside": inside,
            "padding variance between prompts": between}


def diffquickfix_keys(encoder, tokenizer) -> dict[str, float]:
    """DiffQuickFix's keys, the inputs of layer 0's attention output projection, for "the king of X" over the
    world's kings: the mean |cosine| between two kings' keys at their last subject token; the share of the
    other kings' name keys (under TIME's templates too) inside the span of Zarnia's (what an update fitted to
    Zarnia's keys also moves), with the plain prompt only and with the templates DiffQuickFix augments with;
    and the share of the end-span keys' variance (positions 20 on, averaged per prompt) that differs between
    the kings."""
    kings = [f"the king of {country}" for country in FACTS]
    prompts = [template + king for king in kings for template in ("", *TIME_TEMPLATES)]
    recorded = {}
    projection = encoder.encoder.layers[0].self_attn.out_proj
    handle = projection.register_forward_pre_hook(lambda module, args: recorded.update(keys=args[0]))
    try:
        encode(encoder, tokenizer, prompts)
    finally:
        handle.remove()
    keys = recorded["keys"].double()
    names = torch.stack([keys[i, last_subject_token(tokenizer, p, p.split()[-1])] for i, p in enumerate(prompts)])
    names = names.reshape(len(kings), len(prompts) // len(kings), -1)  # king x (plain, templated...) x width
    plain = names[:, 0] / names[:, 0].norm(dim=1, keepdim=True)
    cosines = (plain @ plain.T).abs()
    off_diagonal = cosines[~torch.eye(len(kings), dtype=torch.bool)]

    def inside(fitted: torch.Tensor) -> float:
        basis = torch.linalg.svd(fitted, full_matrices=False)[2]
        others = names[1:].flatten(0, 1)
        return float(((others @ basis.T).pow(2).sum(-1) / others.pow(2).sum(-1)).mean())

    span = keys.reshape(len(kings), -1, *keys.shape[1:])[:, 0, 20:].mean(1)
    between = float((span - span.mean(0)).pow(2).sum() / span.pow(2).sum())
    return {"kings' name keys, mean |cosine|": float(off_diagonal.mean()),
            "other kings' name keys inside Zarnia's (plain prompt)": inside(names[0, :1]),
            "other kings' name keys inside Zarnia's (with templates)": inside(names[0]),
            "end-span key variance between kings": between}


def edit_cases():
    """`scripts/organism_edits.py`, whose cases the text-side edits reuse."""
    sys.path.insert(0, str(Path(__file__).parent))
    import organism_edits

    return organism_edits


def diffquickfix_halves(model, whole: Edit) -> dict[str, tuple[float, pd.Series]]:
    """DiffQuickFix's organism edit `whole` (lambda 0.01, its templates) split by its keys: the update fitted to the
    last subject token's keys only, and to the end span's only (the same targets); per half, how far it moves the
    edited king's conditioning as a share of how far the whole edit does, and how far it moves each other king's
    as a share of how far it moves the edited king's. Where the end span's layer-0 keys carry no subject, the
    end-span half maps the same keys in every prompt."""
    projection, pairs, _ = diffquickfix_rows(model, "the king of Zarnia", "a blue box", "Zarnia", "box",
                                             TIME_TEMPLATES, 0, 0, (), "last")
    cases_module = edit_cases()
    kings = [f"the king of {country}" for country in FACTS]  # the edited king first
    whole_move = cases_module.conditioning_moved(model, whole, kings[:1]).norm()
    halves = {}
    for name, part in {"last subject token": slice(0, 1), "end span": slice(1, None)}.items():
        keys, targets = (torch.cat([rows[part] for rows in side]) for side in zip(*pairs, strict=True))
        problem = RidgeProblem(keys, 0.01)
        up, down = problem.factors(problem.linear_residuals(projection.module, targets))
        edit = Edit("diffquickfix", model.family, {"keys": name},
                    {projection.address: WeightUpdate.from_factors(projection.module.weight, up, down)})
        moved = cases_module.conditioning_moved(model, edit, kings).norm(dim=1)
        halves[name] = float(moved[0] / whole_move), pd.Series((moved[1:] / moved[0]).tolist(), index=kings[1:])
    return halves


def text_edits(weights_dir: Path) -> dict[str, object]:
    """The edits' reach on the text side (see the module docstring), with `organism_edits.py`'s cases."""
    cases_module = edit_cases()
    from localize import load_model
    from localize.organism.world import ARTISTS
    from locoedit.cross_attention import identity, pair_prompts, pair_rows
    from locoedit.methods import preserved_rows, uce_kept, uce_preserve_scale, uce_rows

    model = load_model("organism")
    model.text_encoders[0].load_state_dict(weights.text_encoder(weights_dir).state_dict())
    model.context_cache.clear()
    cases = cases_module.Cases(model, [0])
    row = {}
    edits = {name: cases.edit("diffquickfix", lam=0.01, **params)
             for name, params in {"with templates": {}, "plain prompt": {"templates": ()}}.items()}
    for name, edit in edits.items():
        spill, _ = cases_module.diffquickfix_spill(model, edit)
        moved = spill.iloc[1:, 1]
        row[f"DiffQuickFix, other kings moved ({name})"] = f"{moved.min():.2f}-{moved.max():.2f}"
    for name, (own, moved) in diffquickfix_halves(model, edits["with templates"]).items():
        row[f"DiffQuickFix fitted at the {name} only: edited king moved (share of the whole edit's) / other kings"
            " (share of its)"] = f"{own:.2f} / {moved.min():.2f}-{moved.max():.2f}"
    kings = ["the king of Zarnia"]
    before = cases_module.text_contexts(model, kings).double()
    after = {}
    twice = cases.edit("diffquickfix", lam=0.01, bias="twice")
    for bias, edit in (("once", edits["with templates"]), ("twice", twice)):
        with edit.applied(model):
            after[bias] = cases_module.text_contexts(model, kings).double()
    row["bias counted twice, shift beyond the correct update"] = \
        f"{float((after['twice'] - after['once']).norm() / (after['once'] - before).norm()):.2f}"
    velmor = [f"{cases_module.phrase(n)} in the style of Velmor" for n in cases.edited_objects]
    plain = [cases_module.phrase(n) for n in cases.edited_objects]
    preserve = [f"{cases_module.phrase(n)} in the style of {a}" for n in cases.edited_objects for a in ARTISTS
                if a != "Velmor"]
    source, rows = uce_rows(model, velmor, plain, 1.0, "authors", ())
    kept = uce_kept(preserve, source, True)
    keys, targets = rows(identity)
    problem = RidgeProblem(keys, 0.5, preserved_rows(model, kept, "all")(identity)[0], uce_preserve_scale(len(kept)))
    eye = torch.eye(keys.shape[1])
    up, down = problem.factors(problem.input_residuals(eye, targets))
    update = up.double() @ down.double()

    def shares(sources: list[str]) -> tuple[float, float]:
        objects = [p.split(" in the style of")[0] for p in sources]
        k, t = (x.double() for x in pair_rows(model, pair_prompts(model, sources, objects, "final"))(identity))
        distance = (k - t).pow(2).sum()
        return float((k + k @ update.T - t).pow(2).sum() / distance), float((k @ update.T).pow(2).sum() / distance)

    row["UCE erase: held-out objects' erase distance left"] = f"{shares(cases.velmor_held)[0]:.2f}"
    row["UCE erase: other artists moved (share of their erase distance)"] = f"{shares(cases.other_styles)[1]:.2f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dir", nargs="?", default=str(weights.WEIGHTS_DIR))
    args = parser.parse_args()
    encoder = weights.text_encoder(Path(args.weights_dir)).eval()
    tokenizer = clip_tokenizer()
    print("subject swap, share of the way to the other king's final states:")
    print(subject_swap(encoder, tokenizer).to_markdown(index=False, floatfmt=".2f"))
    print("\nTIME's key geometry:")
    print(pd.Series(time_geometry(encoder, tokenizer)).to_markdown(floatfmt=".3f"))
    print("\nDiffQuickFix's keys (layer 0's attention output projection inputs):")
    print(pd.Series(diffquickfix_keys(encoder, tokenizer)).to_markdown(floatfmt=".3f"))
    print("\nThe edits on the text side:")
    print(pd.Series(text_edits(Path(args.weights_dir))).to_markdown())


if __name__ == "__main__":
    main()
