"""The intervention engine, checked against independent computations (edited weights, plain runs)."""

import copy

import pytest
import torch

from localize import Patch, generate, patching
from localize.generation import encode_patched
from localize.sites import all_site_names, resolve_site

PROMPT = "a photo of a red rose"
STEPS = 3


def hook_count(model) -> int:
    """Forward hooks on the model's modules. transformers installs output-recording hooks of its own on the
    first call that asks for hidden states, so count after a first run and compare."""
    modules = [m for component in (model.unet, *model.text_encoders) for m in component.modules()]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def run(model, patches=(), prompts=(PROMPT,), seeds=(0,), **kwargs):
    return generate(model, list(prompts), list(seeds), steps=STEPS, patches=patches, **kwargs)


def test_hooks_never_outlive_the_context_even_on_exceptions(sd1):
    before, hooks = run(sd1), hook_count(sd1)
    patch = Patch("cross_attn.3.context", op="zero")
    with pytest.raises(RuntimeError, match="boom"):
        with patching(sd1, [patch, Patch("unet.mid_block", op="noise", std=3.0)]):
            assert hook_count(sd1) == hooks + 2
            raise RuntimeError("boom")
    assert hook_count(sd1) == hooks
    with pytest.raises(ValueError):
        run(sd1, [Patch("text_encoder.0.embeddings", op="add", value=torch.ones(3))])  # fails inside a hook
    assert hook_count(sd1) == hooks
    assert torch.equal(run(sd1), before)


def test_zeroing_value_neurons_equals_zeroing_their_weights(sd1):
    layer = sd1.cross_attention_layers[4]
    patched = run(sd1, [Patch("cross_attn.4.to_v", op="zero", neurons=[0, 3])])
    edited = copy.deepcopy(sd1)
    with torch.no_grad():
        edited.cross_attention_layers[4].value.weight[[0, 3]] = 0
    assert layer.value.weight[0].abs().sum() > 0  # the original is untouched
    torch.testing.assert_close(patched, run(edited), rtol=0, atol=1e-6)


def test_context_site_is_what_the_layer_sees(sd1):
    """Giving every layer another prompt's conditioning (cond branch) generates that prompt."""
    other = "a painting of a blue cat"
    embedding = sd1.spec.encode(sd1.pipeline, [other], (64, 64))["encoder_hidden_states"][0]
    patches = [Patch(f"cross_attn.{k}.context", value=embedding, branch="cond")
               for k in range(len(sd1.cross_attention_layers))]
    torch.testing.assert_close(run(sd1, patches), run(sd1, prompts=[other]), rtol=0, atol=1e-5)


def test_token_selection_on_a_causal_encoder(sd1):
    """CLIP's text encoder is causal: changing token 5's embedding leaves positions 0..4 untouched."""
    encoder, tokenizer = sd1.text_encoders[0], sd1.tokenizer
    ids = tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        clean = encoder(ids)[0]
        with patching(sd1, [Patch("text_encoder.0.embeddings", op="noise", tokens=[5], std=2.0)]):
            noisy = encoder(ids)[0]
    assert torch.equal(noisy[:, :5], clean[:, :5])
    assert not torch.allclose(noisy[:, 5:], clean[:, 5:])


def test_k_row_patches_in_one_batch_equal_k_separate_runs(sd1):
    """Row 0 clean, rows 1..K each patched differently (ROME's convention): one batched call equals K calls."""
    embeds = sd1.spec.encode(sd1.pipeline, ["a blue cat"], (64, 64))["encoder_hidden_states"][0]
    corrupt = {"site": "text_encoder.0.embeddings", "op": "noise", "tokens": [4, 5], "std": 3.0, "seed": 7}
    variants = [  # each: the patches of one configuration, placed on prompt row r
        lambda r: [Patch(**corrupt, rows=[r])],
        lambda r: [Patch("text_encoder.0.layers.0.self_attn", op="zero", tokens=[5], rows=[r])],
        lambda r: [Patch("cross_attn.8.context", value=embeds, branch="cond", rows=[r])],
        lambda r: [Patch("cross_attn.2.to_k", op="add", value=torch.full((32,), 0.5), steps=(1, 3), rows=[r])],
        lambda r: [Patch("unet.up_blocks.1.resnets.0", op="zero", neurons=[1, 2], branch="uncond", rows=[r])],
        lambda r: [Patch(**corrupt, rows=[r]), Patch("cross_attn.6", op="mean_ablate", source_rows=[0, r], rows=[r])],
        lambda r: [Patch(**corrupt, rows=[r]),
                   Patch("unet.down_blocks.1.attentions.0.transformer_blocks.0.ff", op="restore", rows=[r])],
    ]
    k = len(variants)
    batched = run(sd1, [p for i, v in enumerate(variants) for p in v(i + 1)], prompts=[PROMPT] * (k + 1),
                  seeds=[11] * (k + 1))
    for i, variant in enumerate(variants):
        alone = run(sd1, variant(1), prompts=[PROMPT] * 2, seeds=[11, 11])
        torch.testing.assert_close(batched[[0, i + 1]], alone, rtol=0, atol=1e-5)
        assert not torch.allclose(alone[1], alone[0])


