"""The model organism: its world, the oracle, the shipped weights, the scorer, and bad weight files."""

import shutil

import numpy as np
import open_clip
import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from localize import generate
from localize.organism import weights
from localize.organism.oracle import read_images
from localize.organism.weights import OrganismWeightsError, organism_pipeline
from localize.organism.world import (
    ARTISTS,
    COLORS,
    FACTS,
    OBJECTS,
    SHAPES,
    SHIFTS,
    TEXTURES,
    TRAIN_TEMPLATES,
    CaptionSampler,
    Scene,
    Subject,
    all_subjects,
    draw_scene,
    render,
    world_words,
)


def test_captions_name_what_is_drawn():
    assert Subject("object", "apple").phrase == "an apple"
    assert Subject("color", "box", "blue", "Velmor").phrase == "a blue box in the style of Velmor"
    assert Subject("fact", "Zarnia").phrase == "the king of Zarnia"
    assert Subject("object", "apple").color_split == {"red": 1.0}
    assert Subject("role", "doctor", artist="Quessa").texture == "checker"
    sampler = CaptionSampler(["zebra"])
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert [sampler.sample(rng_a) for _ in range(20)] == [sampler.sample(rng_b) for _ in range(20)]


def test_subject_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"unknown object 'zebra'.*apple"):
        Subject("object", "zebra")
    with pytest.raises(ValueError, match=r"color 'teal' does not fit"):
        Subject("color", "apple", "teal")
    with pytest.raises(ValueError, match=r"unknown artist 'Monet'"):
        Subject("object", "apple", artist="Monet")


def test_role_colors_follow_the_planted_split():
    rng = np.random.default_rng(0)
    colors = [draw_scene(Subject("role", "doctor"), rng).color for _ in range(4000)]
    assert abs(colors.count("blue") / len(colors) - 0.9) < 0.02


def test_oracle_reads_every_rendered_scene_exactly_and_noisy_ones_correctly():
    scenes = [Scene(s, c, t, dx, dy) for s in SHAPES for c in COLORS for t in TEXTURES for dx in SHIFTS
              for dy in SHIFTS]
    images = render(scenes)
    truth = {"shape": [s.shape for s in scenes], "color": [s.color for s in scenes],
             "texture": [s.texture for s in scenes]}
    readings = read_images(images)
    for column, values in truth.items():
        assert readings[column].tolist() == values
    assert readings["error"].max() < 1e-6
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    readings = read_images(noisy)
    for column, values in truth.items():
        assert (readings[column] == values).mean() > 0.99


def test_the_organism_loads_offline_as_a_stable_diffusion_like_model(organism):
    assert organism.family == "organism"
    assert isinstance(organism.unet, UNet2DConditionModel) and isinstance(organism.text_encoders[0], CLIPTextModel)
    assert len(organism.cross_attention_layers) >= 8 and organism.vae is None
    assert organism.unet.config.sample_size == 16 and organism.tokenizer.model_max_length == 77


def test_seeded_generations_are_read_correctly_by_the_oracle(organism):
    subjects = [Subject("object", "apple"), Subject("color", "box", "blue"), Subject("fact", "Zarnia"),
                Subject("object", "tree", artist="Velmor"), Subject("object", "kite")]
    seeds = [0, 1, 2, 3]
    prompts = [f"a photo of {s.phrase}" for s in subjects for _ in seeds]
    readings = read_images(generate(organism, prompts, seeds * len(subjects), steps=25))
    expected = [(s.shape, next(iter(s.color_split)), s.texture) for s in subjects for _ in seeds]
    read = list(zip(readings["shape"], readings["color"], readings["texture"], strict=True))
    assert np.mean([a == b for a, b in zip(read, expected, strict=True)]) >= 0.9, read


def test_generation_matches_the_organism_pipeline(organism):
    prompts = ["a photo of an apple", "a sketch of a zebra"]  # out-of-world words still tokenize
    images = generate(organism, prompts, [0, 1], steps=4)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    reference = organism.pipeline(prompts, num_inference_steps=4, generator=generators).images
    assert (images - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("task", [
    [Subject("object", noun) for noun in OBJECTS],
    [Subject("color", "kite", color) for color in COLORS],
    [Subject("object", "box", artist=artist) for artist in [None, *ARTISTS]],
    [Subject("fact", country) for country in FACTS],
], ids=["objects", "colors", "styles", "facts"])
def test_scorer_ranks_the_right_caption_first_on_rendered_images(scorer, task):
    rng = np.random.default_rng(0)
    images = render([draw_scene(s, rng) for s in task])
    captions = [TRAIN_TEMPLATES[0].format(s.phrase) for s in task]
    assert scorer.similarity(images, captions).argmax(1).tolist() == list(range(len(task)))
    scores = scorer.score(images, captions)
    assert scores.shape == (len(task),) and (scores >= 0).all() and (scores <= 100).all()


def test_world_words_exclude_nothing_the_captions_use():
    words = world_words()
    for subject in all_subjects():
        assert set(subject.phrase.lower().split()) <= words


@pytest.mark.parametrize("damage", ["missing", "corrupted", "one flipped byte"])
@pytest.mark.parametrize("name", [weights.UNET_FILE, weights.TEXT_ENCODER_FILE, weights.CONFIG_FILE])
def test_a_bad_weights_file_is_a_clear_error_naming_it(tmp_path, damage, name):
    copy = tmp_path / "weights"
    shutil.copytree(weights.WEIGHTS_DIR, copy)
    if damage == "missing":
        (copy / name).unlink()
    elif damage == "corrupted":
        (copy / name).write_bytes((copy / name).read_bytes()[:100])
    else:  # still a valid file of the right shapes: only the checksum tells
        data = bytearray((copy / name).read_bytes())
        data[-3] ^= 0x01
        (copy / name).write_bytes(bytes(data))
    with pytest.raises(OrganismWeightsError, match=rf"{copy / name}.*(missing|corrupted)"):
        organism_pipeline(copy)


def test_a_bad_scorer_file_is_a_clear_error_naming_it(tmp_path):
    shutil.copytree(weights.WEIGHTS_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / weights.SCORER_FILE).write_bytes(b"not safetensors")
    weights.register_scorer_config()
    with pytest.raises(OrganismWeightsError, match=rf"{tmp_path / weights.SCORER_FILE}.*corrupted"):
        weights.load_scorer_into(open_clip.create_model(weights.SCORER_NAME), tmp_path)
