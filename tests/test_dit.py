"""Diffusion transformers (FLUX.1, Stable Diffusion 3.x): registry, layer tables, generation, sites."""

import pytest
import torch

from localize import Patch, generate, load_model, random_model
from localize.layer_table import block_table, layer_table
from localize.sites import resolve_site

PROMPTS = ["a photo of a red rose", "a painting of a cat"]


@pytest.fixture(scope="module")
def full():
    return {family: random_model(family, "full", device="meta") for family in ("flux", "sd3")}


def encoder_layer_counts(model) -> list[int]:
    encoders = range(len(model.text_encoders))
    return [sum(1 for layer in model.text_encoder_layers if layer.encoder == e) for e in encoders]


def test_flux_full_tables_match_flux1_dev(full):
    flux = full["flux"]
    assert len(flux.cross_attention_layers) == 19  # FLUX.1-dev's dual-stream blocks
    kinds = block_table(flux)["kind"].tolist()
    assert kinds == ["block"] * 19 + ["single"] * 38  # execution order: every dual-stream block first
    assert flux.unet_components[19].name == "single_transformer_blocks.0"
    assert encoder_layer_counts(flux) == [24, 12]  # T5-XXL (the text stream) first, then CLIP-L (pooled)
    assert round(sum(p.numel() for p in flux.denoiser.parameters()) / 1e9, 1) == 11.9  # "12B"
    assert flux.denoiser.config.guidance_embeds


def test_sd3_full_tables_match_sd35_large(full):
    sd3 = full["sd3"]
    assert len(sd3.cross_attention_layers) == len(sd3.unet_components) == 38
    assert set(block_table(sd3)["kind"]) == {"block"}
    assert encoder_layer_counts(sd3) == [12, 32, 24]  # CLIP-L, CLIP-G, T5-XXL
    assert round(sum(p.numel() for p in sd3.denoiser.parameters()) / 1e9, 1) == 8.1  # "8.1B"


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_text_reading_layers_are_the_dual_blocks_text_projections(tiny_models, family):
    model = tiny_models(family)
    table = layer_table(model)
    assert table["name"].tolist() == [f"transformer_blocks.{i}.attn" for i in range(len(table))]
    layer = model.cross_attention_layers[3]
    block = model.denoiser.transformer_blocks[3]
    assert layer.key is block.attn.add_k_proj and layer.value is block.attn.add_v_proj


def test_flux_has_no_unconditional_half(tiny_models):
    flux = tiny_models("flux")
    with pytest.raises(ValueError, match="guidance-distilled.*branch='cond'"):
        generate(flux, PROMPTS[:1], [0], steps=1, patches=[Patch("text_encoder.0.layers.0", "zero", branch="uncond")])
    # guidance is an input: another scale changes the image without a second half
    assert not torch.equal(generate(flux, PROMPTS[:1], [0], steps=2, guidance=1.0),
                           generate(flux, PROMPTS[:1], [0], steps=2, guidance=7.5))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_unet_sites_on_a_dit_name_the_dit_site_kinds(tiny_models, family):
    model = tiny_models(family)
    for site in ("cross_attn.0.to_k", "unet.up_blocks.0"):
        with pytest.raises(ValueError, match=r"UNet site.*DiT.*transformer\.<module path>"):
            resolve_site(model, site)
    assert resolve_site(model, "transformer.context_embedder").module is model.denoiser.context_embedder


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_patches_on_text_encoders_and_transformer_modules_change_the_image_and_leave_nothing(tiny_models, family):
    model = tiny_models(family)
    before = generate(model, PROMPTS, [0, 1], steps=2)
    for patch in (Patch("text_encoder.0.layers.1", "zero", rows=[1]), Patch("transformer.context_embedder", "zero",
                                                                              rows=[1])):
        patched = generate(model, PROMPTS, [0, 1], steps=2, patches=[patch])
        assert (patched[0] - before[0]).abs().max() <= 1e-5  # row 0 unpatched (up to batch effects)
        assert (patched[1] - before[1]).abs().max() > 1e-3
    assert torch.equal(generate(model, PROMPTS, [0, 1], steps=2), before)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_saved_dit_pipeline_loads_and_is_detected(tmp_path, tiny_models, family):
    tiny_models(family).pipeline.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert model.family == family
    assert len(model.cross_attention_layers) == len(tiny_models(family).cross_attention_layers)


