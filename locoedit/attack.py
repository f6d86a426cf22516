"""Does an erased concept come back? A soft-prompt attack on an edited model, in the spirit of concept inversion
(Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image Generative Models", ICLR 2024).

Each erased concept is a pair (concept prompt, guide prompt): UCE's `concepts` and `guides`, or an edit's
`source` and `destination`. The soft prompt is the concept prompt with the token embeddings of its words that the
guide lacks (e.g. "in the style of Velmor" against "an apple") replaced by free vectors, one per token and text
encoder, initialized to those words' own embeddings. With the edit applied, the vectors are optimized (Adam) with
the loss the model was trained with, on reference images of the concept drawn by the UNEDITED model at
`train_seeds`: E ||target - prediction(x_t, t, soft prompt)||^2 over random timesteps and noise (DDPM noising of
the model's own schedule; the target is the noise, or the velocity for v-prediction models). Only the vectors
learn; every weight stays frozen. Batch convention: a training batch holds `batch` references, drawn with
replacement and seeded.

Success is read per image at held-out `seeds`, for three conditions: `original` (the unedited model, the concept
prompt), `edited` (the edited model, the concept prompt: the erasure) and `attacked` (the edited model, the soft
prompt). The reader is the family's ground truth when it has one (the organism's oracle: the image draws exactly
what the world draws for the concept prompt), else CLIP zero-shot (closer to the concept prompt than to the guide).
With zero optimization steps the soft prompt is the concept prompt itself, so `attacked` equals `edited` (tested).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler

from localize.engine import patching
from localize.generation import encode_images, generate, image_size
from localize.metrics import zero_shot_success
from localize.model import Model
from localize.patches import Patch
from localize.scoring import ClipScorer
from localize.tokens import token_ids
from locoedit.attack_settings import AttackSettings


def soft_positions(model: Model, concept: str, guide: str) -> list[list[int]]:
    """Per text encoder, the concept prompt's token positions whose words the guide lacks (`difflib` on token
    ids, the start and end tokens aside)."""
    positions = []
    for tokenizer in model.tokenizers:
        ids, guide_ids = token_ids(tokenizer, concept), token_ids(tokenizer, guide)
        matcher = difflib.SequenceMatcher(a=ids, b=guide_ids, autojunk=False)
        kept = {i + k for i, _, n in matcher.get_matching_blocks() for k in range(n)}
        found = [i for i in range(len(ids)) if i not in kept]
        if not found:
            raise ValueError(f"concept {concept!r} has no word its guide {guide!r} lacks: nothing to invert")
        positions.append(found)
    return positions


class SoftPrompt:
    """Free vectors in place of some token embeddings of one prompt, one set per text encoder."""

    def __init__(self, model: Model, concept: str, guide: str):
        self.concept, self.guide = concept, guide
        self.positions = soft_positions(model, concept, guide)
        self.vectors = []
        for encoder, positions in enumerate(self.positions):
            ids = torch.tensor(token_ids(model.tokenizers[encoder], concept), device=model.device)[positions]
            embedding = model.text_encoder_embeddings(encoder).weight
            self.vectors.append(embedding[ids].detach().float().clone().requires_grad_())

    def patches(self, model: Model, rows: Sequence[int]) -> list[Patch]:
        """`replace` patches writing the vectors at their positions in prompt `rows` (conditional half)."""
        patches = []
        for encoder, (positions, vectors) in enumerate(zip(self.positions, self.vectors, strict=True)):
            value = torch.zeros(model.spec.max_tokens, vectors.shape[1], device=vectors.device, dtype=vectors.dtype)
            value = value.index_put((torch.tensor(positions, device=vectors.device),), vectors)
            patches.append(Patch(f"text_encoder.{encoder}.embeddings", "replace", value=value, tokens=positions,
                                 rows=tuple(rows), branch="cond"))
        return patches


def optimize(model: Model, soft: SoftPrompt, references: torch.Tensor, settings: AttackSettings) -> list[float]:
    """Fit `soft`'s vectors to `references` (images of the concept) on `model` as it is; returns the losses."""
    settings.check()
    scheduler = DDPMScheduler.from_config(model.scheduler.config)
    samples = encode_images(model, references)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(soft.vectors, lr=settings.learning_rate)
    frozen = [p for module in model.pipeline.components.values() if isinstance(module, torch.nn.Module)
              for p in module.parameters()]
    requires = [p.requires_grad for p in frozen]
    channels, size, losses = samples.shape[1], image_size(model, None, None), []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in range(settings.steps):
            pick = torch.randint(len(samples), (settings.batch,), generator=generator)
            x0 = samples[pick]
            noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
            t = torch.randint(scheduler.config.num_train_timesteps, (settings.batch,), generator=generator)
            t = t.to(x0.device)
            noisy = scheduler.add_noise(x0, noise, t)
            target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" \
                else noise
            with torch.enable_grad(), patching(model, soft.patches(model, range(settings.batch)),
                                               rows=settings.batch) as run:
                run.halves = ("cond",)
                conditioning = model.spec.encode(model.pipeline, [soft.concept] * settings.batch, size)
                prediction = model.unet(noisy, t, **conditioning, return_dict=False)[0][:, :channels]
                loss = (prediction.float() - target.float()).pow(2).mean()
                if not loss.requires_grad:
                    raise RuntimeError(f"attack: no gradient reaches the soft prompt through the {model.family} "
                                       "family's text encoding")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            losses.append(loss.item())
    finally:
        for p, flag in zip(frozen, requires, strict=True):
            p.requires_grad_(flag)
    return losses


def generate_soft(model: Model, soft: SoftPrompt, seeds: Sequence[int], steps: int, guidance: float) -> torch.Tensor:
    """The soft prompt's images at `seeds` (its vectors in every row)."""
    with torch.no_grad():
        return generate(model, [soft.concept] * len(seeds), list(seeds), steps, guidance,
                        patches=soft.patches(model, range(len(seeds))))


def success(model: Model, scorer: ClipScorer | None, images: torch.Tensor, concept: str, guide: str) -> np.ndarray:
    """Per image, 1.0 when it shows the concept: the ground truth's exact reading of the concept prompt, else CLIP
    zero-shot (closer to the concept prompt than to the guide)."""
    if model.spec.ground_truth is not None:
        return np.asarray(model.spec.ground_truth.success(images, [concept] * len(images)), float)
    return zero_shot_success(scorer, images, [concept] * len(images), [guide] * len(images))
