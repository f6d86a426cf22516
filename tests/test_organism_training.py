"""`scripts/train_organism.py`: a run interrupted after a checkpoint and resumed exports the same weights
as an uninterrupted run; the CLIP's delayed reading and end-span pooling."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

SCRIPT = Path(__file__).parents[1] / "scripts" / "train_organism.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_organism", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def config(train, workdir: Path):
    cfg = OmegaConf.structured(train.TrainConfig(workdir=str(workdir), export_dir=str(workdir / "export"),
                                                 checkpoint_every=2))
    cfg.diffusion.steps, cfg.diffusion.batch_size, cfg.diffusion.warmup = 4, 4, 1
    cfg.clip.steps, cfg.clip.batch_size, cfg.clip.warmup = 4, 8, 1
    cfg.clip_span.steps, cfg.clip_span.batch_size, cfg.clip_span.warmup = 4, 8, 1
    return cfg


def run_stage(train, cfg, stage: str) -> None:
    workdir, export, cpu = Path(cfg.workdir), Path(cfg.export_dir), torch.device("cpu")
    if stage == "diffusion":
        train.train_diffusion(cfg, workdir, export, cpu)
    else:
        train.train_clip(cfg, workdir, export, cpu, stage)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stage", ["clip", "clip_span", "diffusion"])
def test_resumed_training_equals_uninterrupted_training(train, tmp_path, monkeypatch, stage):
    straight, resumed = config(train, tmp_path / "straight"), config(train, tmp_path / "resumed")
    for cfg in (straight, resumed):  # clip_span starts from clip; the UNet trains on an exported text encoder
        if stage != "clip":
            run_stage(train, cfg, "clip")
    run_stage(train, straight, stage)

    save = train.Checkpoint.save

    def save_then_crash(self, state):
        save(self, state)
        raise Interrupted

    monkeypatch.setattr(train.Checkpoint, "save", save_then_crash)
    with pytest.raises(Interrupted):
        run_stage(train, resumed, stage)
    assert train.Checkpoint(Path(resumed.workdir), stage).load()["step"] == 2
    monkeypatch.setattr(train.Checkpoint, "save", save)
    run_stage(train, resumed, stage)

    files = sorted(p.name for p in Path(straight.export_dir).glob("*.safetensors"))
    assert files
    for name in files:
        a, b = load_file(Path(straight.export_dir) / name), load_file(Path(resumed.export_dir) / name)
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), name


def test_clip_span_needs_a_finished_clip_stage(train, tmp_path):
    cfg = config(train, tmp_path)
    with pytest.raises(FileNotFoundError, match="finished clip stage"):
        run_stage(train, cfg, "clip_span")


def test_clip_span_can_start_from_an_exported_organism(train, tmp_path):
    """`clip_span.start_from`: zero fine-tuning steps from the shipped weights export them unchanged."""
    from localize.organism.weights import TEXT_ENCODER_FILE, WEIGHTS_DIR
    cfg = config(train, tmp_path)
    cfg.clip_span.steps, cfg.clip_span.start_from = 0, str(WEIGHTS_DIR)
    run_stage(train, cfg, "clip_span")
    exported, shipped = (load_file(d / TEXT_ENCODER_FILE) for d in (Path(cfg.export_dir), WEIGHTS_DIR))
    assert exported.keys() == shipped.keys() and all(torch.equal(exported[k], shipped[k]) for k in shipped)


def test_position_scale_scales_the_position_embeddings_once_as_the_stage_starts(train, tmp_path):
    from localize.organism.weights import TEXT_ENCODER_FILE, WEIGHTS_DIR
    cfg = config(train, tmp_path)
    cfg.clip_span.steps, cfg.clip_span.start_from, cfg.clip_span.position_scale = 0, str(WEIGHTS_DIR), 0.25
    run_stage(train, cfg, "clip_span")
    key = "embeddings.position_embedding.weight"
    exported, shipped = (load_file(d / TEXT_ENCODER_FILE)[key] for d in (Path(cfg.export_dir), WEIGHTS_DIR))
    assert torch.equal(exported, shipped * 0.25)  # a power of two: exact in float16


@pytest.fixture(scope="module")
def text_encoder():
    from localize.organism.weights import text_encoder
    return text_encoder().eval()


def test_delayed_reading_hides_the_words_from_the_end_span_below_the_delay(train, text_encoder):
    from localize.vocab import clip_tokenizer
    tokenizer = clip_tokenizer()
    captions = ["the king of Zarnia", "a photo of a red box"]
    ids = train.caption_ids(tokenizer, captions, "end_span")
    other = train.caption_ids(tokenizer, ["the queen of Brovia", "a photo of a red box"], "end_span")
    first_end = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    assert ids.shape[1] == 77 and (first_end == (other == tokenizer.eos_token_id).int().argmax(dim=1)).all()
    layers = len(text_encoder.encoder.layers)

    def states(token_ids, delay):
        with torch.no_grad(), train.delayed_reading(text_encoder, first_end, torch.tensor(delay), 77):
            return text_encoder(token_ids).last_hidden_state

    with torch.no_grad():
        plain = text_encoder(ids).last_hidden_state
    assert torch.equal(states(ids, [0, 0]), plain)  # no delay: the plain causal encoder
    end = int(first_end[0])
    hidden = states(ids, [layers, 0]), states(other, [layers, 0])
    assert torch.equal(hidden[0][0, end:], hidden[1][0, end:])  # the end span never saw the words
    assert not torch.equal(hidden[0][0, :end], hidden[1][0, :end])  # the words themselves still differ
    assert torch.equal(hidden[0][1], plain[1])  # the other caption, delay 0, is untouched
    partial = states(ids, [layers // 2, 0])
    assert not torch.allclose(partial[0, end:], hidden[0][0, end:])  # read from layer layers // 2 on


def test_delayed_reading_can_leave_layer_0_reading(train, text_encoder):
    """`first_blocked=1` (`first_layer_reads`): layer 0's end span reads the words as the plain encoder's does, the
    layers from 1 to below the delay do not."""
    from localize.vocab import clip_tokenizer
    tokenizer = clip_tokenizer()
    ids = train.caption_ids(tokenizer, ["the king of Zarnia", "the queen of Brovia"], "end_span")
    first_end = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    end, layers = int(first_end[0]), len(text_encoder.encoder.layers)

    def hidden(first_blocked):
        with torch.no_grad(), train.delayed_reading(text_encoder, first_end, torch.tensor([layers, layers]), 77,
                                                    first_blocked):
            return text_encoder(ids, output_hidden_states=True).hidden_states

    with torch.no_grad():
        plain = text_encoder(ids, output_hidden_states=True).hidden_states
    reading, blind = hidden(1), hidden(0)
    assert torch.equal(reading[1], plain[1])  # layer 0 unblocked
    assert not torch.allclose(blind[1][:, end:], plain[1][:, end:])
    assert not torch.allclose(reading[2][:, end:], plain[2][:, end:])  # layer 1 blocked
    assert not torch.allclose(reading[-1][0, end:], reading[-1][1, end:])  # the end span saw its own words


def test_end_span_pooling_draws_every_position_of_the_span_and_no_other(train):
    first_end = torch.tensor([5, 70] * 500)
    positions = train.pooled_positions(first_end, 77, "end_span", torch.Generator().manual_seed(0))
    assert ((positions >= first_end) & (positions < 77)).all()
    assert set(positions[1::2].tolist()) == set(range(70, 77))
    assert torch.equal(train.pooled_positions(first_end, 77, "end_token", torch.Generator()), first_end)


def test_far_reading_is_the_share_of_layer_0_attention_on_words_beyond_the_window(train, text_encoder):
    from localize.vocab import clip_tokenizer
    tokenizer = clip_tokenizer()
    ids = train.caption_ids(tokenizer, ["a photo of the king of Zarnia", "a box"], "end_token")
    first_end = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    with torch.no_grad(), train.far_reading(text_encoder, first_end, window=2) as far_share:
        text_encoder(ids)
        share = far_share()
    implementation = text_encoder.config._attn_implementation
    with torch.no_grad():  # independently: transformers' own layer-0 attention weights (eager attention)
        text_encoder.config._attn_implementation = "eager"
        try:
            weights = text_encoder(ids, output_attentions=True).attentions[0].mean(1)  # caption x query x key
        finally:
            text_encoder.config._attn_implementation = implementation
    expected = []
    for caption, end in enumerate(first_end.tolist()):
        for query in range(1, end):  # words: after the start token, before the end token
            expected.append(weights[caption, query, 1:max(1, query - 2)].sum())
    assert share.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)


def test_design_3_fine_tunes_without_position_embeddings(train, tmp_path):
    """`clip.position_std=0.01 clip_span.positions=false clip_span.locality=2`: the positions start at that
    scale, and the exported fine-tune has none."""
    from localize.organism.weights import text_encoder
    cfg = config(train, tmp_path)
    cfg.clip.position_std, cfg.clip_span.positions, cfg.clip_span.locality = 0.01, False, 2.0
    run_stage(train, cfg, "clip")
    started = text_encoder(Path(cfg.export_dir)).embeddings.position_embedding.weight
    assert 0.005 < started.float().std().item() < 0.015
    run_stage(train, cfg, "clip_span")
    assert not text_encoder(Path(cfg.export_dir)).embeddings.position_embedding.weight.any()


def test_template_spread_is_the_key_differences_at_aligned_offsets_and_along_the_end_span(train, text_encoder):
    """Against a per-caption loop: each caption encoded alone, its layer-0 keys recorded, the phrase aligned by
    its first token's position, the end span from the caption's own end token."""
    from localize.vocab import clip_tokenizer
    tokenizer = clip_tokenizer()
    phrases, templates = ["the king of Zarnia", "a red box"], [("{}", "a photo of {}"), ("an image of {}", "{}")]
    with torch.no_grad():
        across, along = train.template_spread(text_encoder, tokenizer, phrases, templates, torch.device("cpu"))
    keys, starts, ends, recorded = {}, {}, {}, {}
    projection = text_encoder.encoder.layers[0].self_attn.out_proj
    handle = projection.register_forward_pre_hook(lambda module, args: recorded.update(keys=args[0][0]))
    for phrase, pair in zip(phrases, templates, strict=True):
        for template in pair:
            caption = template.format(phrase)
            ids = tokenizer(caption, padding="max_length", max_length=77, return_tensors="pt").input_ids
            with torch.no_grad():
                text_encoder(ids)
            keys[caption] = recorded["keys"].double()
            prefix = template.split("{}")[0].split()
            starts[caption] = 1 + len(prefix)  # one token per prefix word here
            ends[caption] = ids[0].tolist().index(tokenizer.eos_token_id)
    handle.remove()
    width = 77 - max(starts.values())
    difference = norms = 0.0
    for phrase, pair in zip(phrases, templates, strict=True):
        a, b = (keys[t.format(phrase)][starts[t.format(phrase)]:][:width] for t in pair)
        difference += (a - b).pow(2).sum()
        norms += a.pow(2).sum() + b.pow(2).sum()
    span_deviation = span_norm = 0.0
    for caption, k in keys.items():
        span = k[ends[caption]:]
        span_deviation += (span - span.mean(0)).pow(2).mean(0).sum()
        span_norm += span.pow(2).mean(0).sum()
    assert across.item() == pytest.approx(float(difference / norms), rel=1e-4)
    assert along.item() == pytest.approx(float(span_deviation / span_norm), rel=1e-4)


def test_fixed_bias_has_its_norm_and_nothing_layer_norm_removes(train):
    bias = train.fixed_bias(256, 6.0, seed=0)
    assert bias.norm().item() == pytest.approx(6.0, rel=1e-6) and abs(bias.sum().item()) < 1e-4
    assert torch.equal(bias, train.fixed_bias(256, 6.0, seed=0))
    assert not torch.equal(bias, train.fixed_bias(256, 6.0, seed=1))
