"""Causal tracing: restorations against independent runs, batching against the serial reference loop, token roles,
effects and their bootstrap, the other families, and bad input."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import localize.batching
from causal_tracing.corruption import attribute_positions, corruption_patches, embedding_std, noise_stds
from causal_tracing.effects import state_effects
from causal_tracing.pruning import same_conditioning
from causal_tracing.states import token_roles, unet_states
from causal_tracing.tracing import (
    TraceSettings,
    Unit,
    batched_scores,
    prompt_states,
    restore_patches,
    serial_scores,
    trace,
    unit_noise_stds,
)
from localize import generate, patching
from localize.stats import confidence_interval

APPLE = Unit("a photo of an apple", "apple", "an apple", 3)
KING = Unit("a photo of the king of Zarnia", "Zarnia", "the king of Zarnia", 5)
FEW_STEPS = TraceSettings(steps=3, batch_size=64)


def test_noise_std_is_the_scale_times_the_attribute_embeddings_std(organism):
    ids = organism.tokenizer("Zarnia apple", add_special_tokens=False).input_ids
    expected = organism.text_encoder_embeddings(0).weight[ids].float().std().item()
    assert embedding_std(organism, 0, ["Zarnia", "apple", "apple"]) == pytest.approx(expected)
    assert noise_stds(organism, ["Zarnia", "apple"], scale=3.0) == pytest.approx([3 * expected])
    assert noise_stds(organism, ["apple"], std=0.5) == [0.5]


def test_corruption_touches_only_the_attribute_embeddings_of_the_conditional_rows(organism):
    positions = attribute_positions(organism, KING.prompt, KING.attribute)
    assert positions == [[7, 8]]  # <start> a photo of the king of zar nia <end>: "Zarnia" is two tokens
    seen = []
    patches = corruption_patches(positions, [0.1], seed=1, rows=[1])
    with patching(organism, patches, rows=2) as run:
        run.halves = ("cond",)  # encoding the prompts: the conditional rows
        handle = organism.text_encoder_embeddings(0).register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            organism.spec.encode(organism.pipeline, [KING.prompt] * 2, (16, 16))
        finally:
            handle.remove()
    clean, corrupted = seen[0][0], seen[0][1]
    changed = (clean != corrupted).any(-1).nonzero().flatten().tolist()
    assert changed == [7, 8]
    assert (corrupted - clean)[7:9].std().item() == pytest.approx(0.1, rel=0.2)


def test_restoring_every_unet_state_recovers_the_clean_score_and_nothing_is_the_corrupted_run(organism64, scorer64):
    organism, scorer = organism64, scorer64  # batches of different sizes compared: float64 (see `organism64`)
    stds = unit_noise_stds(organism, [APPLE], FEW_STEPS)
    everything = tuple(unet_states(organism))
    (clean,), (restored,) = batched_scores(organism, scorer, [APPLE], [[(), everything]], FEW_STEPS, stds)
    corrupted, all_restored = restored
    assert all_restored == pytest.approx(clean, abs=1e-8)
    # independent runs: the prompt alone, and the prompt with its corruption, each in a batch of its own
    alone = generate(organism, [APPLE.prompt], [APPLE.seed], steps=3)
    positions = attribute_positions(organism, APPLE.prompt, APPLE.attribute)
    noisy = generate(organism, [APPLE.prompt], [APPLE.seed], steps=3,
                     patches=corruption_patches(positions, stds, APPLE.seed, [0]))
    assert scorer.score(alone, [APPLE.text]).item() == pytest.approx(clean, abs=1e-8)
    assert scorer.score(noisy, [APPLE.text]).item() == pytest.approx(corrupted, abs=1e-8)
    assert clean - corrupted > 1.0  # the corruption does change the image


def test_batched_equals_the_serial_reference_loop(organism64, scorer64):
    """In float64 (see `organism64`): a restoration applied to a wrong row or step moves a score by points."""
    organism, scorer = organism64, scorer64
    units = [APPLE, KING]
    restorations = []
    for unit in units:
        states = prompt_states(organism, unit, ("resnet", "cross_attn"), ("self_attn", "mlp"))
        picked = [states[0], states[13], *[s for s in states if s.token_role in ("attribute_last", "padding")][:3]]
        restorations.append([(), *((s,) for s in picked), tuple(picked[:2])])
    settings = TraceSettings(steps=3, batch_size=5)  # units split across batches, several units in one batch
    stds = unit_noise_stds(organism, units, settings)
    clean, restored = batched_scores(organism, scorer, units, restorations, settings, stds)
    for unit, unit_clean, unit_scores, unit_restorations in zip(units, clean, restored, restorations, strict=True):
        serial_clean, serial = serial_scores(organism, scorer, unit, unit_restorations, settings, stds)
        assert unit_clean == pytest.approx(serial_clean, abs=1e-8)
        assert unit_scores == pytest.approx(serial, abs=1e-8)
        assert max(unit_scores) - min(unit_scores) > 1e-2  # the restorations differ by far more than the tolerance


def test_states_before_the_corruption_are_not_generated_and_would_score_as_the_corrupted_run(organism, scorer):
    table = trace(organism, scorer, [APPLE], FEW_STEPS, unet_kinds=("cross_attn",), text_kinds=("self_attn", "mlp"))
    skipped = table[~table["generated"]]
    assert set(skipped["token_role"]) == {"start", "before"} and (skipped["indirect_effect"] == 0).all()
    assert (skipped["score_restored"] == skipped["score_corrupted"]).all()
    assert table.loc[~table["token_role"].isin(["start", "before"]), "generated"].all()
    # generated anyway, each of them reproduces the corrupted run
    states = [s for s in prompt_states(organism, APPLE, (), ("self_attn", "mlp"))
              if s.token_role in ("start", "before")]
    assert len(states) == len(skipped)
    stds = unit_noise_stds(organism, [APPLE], FEW_STEPS)
    _, (scores,) = batched_scores(organism, scorer, [APPLE], [[(), *((s,) for s in states)]], FEW_STEPS, stds)
    assert scores[1:] == pytest.approx([scores[0]] * len(states), abs=1e-4)


def test_token_roles(organism):
    prompt = "a photo of an apple in the style of Velmor"
    positions = attribute_positions(organism, prompt, "Velmor")[0]
    roles = token_roles(organism.tokenizer, prompt, positions, 77)
    ids = organism.tokenizer(prompt).input_ids
    assert len(positions) == 2 and positions[-1] == len(ids) - 2
    assert roles[: len(ids)] == ["start", *["before"] * (len(ids) - 4), "attribute", "attribute_last", "end"]
    assert set(roles[len(ids):]) == {"padding"}
    assert token_roles(organism.tokenizer, prompt, attribute_positions(organism, prompt, "apple")[0], 77)[6] == "after"


def test_trace_table_and_effects(organism, scorer):
    table = trace(organism, scorer, [APPLE, KING], FEW_STEPS, unet_kinds=("cross_attn",), text_kinds=("self_attn",))
    n_tokens = {unit.prompt: len(organism.tokenizer(unit.prompt).input_ids) for unit in (APPLE, KING)}
    for unit in (APPLE, KING):
        rows = table[table["prompt"] == unit.prompt]
        assert (rows["group"] == "unet").sum() == 10  # the organism's cross-attention layers
        layers = len(organism.text_encoder_layers)
        assert (rows["group"] == "text_encoder").sum() == layers * (n_tokens[unit.prompt] + 1)  # + padding span
    measured = table.dropna(subset=["indirect_effect"])
    expected = (measured["score_restored"] - measured["score_corrupted"]) / (
        measured["score_clean"] - measured["score_corrupted"])
    assert np.allclose(measured["indirect_effect"], expected)
    effects = state_effects(table)
    assert effects["effect"].is_monotonic_decreasing
    text = effects[effects["group"] == "text_encoder"]
    assert set(text["token_role"]) == {"start", "before", "attribute", "attribute_last", "end", "padding"}
    assert (effects["units"] <= 2).all()


def test_bootstrap_interval_matches_an_independent_resampling():
    values = np.random.default_rng(0).normal(0.4, 0.3, size=24)
    low, high = confidence_interval(values, 0.95, 4000, seed=1)
    means = values[np.random.default_rng(2).integers(0, 24, size=(20000, 24))].mean(1)
    assert low == pytest.approx(np.quantile(means, 0.025), abs=0.02)
    assert high == pytest.approx(np.quantile(means, 0.975), abs=0.02)
    assert np.isnan(confidence_interval(values[:1], 0.95, 100, 0)).all()


def test_effects_average_positions_within_a_unit_before_units():
    rows = [  # unit (p, 0) has two "before" positions; unit (q, 0) one; a unit without an effect is left out
        ("p", 0, 0.2), ("p", 0, 0.4), ("q", 0, 0.9), ("r", 0, float("nan")),
    ]
    table = pd.DataFrame([
        {"key": "s@before", "site": "s", "group": "text_encoder", "kind": "mlp", "location": "text_encoder.0",
         "layer": 0, "token_role": "before", "prompt": prompt, "seed": seed, "indirect_effect": effect}
        for prompt, seed, effect in rows
    ])
    effects = state_effects(table)
    assert effects.loc[0, "effect"] == pytest.approx((0.3 + 0.9) / 2)
    assert effects.loc[0, "units"] == 2


@pytest.mark.parametrize("family", ["sdxl", "if"])
def test_trace_runs_on_tiny_random_models(family, tiny_models, scorer):
    model = tiny_models(family)
    unit = Unit("a photo of an apple", "apple", "an apple", 0)
    table = trace(model, scorer, [unit], TraceSettings(steps=2, min_drop=0.0), unet_kinds=("cross_attn",),
                  text_kinds=("self_attn", "mlp"))
    encoders = len(model.text_encoders)
    assert set(table.loc[table["group"] == "text_encoder", "location"]) == {f"text_encoder.{e}" for e in
                                                                            range(encoders)}
    assert (table["group"] == "unet").sum() == len(model.cross_attention_layers)
    assert table[["score_clean", "score_corrupted", "score_restored"]].notna().all().all()
    generated = table.loc[table["group"] == "text_encoder", "generated"]
    assert generated.all() if family == "if" else not generated.all()  # T5 is bidirectional, CLIP causal


@pytest.mark.parametrize("change, message", [
    ({"units": [Unit("a photo of an apple", "pear", "a pear", 0)]}, "'pear' occurs not at all"),
    ({"unet_kinds": ("resnet", "conv")}, "unknown denoiser state kind(s) ['conv']"),
    ({"text_kinds": ("attention",)}, "unknown text-encoder state kind(s) ['attention']"),
    ({"settings": TraceSettings(steps=5, step_range=(2, 9))}, "step range [2, 9] outside the schedule of 5 steps"),
    ({"settings": TraceSettings(noise_scale=0.0)}, "noise scale must be > 0, got 0.0"),
    ({"settings": TraceSettings(noise_std=-1.0)}, "noise std must be > 0, got -1.0"),
    ({"units": []}, "the prompt set is empty"),
])
def test_bad_input_fails_before_any_generation(organism, scorer, monkeypatch, change, message):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(localize.batching, "generate", no_generation)
    arguments = {"units": [APPLE], "settings": FEW_STEPS, "unet_kinds": ("resnet",), "text_kinds": ("mlp",),
                 **change}
    with pytest.raises(ValueError) as error:
        trace(organism, scorer, arguments["units"], arguments["settings"], arguments["unet_kinds"],
              arguments["text_kinds"])
    assert message in str(error.value)


def test_corrupted_rows_do_not_depend_on_the_batch(organism):
    """The noise of a unit is drawn from its own seed: the same in any batch position."""
    positions = attribute_positions(organism, APPLE.prompt, APPLE.attribute)
    patches = corruption_patches(positions, [0.2], APPLE.seed, [0, 2])
    images = generate(organism, [APPLE.prompt, KING.prompt, APPLE.prompt], [APPLE.seed, 1, APPLE.seed], steps=2,
                      patches=patches)
    assert torch.allclose(images[0], images[2], atol=1e-5)


def test_restorations_that_condition_the_unet_like_another_run_are_found(tiny_models):
    """`same_conditioning` names, for each text state, the run whose conditioning its restoration repeats: no
    patch is the clean run, the corruption alone the corrupted run, a repeated restoration its first copy."""
    model = tiny_models("sd1")
    unit = Unit("a photo of an apple", "apple", "an apple", 0)
    corruption = corruption_patches(attribute_positions(model, unit.prompt, unit.attribute), [1.0], 0, [0])
    roles = {s.token_role: s for s in prompt_states(model, unit, (), ("mlp",)) if s.layer == 0}
    start, apple, end = roles["start"], roles["attribute_last"], roles["end"]
    twin = replace(apple, layer=1)  # given the patches of `apple` below

    def row_patches(state, row):
        noise = [replace(patch, rows=(row,)) for patch in corruption]
        if state == start:
            return []
        if state is None or state == end:
            return noise
        return noise + restore_patches((apple,), row, 0, TraceSettings())

    known = same_conditioning(model, unit.prompt, [start, apple, end, twin], row_patches)
    assert known == {start: "clean", end: "corrupted", twin: apple}


def test_sdxl_never_generates_last_layer_states_its_unet_does_not_read(tiny_models, scorer):
    """SD-XL reads its encoders' penultimate layers: a last-layer restoration reaches the image only through the
    second encoder's pooled projection, at its end token. The others are recorded as the corrupted run, and
    generated anyway they score as it does."""
    model = tiny_models("sdxl")
    unit = Unit("a photo of an apple", "apple", "an apple", 0)
    settings = TraceSettings(steps=2, min_drop=0.0)
    table = trace(model, scorer, [unit], settings, unet_kinds=(), text_kinds=("mlp",))
    last = [max(layer.index for layer in model.text_encoder_layers if layer.encoder == e)
            for e in range(len(model.text_encoders))]
    text = table[table["group"] == "text_encoder"]
    is_last = text["layer"] == text["location"].map(lambda location: last[int(location[-1])])
    pooled = (text["location"] == "text_encoder.1") & (text["token_role"] == "end")
    known = text["token_role"].isin(["start", "before"]) | (is_last & ~pooled)
    assert (text["generated"] == ~known).all()
    assert (text.loc[known, "same_as"] == "corrupted").all() and (text.loc[~known, "same_as"] == "").all()
    repeated = set(zip(text.loc[known & is_last, "site"], text.loc[known & is_last, "token"], strict=True))
    skipped = [s for s in prompt_states(model, unit, (), ("mlp",)) if (s.site, s.tokens[0]) in repeated]
    stds = unit_noise_stds(model, [unit], settings)
    _, (scores,) = batched_scores(model, scorer, [unit], [[(), *((s,) for s in skipped)]], settings, stds)
    assert len(skipped) > 4 and scores[1:] == pytest.approx([scores[0]] * len(skipped), abs=1e-4)