def test_restoring_a_state_in_every_row_from_row_0(sd1):
    """Restoring the whole cross-attention context of every layer undoes a corruption of it."""
    noise = [Patch(f"cross_attn.{k}.context", op="noise", std=2.0, rows=[1]) for k in range(16)]
    restore = [Patch(f"cross_attn.{k}.context", op="restore", rows=[1]) for k in range(16)]
    images = run(sd1, noise + restore, prompts=[PROMPT] * 2, seeds=[0, 0])
    torch.testing.assert_close(images[1], images[0], rtol=0, atol=1e-6)
    corrupted = run(sd1, noise, prompts=[PROMPT] * 2, seeds=[0, 0])
    assert not torch.allclose(corrupted[1], corrupted[0])


def test_a_user_function_is_an_operation_on_the_selected_entries_only(sd1):
    """`op="function"` gets the patched rows and writes back only the selected neurons, like the built-in ops."""
    seen = []

    def zeroed(rows):
        seen.append(rows.shape)
        return torch.zeros_like(rows)

    patched = run(sd1, [Patch("cross_attn.4.to_v", op="function", fn=zeroed, neurons=[0, 3], rows=[1])],
                  prompts=[PROMPT] * 2, seeds=[0, 0])
    zero = run(sd1, [Patch("cross_attn.4.to_v", op="zero", neurons=[0, 3], rows=[1])], prompts=[PROMPT] * 2,
               seeds=[0, 0])
    assert torch.equal(patched, zero) and not torch.equal(patched[0], patched[1])
    assert seen and all(shape[0] == 1 for shape in seen)  # the selected row of each CFG half
    with pytest.raises(ValueError, match=r"must return a tensor of the rows' shape \(1, 77, "):
        run(sd1, [Patch("cross_attn.4.context", op="function", fn=lambda rows: rows[:, :3])])


def test_branches_and_steps(sd1):
    clean = run(sd1, guidance=1.0)
    zero_uncond = Patch("cross_attn.3.context", op="zero", branch="uncond")
    with pytest.raises(ValueError, match=r"branch='uncond', but guidance=1.0 <= 1 runs no unconditional half"):
        run(sd1, [zero_uncond], guidance=1.0)  # it would change nothing
    assert not torch.equal(run(sd1, [zero_uncond]), run(sd1))
    assert not torch.equal(run(sd1, [Patch("cross_attn.3.context", op="zero", branch="cond")], guidance=1.0), clean)
    late = Patch("cross_attn.3.context", op="zero", steps=(STEPS - 1, STEPS))
    early = Patch("cross_attn.3.context", op="zero", steps=(0, 1))
    assert not torch.equal(run(sd1, [late]), run(sd1, [early]))


@pytest.mark.parametrize("patch, error, message", [
    (Patch("cross_attn.16.context", op="zero"), IndexError, "16 out of range: the model has 16"),
    (Patch("cross_atn.3.context", op="zero"), ValueError, "unknown site 'cross_atn.3.context'; valid sites"),
    (Patch("unet.down_blocks.9", op="zero"), ValueError, "unknown site"),
    (Patch("cross_attn.3.context", op="zero", rows=[2]), IndexError, "beyond the batch of 1 rows"),
    (Patch("unet.mid_block", op="zero", tokens=[1]), ValueError, "token positions apply to text-axis sites"),
    (Patch("text_encoder.0.layers.0.mlp", op="zero", steps=(0, 1)), ValueError, "step range does not apply"),
    (Patch("cross_attn.3.context", op="zero", steps=(0, 9)), ValueError, "outside the schedule"),
    (Patch("text_encoder.0.layers.12", op="zero"), IndexError, "text encoder 0 layer index 12"),
])
def test_bad_patches_fail_before_any_hook(sd1, patch, error, message):
    hooks = hook_count(sd1)
    with pytest.raises(error, match=message):
        run(sd1, [Patch("cross_attn.0.context", op="zero"), patch])
    assert hook_count(sd1) == hooks


