"""`random_model`: architecture-faithful random-weight pipelines built offline (see `architectures`)."""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel

from localize.architectures import architecture
from localize.families import get_family
from localize.model import Model, parse_dtype, unused_components
from localize.vocab import clip_tokenizer, t5_tokenizer

_CONFIG_CLASSES = {"CLIPTextModel": "CLIPTextConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                   "T5EncoderModel": "T5Config"}


@contextmanager
def _default_dtype(dtype: torch.dtype | None):
    """New parameters are drawn in `dtype` (None: float32) inside the block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


TINY_DIT_SAMPLE = 4  # a tiny DiT's default latent side: 32 px, 4 FLUX tokens or 4 SD3 patches of 2x2


def _tokenizer(kind: str):
    return t5_tokenizer() if kind == "t5" else clip_tokenizer(pad_token=kind)


def random_model(
    family: str,
    size: str = "tiny",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> Model:
    """A `family` pipeline (`sd1, sd2, sdxl, if, flux, sd3, organism`) with seeded random weights and real offline
    tokenizers.

    `size="full"` is the published architecture (build it on `device="meta"` to inspect layer tables without
    memory); `size="tiny"` keeps its structure with small widths. Weights are drawn directly in `dtype`, so a
    full-size model never exists in float32 first (IF-I-XL with T5-XXL is 36 GB in float32, 18 GB in bf16);
    the same seed in another dtype gives other weights. The global RNG is left untouched.
    """
    spec = get_family(family)
    arch = architecture(family, size)
    target = torch.device(device) if device is not None else torch.device("cpu")
    build_device = target if target.type == "meta" else torch.device("cpu")
    with torch.random.fork_rng(devices=[]), build_device, _default_dtype(parse_dtype(dtype)):
        torch.manual_seed(seed)
        if arch.transformer is not None:
            cls_name, config = arch.transformer
            components = {"transformer": getattr(diffusers, cls_name)(**config)}
        else:
            components = {"unet": UNet2DConditionModel(**arch.unet)}
        if arch.vae is not None:
            components["vae"] = AutoencoderKL(**arch.vae)
        for attr, (cls_name, config) in zip(spec.text_encoders, arch.text_encoders, strict=True):
            config_class = getattr(transformers, _CONFIG_CLASSES[cls_name])
            components[attr] = getattr(transformers, cls_name)(config_class(**config))
    for attr, kind in zip(spec.tokenizers, arch.tokenizers, strict=True):
        components[attr] = _tokenizer(kind)
    scheduler_name, scheduler_config = arch.scheduler
    components["scheduler"] = getattr(diffusers, scheduler_name).from_config(scheduler_config)
    init_args = inspect.signature(spec.pipeline_class.__init__).parameters
    components.update(unused_components(spec.pipeline_class, init_args))
    components.update(arch.pipeline)
    pipeline = spec.pipeline_class(**components)
    if size == "tiny" and hasattr(pipeline, "default_sample_size") and arch.unet is None:
        pipeline.default_sample_size = TINY_DIT_SAMPLE  # FluxPipeline fixes 128 (1024 px) whatever the config
    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    if target.type != "meta":
        pipeline.to(target)
    return Model.from_pipeline(pipeline, family)
