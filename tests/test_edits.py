"""Closed-form edits: TIME against diffusers' peer, every method's equation, edit files, LoRA export, bad input.

Edits run on fresh tiny models (`fresh`) so a failing test never leaves the shared session models edited.
"""

import copy

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import locoedit
from localize import generate, random_model
from localize.conditioning import text_contexts
from locoedit import EditMismatchError, IllConditionedError, compose, edit, load_edit
from locoedit.peers import time_peer
from locoedit.text_encoder import encode_recording, linear_of, text_layer

SOURCE, DESTINATION = "a pack of roses", "a pack of blue roses"


@pytest.fixture
def fresh():
    return lambda family="sd1", seed=0: random_model(family, "tiny", seed=seed)


def _state(model):
    return {name: p.detach().clone() for name, p in model.unet.named_parameters()} | {
        f"text.{name}": p.detach().clone() for name, p in model.text_encoders[0].named_parameters()}


def _unchanged(model, before):
    after = _state(model)
    return all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("lam", [0.1, 10.0])
def test_time_equals_diffusers_peer_in_float64(fresh, lam):
    """The fixed diffusers pipeline and `edit(..., "time")` give the same weights. Both run in float64: the peer
    accumulates its equation in float32, which at this tiny model's condition number (about 1e5) costs it
    about 3e-4 (measured); in float64 the two agree to 1e-8."""
    model = fresh()
    model.pipeline.to(torch.float64)
    peer = time_peer(model)
    torch.set_default_dtype(torch.float64)  # the peer builds its identity matrix in the default dtype
    try:
        peer.edit_model(SOURCE, DESTINATION, lamb=lam)
    finally:
        torch.set_default_dtype(torch.float32)
    result = edit(model, "time", source=SOURCE, destination=DESTINATION, lam=lam)
    assert len(result.updates) == 2 * len(model.cross_attention_layers) == 2 * len(peer.ca_clip_layers)
    result.apply(model)
    theirs = dict(peer.unet.named_parameters())
    for address in result.updates:
        path = address.removeprefix("unet.")
        assert torch.allclose(model.unet.get_parameter(path), theirs[path], atol=1e-5, rtol=0), address


@pytest.mark.parametrize("preserve", [(), ("a photo of a dog", "a bunch of tulips")])
def test_time_solves_the_ridge_equation_and_revert_is_bit_exact(fresh, preserve):
    """The edited weight equals (lam W + sum W t k^T + s W P^T P)(lam I + sum k k^T + s P^T P)^-1 over the four
    augmented prompts (and every token P of the preserved prompts, scale s = 0.5), computed here directly from
    the contexts and TIME's alignment."""
    model = fresh()
    before = _state(model)
    result = edit(model, "time", source=SOURCE, destination=DESTINATION, lam=0.1, preserve=preserve,
                  preserve_scale=0.5)
    assert _unchanged(model, before)  # computing an edit leaves the model untouched
    from localize.tokens import align_tokens
    from locoedit.prompts import TIME_TEMPLATES, augmented

    keys, targets = [], []
    for src, dst in zip(augmented(SOURCE, TIME_TEMPLATES), augmented(DESTINATION, TIME_TEMPLATES), strict=True):
        contexts = text_contexts(model, [src, dst]).double()
        keys.append(contexts[0])
        targets.append(contexts[1][align_tokens(model.tokenizer, src, dst)])
    keys, targets = torch.cat(keys), torch.cat(targets)
    layer = model.cross_attention_layers[3]
    weight = layer.value.weight.detach().double()
    kept = text_contexts(model, list(preserve)).double().flatten(0, 1) if preserve else keys[:0]
    gram = 0.1 * torch.eye(keys.shape[1], dtype=torch.float64) + keys.T @ keys + 0.5 * kept.T @ kept
    expected = torch.linalg.solve(gram, (0.1 * weight + weight @ targets.T @ keys + 0.5 * weight @ kept.T @ kept).T).T
    result.apply(model)
    assert torch.allclose(layer.value.weight.double(), expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="already applied"):
        result.apply(model)
    result.revert(model)
    assert _unchanged(model, before)
    with pytest.raises(RuntimeError, match="not applied"):
        result.revert(model)


