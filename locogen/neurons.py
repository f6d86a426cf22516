"""Neuron-level localization: the to_k / to_v neurons of chosen cross-attention layers that separate attribute
prompts from neutral ones, ablated k at a time against a control of k random neurons.

- A neuron is an output feature of a layer's key or value projection (`cross_attn.K.to_k` / `.to_v`; IF:
  add_k/add_v). Its activation for a prompt is its output averaged over the token positions the layer sees
  (all of them, padding included: the cross-attention reads every one).
- Score: Welch's t statistic (scipy) of a neuron's activations over attribute vs neutral prompts; the top k
  by |t| over all candidate neurons of all chosen layers and projections.
- Ablation (both CFG halves, every step, every position): `mean` replaces the neuron's output with its mean
  over the neutral prompts and positions, `zero` with 0.
- Batch convention: per unit (attribute prompt x seed), its unablated row first (the source row), then one
  row per k for the top-k neurons and `random_draws` rows per k for random neurons (draw r of size k seeded
  by (seed, k, r)). Drop = unablated score - ablated score (CLIP score against the attribute text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import ttest_ind

from localize.batching import PackedUnit, RowPatches, score_packed
from localize.denoising import latent_scale
from localize.engine import capturing
from localize.generation import image_size
from localize.model import Model
from localize.patches import Patch
from localize.scoring import ClipScorer
from locogen.settings import PROJECTIONS, NeuronSettings, check_prompt_counts


@dataclass(frozen=True)
class Neuron:
    layer: int
    projection: str
    index: int

    @property
    def address(self) -> str:
        """`cross_attn.K.PROJECTION:N`, the engine's site and the feature (`localize.sites`)."""
        return f"cross_attn.{self.layer}.{self.projection}:{self.index}"


def default_ks(candidates: int) -> tuple[int, ...]:
    """Powers of two below the candidate count, then the count itself (every neuron ablated)."""
    return (*(2**i for i in range(candidates.bit_length()) if 2**i < candidates), candidates)


@torch.no_grad()
def activations(model: Model, layers: Sequence[int], projection: str, prompts: Sequence[str]
                ) -> list[torch.Tensor]:
    """Per layer (in `layers` order), each neuron's output averaged over token positions: prompts x neurons (a
    window may cross resolutions, so layers can differ in width).

    Captured (`localize.engine.capturing`) from the projections during one UNet forward of the prompts (their
    outputs depend on the text alone), so whatever the attention processor does to the text first (IF's
    cross-attention norm) is included.
    """
    size = image_size(model, None, None)
    conditioning = model.spec.encode(model.pipeline, list(prompts), size)
    scale = latent_scale(model)
    sample = torch.zeros(len(prompts), model.unet.config.in_channels, size[0] // scale, size[1] // scale,
                         device=model.device, dtype=model.dtype)
    sites = [f"cross_attn.{k}.{projection}" for k in layers]
    with capturing(model, sites) as captured:
        model.unet(sample, 0, **conditioning)  # any timestep: the projections read the text alone
    return [captured[site][0].float().mean(1).cpu() for site in sites]


@dataclass(frozen=True)
class NeuronScores:
    """Welch t per candidate neuron (`neurons[i]` has `t[i]`), and each neuron's neutral mean (the mean ablation)."""

    neurons: list[Neuron]
    t: np.ndarray
    neutral_mean: dict[tuple[int, str], torch.Tensor]

    def top(self, k: int) -> list[Neuron]:
        order = np.argsort(-np.abs(self.t), kind="stable")
        return [self.neurons[i] for i in order[:k]]


def score_neurons(model: Model, layers: Sequence[int], attribute_prompts: Sequence[str],
                  neutral_prompts: Sequence[str], projections: Sequence[str] = PROJECTIONS) -> NeuronScores:
    """Welch's t of every to_k / to_v neuron of `layers` between attribute and neutral prompts."""
    check_prompt_counts(attribute_prompts, neutral_prompts)
    neurons, ts, means = [], [], {}
    for projection in projections:
        attribute = activations(model, layers, projection, attribute_prompts)
        neutral = activations(model, layers, projection, neutral_prompts)
        for layer, on, off in zip(layers, attribute, neutral, strict=True):
            t = ttest_ind(on.numpy(), off.numpy(), axis=0, equal_var=False).statistic
            means[layer, projection] = off.mean(0)
            neurons += [Neuron(layer, projection, i) for i in range(len(t))]
            ts.append(np.nan_to_num(t, nan=0.0))  # a neuron constant over all prompts separates nothing
    return NeuronScores(neurons, np.concatenate(ts), means)


def ablation_patches(neurons: Sequence[Neuron], scores: NeuronScores, ablation: str, row: int) -> list[Patch]:
    """One patch per (layer, projection) writing the ablated value into the neurons' outputs of `row`."""
    groups: dict[tuple[int, str], list[int]] = {}
    for neuron in neurons:
        groups.setdefault((neuron.layer, neuron.projection), []).append(neuron.index)
    patches = []
    for (layer, projection), indices in groups.items():
        site = f"cross_attn.{layer}.{projection}"
        if ablation == "zero":
            patches.append(Patch(site, "zero", neurons=tuple(indices), rows=(row,)))
        else:
            patches.append(Patch(site, "replace", value=scores.neutral_mean[layer, projection], neurons=tuple(indices),
                                 rows=(row,)))
    return patches


def random_neurons(scores: NeuronScores, k: int, seed: int, draw: int) -> list[Neuron]:
    rng = np.random.default_rng([seed, k, draw])
    return [scores.neurons[i] for i in rng.choice(len(scores.neurons), size=k, replace=False)]


def ablation_curve(model: Model, scorer: ClipScorer, prompts: Sequence[str], texts: Sequence[str],
                   seeds: Sequence[int], scores: NeuronScores, settings: NeuronSettings,
                   progress: bool = False) -> pd.DataFrame:
    """One row per prompt x seed x k x selection (`top`, or `random` draw r): `score`, `score_clean`, `drop`."""
    settings.check()
    ks = settings.ks or default_ks(len(scores.neurons))
    too_many = [k for k in ks if k > len(scores.neurons)]
    if too_many:
        raise ValueError(f"ks {too_many} exceed the {len(scores.neurons)} candidate neurons")
    configs = [("top", 0, k) for k in ks]
    configs += [("random", r, k) for k in ks for r in range(settings.random_draws)]
    units = [(p, t, int(s)) for p, t in zip(prompts, texts, strict=True) for s in seeds]

    def ablated_row(selection: str, draw: int, k: int, seed: int) -> RowPatches:
        chosen = scores.top(k) if selection == "top" else random_neurons(scores, k, seed, draw)
        return lambda row, clean_row: ablation_patches(chosen, scores, settings.ablation, row)

    packed = [PackedUnit(prompt, prompt, seed, text, [ablated_row(*config, seed) for config in configs])
              for prompt, text, seed in units]
    clean, ablated = score_packed(model, scorer, packed, settings.batch_size, settings.steps, settings.guidance,
                                  progress, desc="neuron rows", memory_budget=settings.memory_budget)
    rows = []
    for (prompt, text, seed), score_clean, unit_scores in zip(units, clean, ablated, strict=True):
        for (selection, draw, k), score in zip(configs, unit_scores, strict=True):
            rows.append({"prompt": prompt, "text": text, "seed": seed, "k": k, "selection": selection,
                         "draw": draw, "score": score, "score_clean": score_clean, "drop": score_clean - score})
    return pd.DataFrame(rows)