def test_block_sites_read_the_streams_where_the_forward_passes_them(tiny_models):
    flux = tiny_models("flux")
    last = len(flux.cross_attention_layers) - 1
    sites = ["transformer.context_embedder", "block.0.text_in", "block.4.text", "block.5.text_in",
             f"block.{last}.text", "single.0.text_in", "single.0.image", "single.1.text", "block.2.add_v"]
    from localize.engine import capturing

    with capturing(flux, sites) as seen:
        generate(flux, PROMPTS[:1], [0], steps=1)
    first = {site: calls[0] for site, calls in seen.items()}
    assert torch.equal(first["transformer.context_embedder"], first["block.0.text_in"])
    assert torch.equal(first["block.4.text"], first["block.5.text_in"])
    assert torch.equal(first[f"block.{last}.text"], first["single.0.text_in"])
    text_length = first["block.0.text_in"].shape[1]
    assert first["single.1.text"].shape[1] == text_length  # the text slice of the joint sequence
    assert first["single.0.image"].shape[1] == 4  # 32 px: 2 x 2 packed patches
    assert first["block.2.add_v"].shape[1] == text_length


def test_a_patched_image_stream_changes_only_its_row(tiny_models):
    flux = tiny_models("flux")
    before = generate(flux, PROMPTS, [0, 1], steps=2)
    after = generate(flux, PROMPTS, [0, 1], steps=2, patches=[Patch("block.2.image", "zero", rows=[1]),
                                                            Patch("single.3.text", "restore", rows=[1])])
    assert (after[0] - before[0]).abs().max() <= 1e-5 and (after[1] - before[1]).abs().max() > 1e-3


def test_bad_block_sites_name_what_is_valid(tiny_models):
    flux, sd3 = tiny_models("flux"), tiny_models("sd3")
    with pytest.raises(IndexError, match=r"block index 19 out of range.*0\.\.18"):
        resolve_site(flux, "block.19.text")
    with pytest.raises(ValueError, match="no single blocks"):
        resolve_site(sd3, "single.0.text")
    with pytest.raises(ValueError, match="outputs no text stream"):
        resolve_site(sd3, f"block.{len(sd3.cross_attention_layers) - 1}.text")
    with pytest.raises(ValueError, match=r"unknown site 'block\.0\.text_out'.*single\.K"):
        resolve_site(flux, "block.0.text_out")


@pytest.mark.parametrize("family, streams", [("flux", 2 * 57), ("sd3", 38 + 37)])  # SD3's last block: no text out
def test_trace_restores_each_blocks_streams(family, streams, tiny_models, scorer):
    from causal_tracing import TraceSettings, Unit, trace

    model = tiny_models(family)
    unit = Unit("a photo of an apple", "apple", "an apple", 0)
    table = trace(model, scorer, [unit], TraceSettings(steps=1, min_drop=0.0), text_kinds=())
    denoiser = table[table["group"] == "unet"]
    assert len(denoiser) == streams and set(denoiser["kind"]) == {"image", "text"}
    assert denoiser["site"].iloc[0] == "block.0.image" and denoiser["generated"].all()
    assert (table["group"] == "unet").all()  # text states: the same code as every family's (test_causal_tracing)
    assert table[["score_clean", "score_corrupted", "score_restored"]].notna().all().all()
    with pytest.raises(ValueError, match=f"'resnet'.*do not exist in the {family} family.*image, text"):
        trace(model, scorer, [unit], TraceSettings(steps=1), unet_kinds=("resnet",))


@pytest.mark.parametrize("family, blocks, m, windows", [
    ("flux", "dual", 17, 19 - 17 + 1), ("sd3", "dual", 36, 38 - 36 + 1), ("flux", "single", 36, 38 - 36 + 1)])
def test_locogen_windows_of_blocks_match_the_one_window_loop(family, blocks, m, windows, tiny_models, scorer):
    from locogen.layer_search import batched_window_scores, serial_window_scores
    from locogen.settings import SearchSettings, Unit

    model = tiny_models(family)
    unit = Unit("a photo of a box", "a photo of an apple", "an apple", 0)
    settings = SearchSettings(m=m, steps=2, batch_size=4, blocks=blocks)  # a unit split across batches
    _, _, batched = batched_window_scores(model, scorer, [unit], settings)
    assert len(batched[0]) == windows
    assert batched[0] == pytest.approx(serial_window_scores(model, scorer, unit, settings), abs=1e-3)


def test_single_block_windows_need_single_blocks(tiny_models, scorer):
    from locogen.layer_search import search
    from locogen.settings import SearchSettings, Unit

    unit = Unit("a photo of a box", "a photo of an apple", "an apple", 0)
    for family in ("sd3", "sd1"):
        with pytest.raises(ValueError, match=f"the {family} family has no single-stream blocks"):
            search(tiny_models(family), scorer, [unit], SearchSettings(blocks="single"))
    with pytest.raises(ValueError, match="unknown blocks 'triple'; valid: dual, single"):
        SearchSettings(blocks="triple").check()