def test_report_counts_parameters_rank_and_time(fresh):
    model = fresh()
    report = edit(model, "time", source=SOURCE, destination=DESTINATION).report(model)
    width = model.unet.config.cross_attention_dim
    assert report["weights"] == 2 * len(model.cross_attention_layers)
    assert 0 < report["rank"] <= min(4 * 77, width)
    assert report["parameters_changed"] == sum(
        2 * layer.key.weight.numel() for layer in model.cross_attention_layers)  # dense: keys span the width
    assert 0 < report["parameters_changed_percent"] < 100 and report["seconds"] > 0


def test_save_load_roundtrip_and_refusals(fresh, tmp_path):
    model, other = fresh(), fresh(seed=1)
    result = edit(model, "time", source=SOURCE, destination=DESTINATION)
    path = result.save(tmp_path / "edit.safetensors")
    loaded = load_edit(path)
    assert loaded.method == "time" and loaded.params["source"] == SOURCE
    edited = copy.deepcopy(model)
    result.apply(model)
    loaded.apply(edited)
    assert all(torch.equal(a, b) for a, b in zip(model.unet.parameters(), edited.unet.parameters(), strict=True))
    before = _state(other)
    with pytest.raises(EditMismatchError, match="differs from the base"):
        loaded.apply(other)
    assert _unchanged(other, before)
    with pytest.raises(EditMismatchError, match="computed for a sd1 model, not sdxl"):
        loaded.apply(fresh("sdxl"))
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    first = next(iter(tensors))
    tensors[first] = tensors[first] * 1.01
    save_file(tensors, str(tmp_path / "tampered.safetensors"), metadata=metadata)
    with pytest.raises(EditMismatchError, match="modified after it was saved"):
        load_edit(tmp_path / "tampered.safetensors")
    (tmp_path / "truncated.safetensors").write_bytes(path.read_bytes()[:-100])
    torch.save({"w": torch.ones(2)}, tmp_path / "pickle.safetensors")  # never unpickled
    for name in ("truncated.safetensors", "pickle.safetensors"):
        with pytest.raises(EditMismatchError, match=f"{name} is not a readable localize edit file"):
            load_edit(tmp_path / name)


def test_lora_export_reproduces_the_edited_model(fresh, tmp_path):
    model = fresh()
    reference = copy.deepcopy(model)
    result = edit(model, "time", source=SOURCE, destination=DESTINATION)
    quickfix = edit(model, "diffquickfix", source="a pack of roses", destination="a pack of tulips")
    both = compose(result, quickfix)
    assert both.rank == max(result.rank, quickfix.rank)
    both.to_lora(tmp_path / "lora.safetensors")
    both.apply(model)
    reference.pipeline.load_lora_weights(str(tmp_path / "lora.safetensors"))
    prompts, seeds = ["a pack of roses", "a field of tulips"], [0, 1]
    edited = generate(model, prompts, seeds, steps=3)
    via_lora = generate(reference, prompts, seeds, steps=3)
    plain = generate(fresh(), prompts, seeds, steps=3)
    assert not torch.allclose(edited, plain, atol=1e-3)  # the edit changes images ...
    assert torch.allclose(edited, via_lora, atol=1e-4)  # ... and the LoRA reproduces them


def test_compose_adds_updates_and_refuses_other_bases(fresh):
    model = fresh()
    first = edit(model, "time", source=SOURCE, destination=DESTINATION)
    second = edit(model, "time", source="a red car", destination="a red sports car")
    both = compose(first, second)
    address = next(iter(first.updates))
    weight = model.unet.get_parameter(address.removeprefix("unet."))
    expected = weight + first.updates[address].up @ first.updates[address].down + (
        second.updates[address].up @ second.updates[address].down)
    assert torch.allclose(both.updates[address].edited(weight), expected, atol=1e-6)
    first.apply(model)
    on_edited = edit(model, "time", source="a red car", destination="a red sports car")
    first.revert(model)
    with pytest.raises(EditMismatchError, match="different base weights"):
        compose(first, on_edited)


