"""UCE debiasing: search the attribute weights of a concept's edit until the generated split matches the target.

The concept's last word and end span (keys) project like c + sum_i alpha_i (a_i - c), with c the concept's text
and a_i the text of its attribute prompt i at the paired positions (UCE's alignment). Each round applies the edit,
generates the concept over `seeds`, classifies the images into the attributes, and moves each alpha_i by
`rate` x (target_i - measured_i) until that attribute has been seen both under and over its target; from then on
alpha_i bisects the bracket (a measured share jumps steeply with alpha, so proportional steps alone overshoot).
It stops when every share is within `tolerance` of its target and returns the best round's edit with the history
of every round.

`search="authors"` is the authors' `train_debias.py` instead: each round measures the model as edited so far,
sets w_i = `rate` x (target_i - measured_i) (their rate 0.1) and edits the CURRENT weights W once more, with
targets W c + sum_i w_i |W c| W a_i / |W a_i| (Frobenius norms over each prompt's paired span) and the preserved
prompts kept as the current weights project them; the edit returned is the sum of every round's update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace

import torch

from localize.generation import generate
from localize.model import Model
from localize.scoring import ClipScorer
from locoedit.cross_attention import PromptPair, Rows, check_text_keys, pair_prompts, pair_rows, solve_projections
from locoedit.edits import Edit, WeightUpdate
from locoedit.methods import joined, preserved_rows, uce_kept
from locoedit.params import SEARCHES
from locoedit.prompts import as_list, augmented, check_choice, check_lam

Classifier = Callable[[torch.Tensor], list[int]]  # images -> attribute index per image (-1: none of them)


def clip_classifier(scorer: ClipScorer, texts: Sequence[str]) -> Classifier:
    """Zero-shot: each image's attribute is the text of highest CLIP similarity."""
    return lambda images: scorer.similarity(images, list(texts)).argmax(1).tolist()


def shares(classes: Sequence[int], n: int) -> list[float]:
    """Fraction of images in each of the n attributes (unclassified images count in the denominator)."""
    return [sum(c == i for c in classes) / len(classes) for i in range(n)]


def trimmed(pair: PromptPair, size: int) -> PromptPair:
    return replace(pair, source_positions=pair.source_positions[:size], target_positions=pair.target_positions[:size])


def mixed(attribute_rows: Sequence[Rows], alpha: Sequence[float]) -> Rows:
    """rows(transform) = (c, c + sum_i alpha_i (a_i - c)) over the attributes' rows (c the concept's keys)."""
    def rows(transform):
        both = [r(transform) for r in attribute_rows]
        keys = both[0][0]
        return keys, keys + sum(a * (targets - keys) for a, (_, targets) in zip(alpha, both, strict=True))

    return rows


def authors_mixed(attribute_rows: Sequence[Rows], weights: Sequence[float], spans: Sequence[int]) -> Rows:
    """rows(transform) = (c, T(W)) with W T(W) = W c + sum_i w_i |W c| W a_i / |W a_i| per prompt: `spans` are
    the concept prompts' span lengths, in the rows' order; the norms are Frobenius norms over one span."""
    def rows(transform):
        both = [r(transform) for r in attribute_rows]
        keys = both[0][0]

        def targets(weight: torch.Tensor) -> torch.Tensor:
            w = weight.to(keys.dtype)
            parts = []
            for c, *attributes in zip(keys.split(spans), *(t.split(spans) for _, t in both), strict=True):
                scale = (c @ w.T).norm()
                parts.append(c + sum(wi * scale / (a @ w.T).norm() * a
                                     for wi, a in zip(weights, attributes, strict=True)))
            return torch.cat(parts)

        return keys, targets

    return rows


def search_weights(measure: Callable[[list[float]], list[float]], split: Sequence[float], tolerance: float,
                   rounds: int, rate: float) -> list[dict]:
    """Rounds of {round, alpha, shares, gap}: round 0 measures alpha = 0 (no edit), each later round the next
    weights. Per attribute: a proportional step (`rate` x error) while its share has only been under (or only
    over) target, then the midpoint of the tightest bracket [highest alpha under, lowest alpha over]. Stops at
    the first edited round within `tolerance` (max absolute share error) or after `rounds` edited rounds."""
    alpha = [0.0] * len(split)
    under = [-float("inf")] * len(split)  # highest alpha_i seen with share_i below its target
    over = [float("inf")] * len(split)  # lowest alpha_i seen with share_i above its target
    history = []
    for round_ in range(rounds + 1):
        measured = measure(alpha)
        errors = [s - m for s, m in zip(split, measured, strict=True)]
        gap = max(abs(e) for e in errors)
        history.append({"round": round_, "alpha": list(alpha), "shares": measured, "gap": gap})
        if round_ == rounds or round_ > 0 and gap <= tolerance:
            break
        proposed = []
        for i, (a, error) in enumerate(zip(alpha, errors, strict=True)):
            if error > 0:
                under[i] = max(under[i], a)
            elif error < 0:
                over[i] = min(over[i], a)
            bracketed = under[i] > -float("inf") and over[i] < float("inf")
            proposed.append((under[i] + over[i]) / 2 if bracketed and error else a + rate * error)
        alpha = proposed
    return history


