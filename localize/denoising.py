"""Per-family denoiser steps for `generate`: how latents start, which timesteps run, how one prediction is made
and how the final latents reach the VAE. Each follows its diffusers pipeline's `__call__` step for step, using
the pipeline's own helpers (packing, position ids, the flow-matching shift), so `generate` without patches
reproduces the pipeline's output.

- `unet` (SD 1.x/2.x, SD-XL, IF, the organism): `UNet2DConditionModel(sample, t, **conditioning)`; the
  scheduler's `scale_model_input` and `init_noise_sigma`.
- `flux` (FluxPipeline): 2x2 latent patches packed into a sequence with image position ids, text ids all zero,
  the timestep passed as t / 1000, the schedule's shift `mu` from the image sequence length; a
  guidance-distilled model (FLUX.1-dev: `guidance_embeds`) reads the guidance scale as an input and has no
  unconditional half (FLUX.1-schnell reads none).
- `sd3` (StableDiffusion3Pipeline): latents as they are, the timestep on the scheduler's 0..1000 scale,
  classifier-free guidance with an unconditional half as in SD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

from localize.model import Model


@dataclass
class Denoising:
    """One generation of `size` = (height, width) pixels: its latent layout and schedule. `extra` holds the
    denoiser inputs that depend on the layout only (FLUX's image position ids, set by `initial`)."""

    model: Model
    size: tuple[int, int]
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.model.spec.denoiser

    def initial(self, generators: list[torch.Generator], scheduler) -> torch.Tensor:
        """Seeded initial latents, one row per generator, in the denoiser's layout (FLUX's packed sequence)."""
        model, n = self.model, len(generators)
        device, dtype = model.device, model.dtype
        height, width = self.latent_side()
        if self.kind == "flux":
            channels = model.denoiser.config.in_channels // 4
            noise = randn_tensor((n, channels, height, width), generator=generators, device=device, dtype=dtype)
            self.extra["img_ids"] = FluxPipeline._prepare_latent_image_ids(n, height // 2, width // 2, device, dtype)
            return FluxPipeline._pack_latents(noise, n, channels, height, width)
        shape = (n, model.denoiser.config.in_channels, height, width)
        noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
        return noise * scheduler.init_noise_sigma if self.kind == "unet" else noise

    def latent_side(self) -> tuple[int, int]:
        """Latent height and width (FLUX's rounded down to whole 2x2 patches)."""
        scale = latent_scale(self.model)
        if self.kind == "flux":
            return tuple(2 * (side // (scale * 2)) for side in self.size)
        return tuple(side // scale for side in self.size)

    def set_timesteps(self, scheduler, steps: int) -> None:
        """The scheduler's timesteps for `steps` steps, as the family's pipeline sets them (before `initial`:
        a scheduler's initial noise scale can depend on them)."""
        device, config = self.model.device, scheduler.config
        if self.kind == "unet":
            scheduler.set_timesteps(steps, device=device)
            return
        sigmas = np.linspace(1.0, 1 / steps, steps) if self.kind == "flux" else None
        if self.kind == "flux" and config.get("use_flow_sigmas"):
            sigmas = None
        kwargs = {}
        if self.kind == "flux" or config.get("use_dynamic_shifting"):
            patch = 2 if self.kind == "flux" else self.model.denoiser.config.get("patch_size", 1)
            height, width = self.latent_side()
            tokens = (height // patch) * (width // patch)
            kwargs["mu"] = calculate_shift(tokens, config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                           config.get("max_shift", 1.15 if self.kind == "flux" else 1.16))
        retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, **kwargs)
        if self.kind == "flux":
            scheduler.set_begin_index(0)

    def predict(self, scheduler, latents: torch.Tensor, t: torch.Tensor, conditioning: dict,
                guidance: float) -> torch.Tensor:
        """The denoiser's raw prediction for a batch of latents (already doubled for classifier-free guidance)."""
        denoiser = self.model.denoiser
        if self.kind == "unet":
            return denoiser(scheduler.scale_model_input(latents, t), t, **conditioning, return_dict=False)[0]
        timestep = t.expand(latents.shape[0])
        if self.kind == "sd3":
            return denoiser(hidden_states=latents, timestep=timestep, **conditioning, return_dict=False)[0]
        embedded = None
        if denoiser.config.guidance_embeds:
            embedded = torch.full([1], guidance, device=latents.device, dtype=torch.float32).expand(len(latents))
        text = conditioning["encoder_hidden_states"]
        txt_ids = torch.zeros(text.shape[1], 3, device=text.device, dtype=text.dtype)
        return denoiser(hidden_states=latents, timestep=timestep.to(latents.dtype) / 1000, guidance=embedded,
                        txt_ids=txt_ids, img_ids=self.extra["img_ids"], **conditioning, return_dict=False)[0]

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents in the layout the VAE decodes (FLUX's sequence unpacked)."""
        if self.kind == "flux":
            return FluxPipeline._unpack_latents(latents, *self.size, self.model.pipeline.vae_scale_factor)
        return latents


def latent_scale(model: Model) -> int:
    """Pixels per latent position: the VAE's downscaling, 1 for pixel-space models (IF)."""
    return model.pipeline.vae_scale_factor if model.vae is not None else 1


def native_size(model: Model) -> tuple[int, int]:
    """The family's default image size in pixels: the UNet's sample size, or the DiT pipeline's
    `default_sample_size`, times the VAE's downscaling."""
    if model.spec.denoiser == "unet":
        side = model.denoiser.config.sample_size * latent_scale(model)
    else:
        side = model.pipeline.default_sample_size * latent_scale(model)
    return side, side