def test_diffquickfix_targets_exclude_the_bias(fresh):
    """The edited out_proj is the ridge solution for targets W t (the destination's outputs without the bias,
    which the layer adds back); the reference notebook's targets W t + b would count the bias twice."""
    model = fresh()
    projection = linear_of(model, text_layer(model, 0, 0), "attention_out")
    linear, address = projection.module, projection.address
    assert projection.site == "text_encoder.0.layers.0.self_attn.out_proj"
    with torch.no_grad():
        linear.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))  # random models start at 0
    source, destination = "a photo of a rose", "a photo of a tulip"
    result = edit(model, "diffquickfix", source=source, destination=destination, lam=0.01, templates=())
    assert list(result.updates) == [address]
    _, inputs = encode_recording(model, [source, destination], projection)
    from localize.tokens import subject_span

    src, dst = subject_span(model.tokenizer, source, destination)
    keys, targets = inputs[0, src].double(), inputs[1, dst].double()
    weight, bias = linear.weight.detach().double(), linear.bias.detach().double()
    gram = 0.01 * torch.eye(keys.shape[1], dtype=torch.float64) + keys.T @ keys

    def ridge(values):
        return torch.linalg.solve(gram, (0.01 * weight + values.T @ keys).T).T

    result.apply(model)
    edited = linear.weight.detach().double()
    result.revert(model)
    assert torch.allclose(edited, ridge(targets @ weight.T), atol=1e-5)
    assert not torch.allclose(edited, ridge(targets @ weight.T + bias), atol=1e-3)


def test_diffquickfix_preservation_solves_the_ridge_with_every_preserved_token(fresh):
    """With `preserve`, G gains s P^T P over every token P of the preserved prompts and the numerator s W P^T P."""
    model = fresh()
    projection = linear_of(model, text_layer(model, 0, 0), "attention_out")
    source, destination, kept = "a photo of a rose", "a photo of a tulip", ["a red car", "a photo of a dog"]
    result = edit(model, "diffquickfix", source=source, destination=destination, lam=0.01, templates=(),
                  preserve=kept, preserve_scale=0.5)
    _, inputs = encode_recording(model, [source, destination, *kept], projection)
    from localize.tokens import subject_span

    src, dst = subject_span(model.tokenizer, source, destination)
    keys, targets = inputs[0, src].double(), inputs[1, dst].double()
    preserved = inputs[2:].flatten(0, 1).double()
    weight = projection.module.weight.detach().double()
    gram = 0.01 * torch.eye(keys.shape[1], dtype=torch.float64) + keys.T @ keys + 0.5 * preserved.T @ preserved
    numerator = 0.01 * weight + weight @ targets.T @ keys + 0.5 * weight @ preserved.T @ preserved
    with result.applied(model):
        edited = projection.module.weight.detach().double().clone()
    assert torch.allclose(edited, torch.linalg.solve(gram, numerator.T).T, atol=1e-5)


def test_refact_is_rank_one_and_moves_the_source_toward_the_destination(fresh):
    model = fresh()
    source, destination = "a photo of a rose", "a photo of a tulip"
    result = edit(model, "refact", source=source, destination=destination, layer=1, templates=(), steps=60,
                  objective="conditioning", weight_decay=0.0, clamp_norm=None)
    assert result.rank == 1 and len(result.updates) == 1
    before = text_contexts(model, [source, destination])
    result.apply(model)
    after = text_contexts(model, [source])
    result.revert(model)
    from localize.tokens import subject_span

    src, dst = subject_span(model.tokenizer, source, destination)
    gap = lambda contexts: (contexts[0, src] - before[1, dst]).norm()  # noqa: E731
    assert gap(after) < 0.9 * gap(before)


