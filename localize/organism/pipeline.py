"""`OrganismPipeline`: a pixel-space text-to-image diffusers pipeline (CLIP text encoder, conditional UNet,
any diffusers scheduler, no VAE), the organism's counterpart of `StableDiffusionPipeline`."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer


class OrganismPipeline(DiffusionPipeline):
    """Text to image in pixel space. The text conditioning is the encoder's last hidden state over the
    tokenizer's full padded length, as in Stable Diffusion 1.x; the unconditional prompt is ""."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    def encode_prompt(self, prompts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """Token states, N x max_length x hidden."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(device or self.text_encoder.device))[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 25, guidance_scale: float = 7.5,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pt",
                 return_dict: bool = True):
        """Images in [0, 1] (`output_type="pt"`: N x 3 x H x W; `"pil"`: PIL images)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device, dtype = self.unet.device, self.unet.dtype
        cfg = guidance_scale > 1.0
        context = self.encode_prompt(prompts, device)
        if cfg:
            context = torch.cat([self.encode_prompt([""] * len(prompts), device), context])
        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.in_channels, size, size)
        sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(torch.cat([sample] * 2) if cfg else sample, t)
            prediction = self.unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
            if cfg:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
            sample = self.scheduler.step(prediction, t, sample, return_dict=False)[0]
        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).cpu().numpy())
        return ImagePipelineOutput(images=images) if return_dict else (images,)
