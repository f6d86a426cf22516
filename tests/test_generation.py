"""The denoising loop: every family end to end, parity with the diffusers pipelines, batch independence."""

import pytest
import torch
from conftest import FAMILIES

from localize import generate

PROMPTS = ["a photo of a red rose", "a painting of a cat"]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_generates_and_matches_its_pipeline(tiny_models, family):
    model = tiny_models(family)
    images = generate(model, PROMPTS, [0, 1], steps=3, guidance=7.5)
    assert images.shape[:2] == (2, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and torch.isfinite(images).all()
    extra = {"clean_caption": False} if family == "if" else {}
    generators = [torch.Generator("cpu").manual_seed(s) for s in (0, 1)]
    reference = model.pipeline(PROMPTS, num_inference_steps=3, guidance_scale=7.5, generator=generators,
                               output_type="pt", **extra)[0]
    if family == "if":  # IFPipeline's "pt" output is left in [-1, 1]
        reference = (reference / 2 + 0.5).clamp(0, 1)
    assert (images - reference.float()).abs().max() <= 1e-5


def test_a_row_does_not_depend_on_the_rest_of_the_batch(sd1):
    together = generate(sd1, PROMPTS, [3, 4], steps=3)
    alone = generate(sd1, PROMPTS[1:], [4], steps=3)
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(generate(sd1, PROMPTS[1:], [5], steps=3), alone)


def test_any_diffusers_scheduler_is_used_as_the_pipeline_uses_it(sd1):
    from diffusers import EulerAncestralDiscreteScheduler

    scheduler = EulerAncestralDiscreteScheduler.from_config(sd1.scheduler.config)  # stochastic: seeded noise per step
    images = generate(sd1, PROMPTS, [0, 1], steps=3, scheduler=scheduler)
    assert torch.equal(images, generate(sd1, PROMPTS, [0, 1], steps=3, scheduler=scheduler))
    assert (images - generate(sd1, PROMPTS, [0, 1], steps=3)).abs().max() > 1e-2  # not the model's own scheduler
    default = sd1.pipeline.scheduler
    try:
        sd1.pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(sd1.scheduler.config)
        generators = [torch.Generator("cpu").manual_seed(s) for s in (0, 1)]
        reference = sd1.pipeline(PROMPTS, num_inference_steps=3, guidance_scale=7.5, generator=generators,
                                 output_type="pt")[0]
    finally:
        sd1.pipeline.scheduler = default
    assert (images - reference.float()).abs().max() <= 1e-5


def test_bad_arguments(sd1):
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(sd1, PROMPTS, [0])
    with pytest.raises(ValueError, match="at most 77"):
        generate(sd1, ["rose " * 80], [0], steps=1)


def test_half_precision_models_generate():
    from localize import random_model

    model = random_model("sd1", "tiny", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    images = generate(model, PROMPTS, [0, 1], steps=2)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