def test_neuron_ablation_zeroes_exactly_its_rows(fresh, tmp_path):
    model = fresh()
    result = edit(model, "neurons", neurons=["cross_attn.2.to_v:3", "cross_attn.2.to_v:5", (0, "to_k", 1)])
    layer = model.cross_attention_layers[2]
    before = layer.value.weight.detach().clone()
    result.apply(model)
    after = layer.value.weight.detach()
    assert torch.equal(after[[3, 5]], torch.zeros_like(after[[3, 5]]))
    keep = [i for i in range(len(before)) if i not in (3, 5)]
    assert torch.equal(after[keep], before[keep])
    result.revert(model)
    scores = pd.DataFrame({"layer": [1, 1, 4], "projection": ["to_k", "to_v", "to_v"], "index": [0, 2, 7],
                           "t": [0.5, -9.0, 3.0]})
    scores.to_parquet(tmp_path / "neuron_scores.parquet")
    top = edit(model, "neurons", scores=str(tmp_path / "neuron_scores.parquet"), k=2)
    assert sorted(top.updates) == sorted([f"unet.{model.cross_attention_layers[1].name}.to_v.weight",
                                          f"unet.{model.cross_attention_layers[4].name}.to_v.weight"])


def test_locoedit_reads_locogens_chosen_window(fresh, tmp_path):
    model = fresh()
    pd.DataFrame({"window": [0, 1, 2], "layers": [[0, 1], [1, 2], [2, 3]], "chosen": [False, True, False]}).to_parquet(
        tmp_path / "results.parquet")
    result = edit(model, "locoedit", source="a house in the style of Monet", destination="a house",
                  results=str(tmp_path / "results.parquet"))
    names = {model.cross_attention_layers[k].name for k in (1, 2)}
    assert {address.split(".", 1)[1].rsplit(".", 2)[0] for address in result.updates} == names


def test_uce_preservation_keeps_preserved_prompts(fresh):
    model = fresh()
    preserve = ["a painting by Rembrandt", "a painting by Vermeer", "a photo of a dog"]
    keys = text_contexts(model, preserve)
    layer = model.cross_attention_layers[0]
    original = layer.value(keys)

    def drift(**params):
        result = edit(model, "uce", concepts=["Van Gogh", "Picasso"], guides="", **params)
        result.apply(model)
        moved = (layer.value(keys) - original).norm()
        result.revert(model)
        return moved

    with torch.no_grad():
        assert drift(preserve=preserve, preserve_scale=10.0) < 0.5 * drift()


@pytest.mark.parametrize("family", ["sdxl", "if"])
def test_time_edits_other_families(tiny_models, family):
    model = tiny_models(family)
    before = _state(model)
    result = edit(model, "time", source=SOURCE, destination=DESTINATION, layers=[0, 1])
    assert len(result.updates) == 4
    result.apply(model)
    result.revert(model)
    assert _unchanged(model, before)


