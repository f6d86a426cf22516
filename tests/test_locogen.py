"""LOCOGEN: windows, the window patch through the engine, batching against the reference loop, the other
families, the chosen window, and bad input."""

import pandas as pd
import pytest
import torch

import localize.batching
from localize import patching
from locogen.curves import window_summary
from locogen.layer_search import batched_window_scores, search, serial_window_scores
from locogen.settings import SearchSettings, Unit, make_units
from locogen.windows import window_patches, windows

APPLE = Unit("a photo of an apple", "a photo of a box", "an apple", 3)
VELMOR = Unit("a photo of a ball in the style of Velmor", "a photo of a ball", "a ball in the style of Velmor", 1)


@pytest.mark.parametrize("n, m", [(10, 1), (10, 2), (10, 3), (16, 2), (70, 5), (4, 4)])
def test_there_are_n_minus_m_plus_one_windows_of_consecutive_layers(n, m):
    found = windows(n, m)
    assert len(found) == n - m + 1
    assert found[0] == tuple(range(m)) and found[-1] == tuple(range(n - m, n))
    assert all(window == tuple(range(window[0], window[0] + m)) for window in found)


@pytest.mark.parametrize("m", [0, -1, 11])
def test_window_size_outside_the_layers_is_an_error(m):
    with pytest.raises(ValueError, match=rf"window size m={m} must be an integer in 1\.\.10"):
        windows(10, m)


@pytest.mark.parametrize("family", ["organism", "sd1"])
def test_the_window_patch_reaches_exactly_the_window_layers_on_the_conditional_half(family, organism, tiny_models):
    model = organism if family == "organism" else tiny_models(family)
    window = (2, 3)
    received = {}
    size = (model.unet.config.sample_size,) * 2

    def record(module, args, kwargs):
        received[layers[module]] = kwargs["encoder_hidden_states"]

    layers = {layer.module: layer.index for layer in model.cross_attention_layers}
    with patching(model, window_patches(model, window, row=1, altered_row=0), rows=2) as run:
        conditioning = model.spec.encode(model.pipeline, ["a photo of a box", "a photo of an apple"], size)
        states = torch.cat([torch.zeros_like(conditioning["encoder_hidden_states"]),
                            conditioning["encoder_hidden_states"]])
        handles = [module.register_forward_pre_hook(record, with_kwargs=True) for module in layers]
        try:
            run.halves = ("uncond", "cond")
            sample = torch.randn(4, model.unet.config.in_channels, *size)
            with torch.no_grad():
                model.unet(sample, torch.tensor(10), encoder_hidden_states=states)
        finally:
            for handle in handles:
                handle.remove()
    assert sorted(received) == list(range(len(model.cross_attention_layers)))
    for k, context in received.items():
        uncond, altered, patched = context[:2], context[2], context[3]
        assert torch.equal(uncond, torch.zeros_like(uncond))  # the unconditional half is never touched
        assert torch.equal(patched, altered) == (k in window)


def test_batched_equals_the_reference_loop(organism64, scorer64):
    organism, scorer = organism64, scorer64  # batches of different sizes compared: float64 (see `organism64`)
    settings = SearchSettings(m=3, steps=3, batch_size=5)  # units split across batches
    altered, original, batched = batched_window_scores(organism, scorer, [APPLE, VELMOR], settings)
    for unit, scores in zip([APPLE, VELMOR], batched, strict=True):
        assert scores == pytest.approx(serial_window_scores(organism, scorer, unit, settings), abs=1e-8)
    assert len(batched[0]) == 10 - 3 + 1
    assert original[0] - altered[0] > 10  # "a box" is not "an apple"


def test_search_table_and_the_chosen_window(organism, scorer):
    table = search(organism, scorer, [APPLE], SearchSettings(m=2, steps=3))
    assert list(table["window"]) == list(range(9))
    assert list(table.loc[0, "layers"]) == [0, 1] and len(table.loc[0, "names"]) == 2
    assert (table["effect"] == table["score_original"] - table["score"]).all()  # objective lower
    summary = window_summary(table)
    assert summary["chosen"].sum() == 1
    assert summary.loc[summary["chosen"], "effect"].item() == summary["effect"].max()


def test_window_summary_means_and_raise_objective():
    table = pd.DataFrame([
        {"window": w, "layers": [w, w + 1], "names": ["", ""], "score": s, "effect": e, "prompt": p, "seed": 0}
        for w, p, s, e in [(0, "a", 10, 1), (0, "b", 12, 3), (1, "a", 20, 11), (1, "b", 18, 9)]
    ])
    summary = window_summary(table)
    assert summary["effect"].tolist() == [2, 10] and summary["chosen"].tolist() == [False, True]
    assert summary["score_ci_low"][1] <= 19 <= summary["score_ci_high"][1]


@pytest.mark.parametrize("family", ["sdxl", "if"])
def test_search_runs_on_tiny_random_models(family, tiny_models, scorer):
    model = tiny_models(family)
    table = search(model, scorer, [APPLE], SearchSettings(m=2, steps=2))
    assert len(table) == len(model.cross_attention_layers) - 1
    assert table["score"].notna().all()


@pytest.mark.parametrize("call, message", [
    (lambda m, s: search(m, s, [APPLE], SearchSettings(m=0)), "window size m=0 must be an integer in 1..10"),
    (lambda m, s: search(m, s, [APPLE], SearchSettings(m=11)), "window size m=11 must be an integer in 1..10"),
    (lambda m, s: search(m, s, [], SearchSettings()), "the prompt set is empty"),
    (lambda m, s: make_units(["a photo of an apple", "a photo of a ball"], ["a photo of a box"], ["an apple"] * 2,
                             [0]), "2 prompts, 1 altered prompts, 2 texts"),
    (lambda m, s: make_units([], [], [], [0]), "the prompt set is empty"),
    (lambda m, s: search(m, s, [APPLE], SearchSettings(objective="maximize")), "unknown objective 'maximize'"),
])
def test_bad_input_fails_before_any_generation(organism, scorer, monkeypatch, call, message):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(localize.batching, "generate", no_generation)
    with pytest.raises(ValueError) as error:
        call(organism, scorer)
    assert message in str(error.value)