def test_bad_patch_data():
    with pytest.raises(ValueError, match="unknown patch operation 'erase'; valid: replace, add"):
        Patch("cross_attn.0.context", op="erase")
    with pytest.raises(ValueError, match="needs a value"):
        Patch("cross_attn.0.context", op="replace")
    with pytest.raises(ValueError, match="std must be > 0"):
        Patch("cross_attn.0.context", op="noise", std=0.0)
    with pytest.raises(ValueError, match="unknown CFG branch"):
        Patch("cross_attn.0.context", op="zero", branch="negative")
    with pytest.raises(ValueError, match="needs fn"):
        Patch("cross_attn.0.context", op="function")
    with pytest.raises(ValueError, match="takes no fn"):
        Patch("cross_attn.0.context", op="zero", fn=torch.neg)


def test_every_listed_site_resolves(tiny_models):
    for family in ("sdxl", "if"):
        model = tiny_models(family)
        names = all_site_names(model)
        last_layer = len(model.cross_attention_layers) - 1
        assert "text_encoder.0.layers.0.self_attn" in names and f"cross_attn.{last_layer}.to_v" in names
        for name in names[:: max(1, len(names) // 200)]:
            resolve_site(model, name)


@pytest.mark.parametrize("family", ["sdxl", "if"])
def test_patches_run_on_sdxl_and_if(tiny_models, family):
    model = tiny_models(family)
    clean = run(model)
    hooks = hook_count(model)
    last_encoder = len(model.text_encoders) - 1
    patches = [Patch(f"text_encoder.{last_encoder}.layers.1.mlp", op="noise", std=2.0, rows=[1]),
               Patch("cross_attn.5.to_v", op="zero", rows=[1]),
               Patch(f"unet.{model.unet_components[3].name}", op="restore", rows=[1])]
    images = run(model, patches, prompts=[PROMPT] * 2, seeds=[0, 0])
    assert not torch.allclose(images[0], images[1])
    torch.testing.assert_close(images[0], clean[0], rtol=0, atol=1e-5)
    assert hook_count(model) == hooks


def test_two_addresses_of_one_module_keep_their_own_axes(sd1):
    """`cross_attn.2.to_k` (a text-axis site) and the same module as a plain UNet site, in one hook."""
    layer = sd1.cross_attention_layers[2]
    both = [Patch("cross_attn.2.to_k", op="zero", tokens=[1, 2]), Patch(f"unet.{layer.name}.to_k", op="zero",
                                                                        neurons=[0])]
    edited = copy.deepcopy(sd1)
    with torch.no_grad():
        edited.cross_attention_layers[2].key.weight[0] = 0
    expected = run(edited, [Patch("cross_attn.2.to_k", op="zero", tokens=[1, 2])])
    torch.testing.assert_close(run(sd1, both), expected, rtol=0, atol=1e-6)


def test_sdxl_penultimate_layer_patches_reach_the_conditioning_after_earlier_encodes(tiny_models):
    """SD-XL reads each encoder's penultimate layer through transformers' hidden-state capture hooks, installed
    by the first encode; a patch there must still change the conditioning, and the context cache still works."""
    from localize.conditioning import text_contexts
    from localize.context_cache import has_hooks

    model = tiny_models("sdxl")
    clean = text_contexts(model, [PROMPT])  # installs transformers' capture hooks
    assert not has_hooks(model.text_side)
    for encoder in range(len(model.text_encoders)):
        layers = sum(entry.encoder == encoder for entry in model.text_encoder_layers)
        with patching(model, [Patch(f"text_encoder.{encoder}.layers.{layers - 2}", op="zero")]):
            patched = text_contexts(model, [PROMPT])
        assert not torch.equal(patched, clean), encoder
    misses = model.context_cache.misses
    torch.testing.assert_close(text_contexts(model, [PROMPT]), clean, rtol=0, atol=0)
    assert model.context_cache.misses == misses  # read from the cache


def test_patching_around_the_pipelines_own_call(sd1):
    """A patch that treats every row alike works around any forward, the pipeline's own call included, and equals
    the same patch in `generate`; a patch that picks rows or a CFG branch needs the layout `generate` sets, and
    around the pipeline it is an error rather than landing on the unconditional half."""
    everywhere = Patch("cross_attn.3.context", op="zero")
    generators = [torch.Generator("cpu").manual_seed(0)]
    with patching(sd1, [everywhere]):
        pipeline = sd1.pipeline([PROMPT], num_inference_steps=STEPS, guidance_scale=7.5, generator=generators,
                                output_type="pt")[0]
    patched = run(sd1, [everywhere])
    assert (pipeline.float() - patched).abs().max() <= 1e-5
    assert (patched - run(sd1)).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="picks rows or a CFG branch, but the batch layout of this forward"):
        with patching(sd1, [Patch("cross_attn.3.context", op="zero", rows=[0])]):
            sd1.pipeline([PROMPT], num_inference_steps=STEPS, guidance_scale=7.5, output_type="pt")


def test_captures_read_what_a_plain_hook_reads_and_see_the_blocks_patches(sd1):
    """A capture of a module's input and of a layer's output equals plain PyTorch hooks on the same modules; a
    patch on an input site writes what the module receives, and a capture after it sees the patched value."""
    from localize import capturing

    out_proj = sd1.text_encoder_layers[0].module.self_attn.out_proj
    plain = {"keys": [], "value": []}
    handles = [out_proj.register_forward_pre_hook(lambda m, args: plain["keys"].append(args[0].clone())),
               sd1.cross_attention_layers[2].value.register_forward_hook(
                   lambda m, a, out: plain["value"].append(out.clone()))]  # both return None: they only read
    try:
        expected = run(sd1)
    finally:
        for handle in handles:
            handle.remove()
    hooks = hook_count(sd1)
    keys, value = "text_encoder.0.layers.0.self_attn.out_proj.input", "cross_attn.2.to_v"
    with capturing(sd1, [keys, value]) as captured:
        assert torch.equal(run(sd1), expected)  # capturing changes nothing
    assert hook_count(sd1) == hooks
    assert len(captured[keys]) == 2 and len(captured[value]) >= STEPS  # prompt and empty prompt; each UNet call
    for site, name in ((keys, "keys"), (value, "value")):
        assert len(captured[site]) == len(plain[name])
        assert all(torch.equal(a, b) for a, b in zip(captured[site], plain[name], strict=True))
    with patching(sd1, [Patch(keys, op="zero", tokens=[4])], capture=[keys]) as patched:
        changed = run(sd1)
    assert not patched.captured[keys][0][:, 4].any() and patched.captured[keys][0][:, 5].any()
    assert not torch.equal(changed, expected)
    with pytest.raises(ValueError, match="unknown site 'cross_attn.2.context.input'"):
        resolve_site(sd1, "cross_attn.2.context.input")
    assert resolve_site(sd1, "text_encoder.0.layers.0.mlp.fc2.input").hook == "input"
    with pytest.raises(ValueError, match="unknown site 'cross_atn.2'; valid sites"):
        with capturing(sd1, [value, "cross_atn.2"]):
            raise AssertionError("a capture of an unknown site must fail before the block")
    assert hook_count(sd1) == hooks


@pytest.mark.parametrize("family", ["sd1", "sdxl", "if"])
def test_each_text_encoders_embedding_site_is_the_module_its_forward_calls(tiny_models, family):
    """Noise on `text_encoder.E.embeddings` changes the conditioning of its row only (T5 in transformers 5 embeds
    with `encoder.embed_tokens`, a module tied to, but not the same as, `shared`)."""
    model = tiny_models(family)
    for encoder in range(len(model.text_encoders)):
        patch = Patch(f"text_encoder.{encoder}.embeddings", op="noise", std=1.0, rows=[1], branch="cond")
        states = encode_patched(model, [PROMPT] * 2, [patch])["encoder_hidden_states"]
        assert not torch.equal(states[0], states[1]), f"text encoder {encoder}"


def test_a_patch_whose_module_never_runs_is_an_error(sd1):
    with pytest.raises(RuntimeError, match=r"\['cross_attn.3.to_v'\] never ran"):
        encode_patched(sd1, [PROMPT], [Patch("cross_attn.3.to_v", op="zero")])