@pytest.mark.parametrize("method, params, message", [
    ("time", {"source": "a pack of roses", "destination": "a bunch of tulips"}, "cannot align"),
    ("time", {"source": SOURCE, "destination": DESTINATION, "lam": 0}, "lambda must be a finite number > 0"),
    ("time", {"source": SOURCE, "destination": DESTINATION, "lam": float("inf")}, "lambda must be a finite number"),
    ("time", {"source": "", "destination": DESTINATION}, "an empty source prompt cannot be edited"),
    ("uce", {"concepts": ["a rose", "a cat"], "guides": ["a", "b", "c"]}, r"one guide per concept, got 2 concept"),
    ("uce", {"concepts": [" "], "guides": ""}, "an empty concept prompt cannot be edited"),
    ("time", {"source": SOURCE, "destination": SOURCE}, "changes no weight"),
    ("time", {"source": SOURCE, "destination": DESTINATION, "layers": [99]}, "layers .*99.* invalid"),
    ("diffquickfix", {"source": "a rose", "destination": "a tulip", "subject": "daisy"}, "'daisy' occurs not"),
    ("locoedit", {"source": "a", "destination": "b"}, "either as `layers`"),
    ("neurons", {"neurons": ["cross_attn.0.to_q:1"]}, "'cross_attn.K.PROJECTION:N'"),
    ("neurons", {"neurons": ["0:to_v:1"]}, "e.g. 'cross_attn.4.to_v:17'"),
    ("uce", {"concepts": "Van Gogh", "mode": "forget"}, "unknown UCE mode"),
    ("time", {"source": SOURCE, "destinaton": DESTINATION}, "no parameter"),
    ("time", {"source": SOURCE, "destination": DESTINATION, "preserve": [SOURCE]}, "both edited and preserved"),
    ("diffquickfix", {"source": "a rose", "destination": "a tulip", "preserve": ["a rose"]}, "both edited and"),
    ("fold", {}, "unknown edit method"),
    ("uce", {"concepts": "Van Gogh", "preserve_tokens": "last"}, "unknown preserve_tokens 'last'; valid: all, final"),
    ("uce", {"concepts": "Van Gogh", "mode": "moderate", "strength": 0.5, "moderation": "soft"},
     "unknown moderation 'soft'; valid: authors, partial"),
    ("diffquickfix", {"source": "a rose", "destination": "a tulip", "pairing": "pad"},
     "unknown pairing 'pad'; valid: last, trim"),
    ("diffquickfix", {"source": "a rose", "destination": "a tulip", "bias": "none"}, "unknown bias 'none'; valid"),
    ("refact", {"source": "a rose", "destination": "a tulip", "objective": "kl"}, "unknown objective 'kl'; valid"),
    ("refact", {"source": "a rose", "destination": "a tulip", "shift_at": "end"}, "unknown shift_at 'end'"),
    ("refact", {"source": "a rose", "destination": "a tulip", "covariance_tokens": "x"}, "covariance_tokens 'x'"),
    ("uce", {"mode": "debias", "concept": "a doctor", "attributes": ["a red doctor", "a blue doctor"],
             "classify": len, "search": "grid"}, "unknown search 'grid'; valid: bracket, authors"),
    ("uce", {"mode": "joint"}, "needs at least one of erase, moderate or concept"),
    ("uce", {"mode": "forget"}, "unknown UCE mode 'forget'; valid: erase, moderate, debias, joint"),
    ("refact", {"source": "a rose", "destination": "a tulip", "layer": 12}, r"has no layer 12: it has \d+ \(0\.\."),
])
def test_bad_input_is_a_clear_error_and_leaves_the_model_untouched(fresh, method, params, message):
    model = fresh()
    before = _state(model)
    with pytest.raises((ValueError, TypeError), match=message):
        edit(model, method, **params)
    assert _unchanged(model, before)


def test_singular_gram_without_lambda_is_reported():
    keys = torch.randn(3, 16)
    with pytest.raises(IllConditionedError, match="singular or ill-conditioned"):
        locoedit.RidgeProblem(keys, 0.0).factor()


def test_time_recolors_the_organisms_apple_and_revert_restores_it(organism):
    """Ground truth: the organism draws "an apple" red; after TIME "an apple" -> "a blue apple" the oracle reads
    blue, also for a template the edit never saw; reverting gives back the red apples bit for bit."""
    from localize.organism.oracle import read_images

    prompts, seeds = ["an apple", "a sketch of an apple"] * 2, [0, 0, 1, 1]
    before = generate(organism, prompts, seeds, steps=10)
    result = edit(organism, "time", source="an apple", destination="a blue apple")
    result.apply(organism)
    try:
        after = generate(organism, prompts, seeds, steps=10)
    finally:
        result.revert(organism)
    assert (read_images(before)["color"] == "red").all()
    assert (read_images(after)["color"] == "blue").all()
    assert torch.equal(generate(organism, prompts, seeds, steps=10), before)


