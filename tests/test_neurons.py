"""Neuron-level localization: activations against what the layers see, Welch's t against its formula, ablation
against zeroed weights, the curve's rows, and bad input."""

import numpy as np
import pytest
import torch

from localize import generate, patching
from locogen.neurons import (
    Neuron,
    NeuronSettings,
    ablation_curve,
    ablation_patches,
    activations,
    default_ks,
    score_neurons,
)

ATTRIBUTE = ["a photo of a ball in the style of Velmor", "a photo of a box in the style of Velmor",
             "a photo of a tree in the style of Velmor"]
NEUTRAL = ["a photo of a ball", "a photo of a box", "a photo of a tree"]


@pytest.mark.parametrize("family", ["organism", "if"])
def test_activations_are_the_projection_outputs_the_layer_computes_in_the_unet(family, organism, tiny_models):
    model = organism if family == "organism" else tiny_models(family)
    layers = [1, 2]
    recorded = []
    with patching(model, []):
        handles = [model.cross_attention_layers[k].key.register_forward_hook(lambda m, a, out: recorded.append(out))
                   for k in layers]
        try:
            generate(model, [NEUTRAL[0]], [0], steps=1, guidance=1.0)
        finally:
            for handle in handles:
                handle.remove()
    expected = torch.stack([out[0].float().mean(0) for out in recorded])
    measured = torch.stack([layer[0] for layer in activations(model, layers, "to_k", [NEUTRAL[0]])])
    assert torch.allclose(measured, expected, atol=1e-5)


def test_welch_t_matches_its_formula(organism):
    scores = score_neurons(organism, [4], ATTRIBUTE, NEUTRAL, projections=("to_v",))
    a = activations(organism, [4], "to_v", ATTRIBUTE)[0].double()
    n = activations(organism, [4], "to_v", NEUTRAL)[0].double()
    t = (a.mean(0) - n.mean(0)) / (a.var(0) / 3 + n.var(0) / 3).sqrt()
    assert np.allclose(scores.t, t.numpy(), atol=1e-4)
    assert scores.neurons[5] == Neuron(4, "to_v", 5)
    assert torch.allclose(scores.neutral_mean[4, "to_v"], n.mean(0).float())
    top = scores.top(3)
    assert sorted(np.abs(scores.t), reverse=True)[:3] == pytest.approx([abs(scores.t[x.index]) for x in top])


def test_windows_across_resolutions_score_every_neuron_of_each_layer(organism):
    layers = [7, 8]  # up_blocks.1 (64 wide) and up_blocks.2 (32 wide)
    widths = [organism.cross_attention_layers[k].key.out_features for k in layers]
    assert widths[0] != widths[1]
    scores = score_neurons(organism, layers, ATTRIBUTE, NEUTRAL, projections=("to_k",))
    assert len(scores.t) == sum(widths) and scores.neurons[widths[0]] == Neuron(8, "to_k", 0)


def test_zero_ablation_of_every_neuron_equals_zeroed_projection_weights(organism):
    layers = [5, 6]
    scores = score_neurons(organism, layers, ATTRIBUTE, NEUTRAL)
    patches = ablation_patches(scores.neurons, scores, "zero", row=0)
    ablated = generate(organism, [ATTRIBUTE[0]], [0], steps=3, patches=patches)
    projections = [p for k in layers for p in (organism.cross_attention_layers[k].key,
                                               organism.cross_attention_layers[k].value)]
    saved = [(p.weight.data.clone(), None if p.bias is None else p.bias.data.clone()) for p in projections]
    try:
        for p in projections:
            p.weight.data.zero_()
            if p.bias is not None:
                p.bias.data.zero_()
        zeroed = generate(organism, [ATTRIBUTE[0]], [0], steps=3)
    finally:
        for p, (weight, bias) in zip(projections, saved, strict=True):
            p.weight.data.copy_(weight)
            if bias is not None:
                p.bias.data.copy_(bias)
    assert torch.allclose(ablated, zeroed, atol=1e-5)


def test_ablation_curve_rows_and_random_control(organism, scorer):
    scores = score_neurons(organism, [5, 6], ATTRIBUTE, NEUTRAL)
    settings = NeuronSettings(ks=(1, 256), random_draws=2, steps=2, batch_size=4)
    curve = ablation_curve(organism, scorer, ATTRIBUTE[:2], ["a ball in the style of Velmor"] * 2, [0], scores,
                           settings)
    assert len(curve) == 2 * 2 * (1 + 2)
    assert set(curve["selection"]) == {"top", "random"}
    full = curve[curve["k"] == 256]
    assert full.groupby("prompt")["score"].nunique().eq(1).all()  # all neurons: top and random ablate the same
    assert np.allclose(curve["drop"], curve["score_clean"] - curve["score"])
    assert default_ks(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256) and default_ks(6) == (1, 2, 4, 6)


@pytest.mark.parametrize("settings, message", [
    (NeuronSettings(projections=("to_q",)), "projections ['to_q']"),
    (NeuronSettings(ablation="noise"), "unknown ablation 'noise'"),
    (NeuronSettings(ks=(0, 4)), "ks must be a non-empty list of positive neuron counts"),
    (NeuronSettings(ks=(300,)), "ks [300] exceed the 256 candidate neurons"),
])
def test_bad_neuron_settings(organism, scorer, settings, message):
    scores = score_neurons(organism, [5, 6], ATTRIBUTE, NEUTRAL)
    with pytest.raises(ValueError) as error:
        ablation_curve(organism, scorer, ATTRIBUTE[:1], ["x"], [0], scores, settings)
    assert message in str(error.value)


def test_welch_t_needs_two_prompts_on_each_side(organism):
    with pytest.raises(ValueError, match="at least two distinct attribute and two distinct neutral prompts"):
        score_neurons(organism, [5], ATTRIBUTE[:1], NEUTRAL)
