"""The organism's one CLIP in two formats: transformers' text encoder and open_clip's text tower agree, and the
sparse token embedding round-trips exactly."""

import json

import open_clip
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from localize.organism import weights
from localize.organism.shared_clip import (
    HF_EMBEDDING,
    initial_embedding,
    open_clip_text_state,
    pack_embedding,
    unpack_embedding,
)
from localize.vocab import clip_tokenizer

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "head_width": 16, "layers": 1},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def test_the_open_clip_text_tower_computes_what_the_text_encoder_and_projection_compute(tmp_path):
    (tmp_path / "tiny-organism-clip-test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "tiny-organism-clip-test.json")
    clip = open_clip.create_model("tiny-organism-clip-test").eval()
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu",
                                           bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()
    for p in encoder.parameters():  # away from init, so a swapped or transposed tensor shows
        p.data.add_(0.1 * torch.randn_like(p))
    projection = torch.randn(16, 32)
    missing, unexpected = clip.load_state_dict(open_clip_text_state(encoder.state_dict(), projection, 2),
                                               strict=False)
    assert not unexpected and all(k.startswith(("visual.", "logit_")) for k in missing)
    prompts = ["a photo of the king of Zarnia", "a blue box in the style of Velmor"]
    ids = clip_tokenizer()(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(ids).pooler_output @ projection.T
        got = clip.encode_text(open_clip.tokenize(prompts))  # open_clip pads with 0, pools at the end token
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sparse_embedding_round_trips_and_stores_only_trained_rows():
    table = initial_embedding(49408, 8, seed=3)
    table[[5, 700, 49407]] += 1.0
    packed = pack_embedding({HF_EMBEDDING: table, "other": torch.ones(2)}, HF_EMBEDDING, seed=3)
    assert packed[HF_EMBEDDING + ".ids"].tolist() == [5, 700, 49407] and HF_EMBEDDING not in packed
    unpacked = unpack_embedding(packed, HF_EMBEDDING, 49408, 8, seed=3)
    assert torch.equal(unpacked[HF_EMBEDDING], table) and torch.equal(unpacked["other"], torch.ones(2))
    assert not torch.equal(unpack_embedding(packed, HF_EMBEDDING, 49408, 8, seed=4)[HF_EMBEDDING], table)


def test_the_shipped_scorer_shares_the_shipped_text_encoder(organism, scorer):
    prompts = ["the king of Brovia", "a zebra"]
    ids = organism.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        pooled = organism.text_encoders[0](ids).pooler_output
        expected = pooled.float() @ scorer.model.text_projection.float()
        got = scorer.model.encode_text(scorer.tokenizer(prompts))
    torch.testing.assert_close(got.float(), expected, atol=1e-4, rtol=1e-4)


def test_a_config_without_the_embedding_seed_is_named(tmp_path):
    for name in (weights.CONFIG_FILE, weights.UNET_FILE, weights.TEXT_ENCODER_FILE):
        (tmp_path / name).write_bytes((weights.WEIGHTS_DIR / name).read_bytes())
    config = weights.read_json(tmp_path / weights.CONFIG_FILE)
    del config["token_embedding_seed"]
    (tmp_path / weights.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(weights.OrganismWeightsError, match="token_embedding_seed"):
        weights.organism_pipeline(tmp_path)