def test_uce_on_flux_is_the_authors_closed_form_on_its_input_projections(tiny_models):
    """Against the authors' `uce_flux_edit.py` formula written out here: W' = (lam W + sum v* c^T)(lam I +
    sum c c^T)^-1, c = T5's state at the concept's last word (their attention-mask index) or the pooled CLIP
    feature, v* = the original module applied to the guide's (bias included: their convention, `bias="twice"`)."""
    from locoedit import edit

    flux = tiny_models("flux")
    concepts, guides, lam = ["a photo of a cat", "an apple"], ["a photo of a dog", "a pear"], 0.5
    result = edit(flux, "uce", concepts=concepts, guides=guides, lam=lam, preserve_empty=False,
                  concept_tokens="last", bias="twice")
    pipe, transformer = flux.pipeline, flux.denoiser
    embeds, pooled = {}, {}
    for prompt in concepts + guides:
        states, pool, _ = pipe.encode_prompt(prompt, None, max_sequence_length=512)
        last = pipe.tokenizer_2(prompt, padding="max_length", max_length=512, return_tensors="pt")["attention_mask"]
        embeds[prompt], pooled[prompt] = states[0, last.sum() - 2].double(), pool[0].double()
    for path, table in (("context_embedder", embeds), ("time_text_embed.text_embedder.linear_1", pooled)):
        module = transformer.get_submodule(path)
        weight, bias = module.weight.double(), module.bias.double()
        mat1, mat2 = lam * weight, lam * torch.eye(weight.shape[1], dtype=torch.float64)
        for concept, guide in zip(concepts, guides, strict=True):
            c, v = table[concept], weight @ table[guide] + bias
            mat1, mat2 = mat1 + torch.outer(v, c), mat2 + torch.outer(c, c)
        expected = mat1 @ torch.linalg.inv(mat2)
        got = result.updates[f"transformer.{path}.weight"].edited(module.weight.double())
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_uce_on_a_dit_changes_the_concept_and_reverts_bit_exactly(tiny_models):
    from locoedit import edit

    flux = tiny_models("flux")
    before = generate(flux, ["a photo of a cat"], [0], steps=2)
    state = {k: v.clone() for k, v in flux.denoiser.state_dict().items()}
    result = edit(flux, "uce", concepts=["a photo of a cat"], guides=["a photo of a dog"], preserve=["a tree"])
    with result.applied(flux):
        assert (generate(flux, ["a photo of a cat"], [0], steps=2) - before).abs().max() > 1e-3
    assert all(torch.equal(v, state[k]) for k, v in flux.denoiser.state_dict().items())
    with pytest.raises(ValueError, match="edits its text input projections.*leave layers unset"):
        edit(flux, "uce", concepts=["a photo of a cat"], layers=[0])


def test_uce_on_sd3_keys_both_segments_of_its_text_stream(tiny_models):
    """SD3's conditioning is CLIP's 77 positions, then T5's: the concept's last word is a key in each."""
    from locoedit import edit
    from locoedit.input_projections import context_pairs

    sd3 = tiny_models("sd3")
    pair, = context_pairs(sd3, ["a photo of a cat"], ["a photo of a dog"], "last")
    t5 = sd3.tokenizers[2]
    assert pair.source_positions == (5, 77 + len(t5("a photo of a cat").input_ids) - 2)  # "cat" after the start token
    result = edit(sd3, "uce", concepts=["a photo of a cat"], guides=["a photo of a dog"], preserve_empty=False,
                  concept_tokens="last", lam=1e-4)
    assert result.updates["transformer.context_embedder.weight"].rank == 2
    prompts = ["a photo of a cat", "a photo of a dog"]
    contexts = sd3.spec.encode(sd3.pipeline, prompts, (32, 32))["encoder_hidden_states"]
    module = sd3.denoiser.context_embedder
    edited = result.updates["transformer.context_embedder.weight"].edited(module.weight)
    for source, target in zip(pair.source_positions, pair.target_positions, strict=True):  # each key now reads as
        moved = contexts[0, source] @ edited.T  # its guide's (lambda ~ 0: fitted exactly)
        torch.testing.assert_close(moved, contexts[1, target] @ module.weight.T, atol=1e-3, rtol=1e-3)