def debias(model: Model, concept: str, attributes: Sequence[str], classify: Classifier,
           split: Sequence[float] | None = None, templates: Sequence[str] = (), seeds: Sequence[int] = range(16),
           steps: int = 25, guidance: float = 7.5, tolerance: float = 0.1, rounds: int = 8,
           rate: float | None = None, lam: float = 0.5, preserve: Sequence[str] = (), preserve_scale: float = 0.1,
           layers: Sequence[int] | None = None, preserve_tokens: str = "all", preserve_empty: bool = False,
           search: str = "bracket", held: Rows | None = None) -> tuple[dict[str, WeightUpdate], dict]:
    """Debias `concept` (e.g. "a doctor") over `attributes` (one prompt each, e.g. ["a red doctor", "a blue
    doctor"]) towards `split` (uniform by default). The `preserve` prompts are kept at every position
    (`preserve_tokens="all"`, as the authors' `train_debias.py`; `"final"`: last word and end span) with the
    authors' scale 0.1, and the empty prompt too with `preserve_empty`. `held`: rows of other terms every
    round's solve also holds (the joint UCE edit's erase and moderate terms, `locoedit.joint`). `search`:
    `bracket` (this lab's, the module's docstring) or `authors`; `rate` defaults to 1.0 and to the authors' 0.1
    respectively. Returns the best edited round's updates and
    {alpha, shares, history} (`authors`: the summed updates and {weights, shares, history})."""
    check_text_keys(model, "UCE's debias mode")
    check_lam(lam)
    check_choice("search", search, SEARCHES)
    if search == "authors" and held is not None:
        raise ValueError("the joint UCE edit searches its debiasing weights with search='bracket'")
    rate = (0.1 if search == "authors" else 1.0) if rate is None else rate
    attributes = as_list(attributes, "attributes")
    split = [1 / len(attributes)] * len(attributes) if split is None else list(split)
    if len(attributes) < 2 or len(split) != len(attributes) or abs(sum(split) - 1) > 1e-6 or min(split) < 0:
        raise ValueError(f"need two or more attributes and a split of one non-negative share each summing to 1; "
                         f"got attributes {attributes} and split {split}")
    if not 0 < tolerance < 1 or rounds < 1 or not rate > 0:
        raise ValueError(f"tolerance must be in (0, 1), rounds >= 1 and rate > 0, got {tolerance!r}, {rounds!r} "
                         f"and {rate!r}")
    concepts = augmented(concept, templates)
    pairs = [pair_prompts(model, concepts, augmented(attribute, templates), "final") for attribute in attributes]
    pairs = [[trimmed(pair, min(len(ps[i].source_positions) for ps in pairs)) for i, pair in enumerate(ps)]
             for ps in pairs]  # every attribute pairs the same concept positions
    attribute_rows = [pair_rows(model, ps) for ps in pairs]
    preserved = preserved_rows(model, uce_kept(preserve, concepts, preserve_empty), preserve_tokens)
    seeds = list(seeds)
    if search == "authors":
        spans = [len(pair.source_positions) for pair in pairs[0]]

        def step(weights: list[float]) -> dict[str, WeightUpdate]:
            return solve_projections(model, layers, authors_mixed(attribute_rows, weights, spans), lam, preserved,
                                     preserve_scale)

        def measured() -> list[float]:
            images = generate(model, [concept] * len(seeds), seeds, steps=steps, guidance=guidance)
            return shares(classify(images), len(attributes))

        return authors_rounds(model, step, measured, split, tolerance, rounds, rate)
    solved = {}

    def measure(alpha: list[float]) -> list[float]:
        updates = {}
        if any(alpha) or held is not None:
            rows = mixed(attribute_rows, alpha)
            updates = solved[tuple(alpha)] = solve_projections(model, layers, rows if held is None else
                                                               joined([held, rows]), lam, preserved, preserve_scale)
        with Edit("uce", model.family, {}, updates).applied(model) if updates else nullcontext():
            images = generate(model, [concept] * len(seeds), seeds, steps=steps, guidance=guidance)
        return shares(classify(images), len(attributes))

    history = search_weights(measure, split, tolerance, rounds, rate)
    edited = history if held is not None else [entry for entry in history[1:] if any(entry["alpha"])]
    if not edited:
        raise ValueError(f"debiasing found no edit: the measured split {history[0]['shares']} already equals the "
                         f"target {split}, so every attribute weight stayed 0")
    best = min(edited, key=lambda entry: entry["gap"])
    return solved[tuple(best["alpha"])], {"alpha": best["alpha"], "shares": best["shares"], "history": history}


def authors_rounds(model: Model, step: Callable[[list[float]], dict[str, WeightUpdate]],
                   measure: Callable[[], list[float]], split: Sequence[float], tolerance: float, rounds: int,
                   rate: float) -> tuple[dict[str, WeightUpdate], dict]:
    """The authors' loop: measure the model as edited so far; stop within `tolerance` or after `rounds` steps;
    else `step` the current weights with w = rate x (split - measured) and add that update to the total."""
    total: dict[str, WeightUpdate] = {}
    history = []
    for round_ in range(rounds + 1):
        with Edit("uce", model.family, {}, total).applied(model) if total else nullcontext():
            measured = measure()
            weights = [rate * (s - m) for s, m in zip(split, measured, strict=True)]
            gap = max(abs(s - m) for s, m in zip(split, measured, strict=True))
            history.append({"round": round_, "weights": weights, "shares": measured, "gap": gap})
            if gap <= tolerance or round_ == rounds:
                break
            updates = step(weights)
        for address, update in updates.items():  # each round's update was computed on the edited weights
            total[address] = total[address].then(update) if address in total else update
    if not total:
        raise ValueError(f"debiasing found no edit: the measured split {history[0]['shares']} is already within "
                         f"{tolerance} of the target {split}")
    return total, {"weights": [entry["weights"] for entry in history[:-1]], "shares": history[-1]["shares"],
                   "history": history}