def test_if_token_positions_are_those_of_the_lowercased_text_its_encoder_sees(tiny_models):
    """IF's pipeline lowercases and strips prompts before tokenizing; the lab's positions follow it."""
    from localize.tokens import eos_span, phrase_positions, token_ids

    model = tiny_models("if")
    raw = model.pipeline.tokenizer
    assert token_ids(model.tokenizer, " An image of a pack of ROSES") == token_ids(raw, "an image of a pack of roses")
    assert phrase_positions(model.tokenizer, "A photo of Van Gogh", "Van Gogh") == \
        phrase_positions(raw, "a photo of van gogh", "van gogh")
    length = raw.model_max_length
    try:  # T5's own tokenizer config may say 512; IF's pipeline encodes 77 positions all the same
        raw.model_max_length = 512
        assert eos_span(model.tokenizer, "a rose")[-1] == model.spec.max_tokens - 1 == 76
    finally:
        raw.model_max_length = length


def test_refact_optimizes_its_value_through_ifs_encoding(tiny_models):
    """diffusers runs IF's encode_prompt under no_grad; ReFACT's value search must still get gradients. T5 has no
    pooled feature, so the paper's contrastive objective is refused by name."""
    model = tiny_models("if")
    before = _state(model)
    with pytest.raises(ValueError, match="use objective='conditioning'"):
        edit(model, "refact", source="a pack of roses", destination="a pack of tulips")
    result = edit(model, "refact", source="a pack of roses", destination="a pack of tulips", templates=(),
                  steps=20, learning_rate=0.5, objective="conditioning", weight_decay=0.0, clamp_norm=None)
    first, last = result.info["mismatch"]
    assert last < 0.9 * first, (first, last)
    assert all(p.grad is None for module in model.text_side for p in module.parameters())
    assert _unchanged(model, before)