def test_locoedit_on_dit_blocks_is_the_ridge_solve_on_keys_gathered_from_generations(tiny_models):
    """Against the closed form written out here: W' = (lam W + sum W t k^T)(lam I + sum k k^T)^-1 over every
    step's keys k (the source's text stream entering the block's add_k_proj at its last word and end span) and
    targets t (the destination's at the paired positions, same seed and step), recorded by a plain capture."""
    from localize.engine import capturing
    from localize.tokens import final_span
    from locoedit import edit

    flux = tiny_models("flux")
    source, destination, lam, steps = "a photo of a cat", "a photo of a dog", 0.1, 2
    result = edit(flux, "locoedit", source=source, destination=destination, layers=[1], lam=lam, templates=[],
                  key_seeds=[0], steps=steps, guidance=3.5)
    with capturing(flux, ["block.1.add_k.input"]) as calls:
        generate(flux, [source, destination], [0, 0], steps=steps, guidance=3.5)
    src, dst = final_span(flux.tokenizer, source, destination)
    states = calls["block.1.add_k.input"]
    assert len(states) == steps and not torch.allclose(states[0][0], states[1][0])  # the keys move with the step
    keys = torch.cat([s[0, src] for s in states]).double()
    targets = torch.cat([s[1, dst] for s in states]).double()
    attention = flux.denoiser.transformer_blocks[1].attn
    for name in ("add_k_proj", "add_v_proj"):
        weight = getattr(attention, name).weight.double()
        eye = torch.eye(weight.shape[1], dtype=torch.float64)
        expected = (lam * weight + weight @ targets.T @ keys) @ torch.linalg.inv(lam * eye + keys.T @ keys)
        got = result.updates[f"transformer.transformer_blocks.1.attn.{name}.weight"].edited(weight)
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert len(result.updates) == 2 and result.info["key_rows_per_block"] == len(keys)


def test_locoedit_on_a_dit_measures_its_gap_at_held_out_seeds_and_reverts_bit_exactly(tiny_models):
    """SD3 (classifier-free guidance: the conditional rows are the keys). The fitted gap is what the ridge leaves;
    at a held-out seed, the edited model's keys still project most of the way to the destination's."""
    from locoedit import edit

    sd3 = tiny_models("sd3")
    source, destination = "a photo of a cat", "a photo of a dog"
    before = generate(sd3, [source], [7], steps=2, guidance=4.0)
    state = {k: v.clone() for k, v in sd3.denoiser.state_dict().items()}
    result = edit(sd3, "locoedit", source=source, destination=destination, layers=[0, 1], lam=0.01, templates=[],
                  key_seeds=[0, 1], steps=2, guidance=4.0, held_out_seeds=[7])
    gaps = result.info["gap_left"]
    assert len(gaps["fit"]) == len(gaps["held_out"]) == 2
    assert all(0 <= gap < 0.2 for gap in gaps["fit"]) and all(0 <= gap < 0.5 for gap in gaps["held_out"])
    with result.applied(sd3):
        assert (generate(sd3, [source], [7], steps=2, guidance=4.0) - before).abs().max() > 1e-3
    assert all(torch.equal(v, state[k]) for k, v in sd3.denoiser.state_dict().items())


def test_text_keyed_edits_on_a_dit_say_what_applies(tiny_models, sd1):
    from locoedit import edit

    flux = tiny_models("flux")
    pair = {"source": "a photo of a cat", "destination": "a photo of a dog"}
    with pytest.raises(ValueError, match="TIME solves .* the flux family's DiT the text stream a block reads depends"):
        edit(flux, "time", source="a cat", destination="a black cat")
    for mode in ("debias", "joint"):  # before any image is generated
        with pytest.raises(ValueError, match=f"UCE's {mode} mode solves cross-attention layers .* erase and moderate"):
            edit(flux, "uce", mode=mode, concept="a doctor", attributes=["a man", "a woman"],
                 classify=lambda images: torch.zeros(len(images), dtype=torch.long))
    with pytest.raises(ValueError, match="gathers its keys from generations: give `steps` and `guidance`"):
        edit(flux, "locoedit", **pair, layers=[0])
    with pytest.raises(ValueError, match="alignment='time': LOCOEDIT on a DiT pairs the last word and end span"):
        edit(flux, "locoedit", **pair, layers=[0], steps=1, guidance=3.5, alignment="time")
    with pytest.raises(ValueError, match=r"held_out_seeds \[1\] are also key_seeds"):
        edit(flux, "locoedit", **pair, layers=[0], steps=1, guidance=3.5, key_seeds=[0, 1], held_out_seeds=[1])
    with pytest.raises(ValueError, match=r"dual-stream blocks \[19\] invalid: this model has"):
        edit(flux, "locoedit", **pair, layers=[19], steps=1, guidance=3.5)
    with pytest.raises(ValueError, match="key_seeds, steps: these choose the generations a DiT's LOCOEDIT"):
        edit(sd1, "locoedit", **pair, layers=[0], key_seeds=[0], steps=2)
    from locoedit.dit_blocks import with_job_generation  # the jobs pass their generation settings to a DiT's

    assert with_job_generation(flux, "locoedit", {"guidance": 1.0}, 4, 3.5) == {"steps": 4, "guidance": 1.0}
    assert with_job_generation(sd1, "locoedit", {}, 4, 3.5) == with_job_generation(flux, "uce", {}, 4, 3.5) == {}