def test_ifs_edit_keys_are_what_its_added_kv_projections_read(tiny_models):
    """IF's added-K/V attention normalizes the text before `add_k_proj` / `add_v_proj`: the keys every
    cross-attention edit solves with (`projection_inputs` of `text_contexts`) equal the inputs those projections
    receive in a UNet forward on the pipeline's own prompt encoding (recorded here by hooks), and differ from
    the unnormalized contexts, so a solve on the wrong keys would be caught."""
    from localize.conditioning import projection_inputs, text_contexts

    model = tiny_models("if")
    prompts = ["a pack of roses", "an image of a cat"]
    recorded = {}
    handles = [layer.key.register_forward_pre_hook(lambda m, args, i=layer.index: recorded.setdefault(i, args[0]))
               for layer in model.cross_attention_layers]
    try:
        embeds, _ = model.pipeline.encode_prompt(prompts, do_classifier_free_guidance=False, clean_caption=False)
        size = model.unet.config.sample_size
        sample = torch.randn(len(prompts), model.unet.config.in_channels, size, size,
                             generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.unet(sample, torch.tensor(10), encoder_hidden_states=embeds)
    finally:
        for handle in handles:
            handle.remove()
    contexts = text_contexts(model, prompts)
    assert sorted(recorded) == [layer.index for layer in model.cross_attention_layers]
    for layer in model.cross_attention_layers:
        assert layer.module.norm_cross is not None
        torch.testing.assert_close(projection_inputs(layer, contexts), recorded[layer.index], rtol=0, atol=1e-5)
        assert (contexts - recorded[layer.index]).abs().max() > 1e-2


def test_the_model_records_its_edits_so_any_copy_of_an_edit_reverts_it(fresh, tmp_path):
    """An edit loaded from its file reverts the fresh edit's application (a re-run notebook cell); an edit that
    shares weights with a later one waits for it; `revert_all` restores the base bit for bit; reverting an edit
    that is not applied is an error that changes nothing."""
    model = fresh()
    before = _state(model)
    first = edit(model, "time", source=SOURCE, destination=DESTINATION, layers=[0])
    loaded = load_edit(first.save(tmp_path / "first.safetensors"))
    assert loaded.key == first.key
    first.apply(model)
    with pytest.raises(RuntimeError, match="already applied"):
        loaded.apply(model)
    loaded.revert(model)
    assert _unchanged(model, before) and model.applied_edits == []
    with pytest.raises(RuntimeError, match="not applied to this model; nothing to revert"):
        loaded.revert(model)
    assert _unchanged(model, before)

    first.apply(model)
    second = edit(model, "time", source="a photo of a cat", destination="a photo of a blue cat", layers=[0, 1])
    second.apply(model)  # computed on the edited weights of layer 0: it must come off first
    edited = _state(model)
    with pytest.raises(RuntimeError, match="revert them first"):
        first.revert(model)
    assert _unchanged(model, edited) and [e.method for e in model.applied_edits] == ["time", "time"]
    model.revert_all()
    assert _unchanged(model, before) and model.applied_edits == []


def test_each_method_is_a_typed_function_equal_to_its_dispatch(fresh):
    import inspect

    model = fresh()
    typed = locoedit.time(model, SOURCE, DESTINATION, lam=0.2, layers=[0])
    by_name = edit(model, "time", source=SOURCE, destination=DESTINATION, lam=0.2, layers=[0])
    assert typed.method == "time" and typed.params == by_name.params and typed.updates.keys() == by_name.updates.keys()
    assert all(torch.equal(typed.updates[a].up, by_name.updates[a].up) for a in by_name.updates)
    signature = inspect.signature(locoedit.time)
    assert list(signature.parameters)[:4] == ["model", "source", "destination", "lam"]
    assert signature.return_annotation is locoedit.Edit
    assert "concepts" in inspect.signature(locoedit.uce).parameters
    assert "attributes" in inspect.signature(locoedit.uce_debias).parameters
    with pytest.raises(TypeError, match="unexpected keyword argument 'destinaton'"):
        locoedit.time(model, SOURCE, DESTINATION, destinaton=DESTINATION)


def test_locoedit_refuses_a_locogen_result_of_another_model(fresh, tmp_path):
    sd1, sdxl = fresh("sd1"), fresh("sdxl")
    chosen = [0, 1]
    table = pd.DataFrame({"layers": [[0, 1], [1, 2]], "chosen": [True, False], "model.family": ["sdxl", "sdxl"],
                          "names": [[sdxl.cross_attention_layers[k].name for k in chosen], ["x", "y"]]})
    table.to_parquet(tmp_path / "results.parquet")
    assert edit(sdxl, "locoedit", source=SOURCE, destination="a pack of tulips",
                results=str(tmp_path / "results.parquet")).updates
    with pytest.raises(ValueError, match="LOCOGEN's result for another model: its chosen layers \\[0, 1\\]"):
        edit(sd1, "locoedit", source=SOURCE, destination="a pack of tulips", results=str(tmp_path / "results.parquet"))


def test_an_edit_with_strided_factors_hashes_applies_and_reverts(fresh, tmp_path):
    """Factors that are views with other strides (a rank-1 column of a transposed matrix, as the organism's
    random-direction variants build) hash to the same content as their contiguous copies."""
    import dataclasses

    from locoedit.edits import WeightUpdate

    model = fresh()
    before = _state(model)
    result = edit(model, "time", source=SOURCE, destination=DESTINATION, layers=[0])
    strided = {address: WeightUpdate(u.up.t().contiguous().t()[:, :1], u.down.t().contiguous().t()[:1], u.base_hash)
               for address, u in result.updates.items()}
    contiguous = {address: dataclasses.replace(u, up=u.up.contiguous(), down=u.down.contiguous())
                  for address, u in strided.items()}
    variant = dataclasses.replace(result, updates=strided)
    assert variant.key == dataclasses.replace(result, updates=contiguous).key
    with variant.applied(model):
        assert not _unchanged(model, before)
    assert _unchanged(model, before)
    assert load_edit(variant.save(tmp_path / "strided.safetensors")).key == variant.key
