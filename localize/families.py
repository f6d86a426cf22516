"""Per-family mapping tables: everything the lab knows about an architecture lives here, not in branches.

A family says which diffusers pipeline class runs it, which pipeline attributes hold its text encoders and
tokenizers (in the order their features are concatenated), and how prompts become UNet conditioning. Text
encoder classes have their own table (`TEXT_ENCODER_ARCHS`): where the layers, their self-attention and MLP,
and the token embeddings live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    IFPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from localize.organism.oracle import color_classifier, oracle_success, read_images
from localize.organism.pipeline import OrganismPipeline
from localize.organism.world import world_captions, world_descriptions

Conditioning = dict  # keyword arguments of `UNet2DConditionModel.forward` besides sample and timestep


@dataclass(frozen=True)
class TextEncoderArch:
    """Module paths, relative to one text encoder, of its layer list and of each layer's parts.

    The self-attention and MLP sites are the sublayer outputs that are added to the residual stream;
    `attention_out` and `mlp_out` (relative to a layer) are their last linear maps, the weights edits change.
    `causal`: each position attends only to itself and earlier positions (CLIP), so a change at position p
    leaves every earlier position's states exactly as they were; T5 is bidirectional.
    """

    layers: str
    self_attn: str
    mlp: str
    embeddings: str
    attention_out: str
    mlp_out: str
    causal: bool = True


_CLIP_TEXT = TextEncoderArch(
    layers="encoder.layers",
    self_attn="self_attn",
    mlp="mlp",
    embeddings="embeddings.token_embedding",
    attention_out="self_attn.out_proj",
    mlp_out="mlp.fc2",
)
_CLIP_TEXT_IN_WRAPPER = TextEncoderArch(  # CLIPTextModelWithProjection keeps the transformer under `text_model`
    layers="text_model.encoder.layers",
    self_attn="self_attn",
    mlp="mlp",
    embeddings="text_model.embeddings.token_embedding",
    attention_out="self_attn.out_proj",
    mlp_out="mlp.fc2",
)
TEXT_ENCODER_ARCHS = {
    "CLIPTextModel": _CLIP_TEXT,
    "CLIPTextModelWithProjection": _CLIP_TEXT_IN_WRAPPER,
    "T5EncoderModel": TextEncoderArch(
        layers="encoder.block",
        self_attn="layer.0.SelfAttention",
        mlp="layer.1.DenseReluDense",
        embeddings="encoder.embed_tokens",  # the module forward calls (in transformers 5 a copy tied to `shared`)
        attention_out="layer.0.SelfAttention.o",
        mlp_out="layer.1.DenseReluDense.wo",
        causal=False,
    ),
}


def _encode_sd(pipeline: StableDiffusionPipeline, prompts: list[str], size: tuple[int, int]) -> Conditioning:
    embeds, _ = pipeline.encode_prompt(prompts, pipeline.unet.device, 1, False)
    return {"encoder_hidden_states": embeds}


def _encode_sdxl(pipeline: StableDiffusionXLPipeline, prompts: list[str], size: tuple[int, int]) -> Conditioning:
    """Both encoders' penultimate states, concatenated; the second encoder's pooled projection; size ids.

    Size ids follow the pipeline's defaults: original size = target size = the generated size, no crop.
    """
    embeds, _, pooled, _ = pipeline.encode_prompt(
        prompts, device=pipeline.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=embeds.dtype, device=embeds.device)
    return {
        "encoder_hidden_states": embeds,
        "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)},
    }


def _uncond_sdxl(pipeline: StableDiffusionXLPipeline, n: int, size: tuple[int, int]) -> Conditioning:
    """SD-XL's empty prompt is all zeros (the `force_zeros_for_empty_prompt` config), size ids kept."""
    empty = _encode_sdxl(pipeline, [""] * n, size)
    if not pipeline.config.force_zeros_for_empty_prompt:
        return empty
    extra = empty["added_cond_kwargs"]
    return {
        "encoder_hidden_states": torch.zeros_like(empty["encoder_hidden_states"]),
        "added_cond_kwargs": {"text_embeds": torch.zeros_like(extra["text_embeds"]), "time_ids": extra["time_ids"]},
    }


def _encode_if(pipeline: IFPipeline, prompts: list[str], size: tuple[int, int]) -> Conditioning:
    """IF's own encoding, without the `torch.no_grad` diffusers wraps it in: gradients flow when the caller enables
    them (ReFACT's value search); every other caller runs under no_grad itself."""
    encode = getattr(IFPipeline.encode_prompt, "__wrapped__", IFPipeline.encode_prompt)
    embeds, _ = encode(pipeline, prompts, do_classifier_free_guidance=False, device=pipeline.unet.device,
                       clean_caption=False)
    return {"encoder_hidden_states": embeds}


def _prompt_text_if(pipeline: IFPipeline, prompt: str) -> str:
    """The text IF's encoder sees: its pipeline lowercases and strips every prompt first."""
    return pipeline._text_preprocessing(prompt, clean_caption=False)[0]


def _encode_organism(pipeline: OrganismPipeline, prompts: list[str], size: tuple[int, int]) -> Conditioning:
    return {"encoder_hidden_states": pipeline.encode_prompt(prompts, pipeline.unet.device)}


FLUX_TOKENS = 512  # FluxPipeline's default T5 length (FLUX.1-dev's; schnell was trained at 256)
SD3_T5_TOKENS = 256  # StableDiffusion3Pipeline's default T5 length


def _encode_flux(pipeline: FluxPipeline, prompts: list[str], size: tuple[int, int]) -> Conditioning:
    """T5's states as the text stream (`max_sequence_length` 512, the pipeline's default) and CLIP's pooled
    output; the text position ids (all zero) are the denoiser's to add (`localize.denoising`)."""
    embeds, pooled, _ = pipeline.encode_prompt(prompts, device=pipeline.transformer.device,
                                               max_sequence_length=FLUX_TOKENS)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _encode_sd3(pipeline: StableDiffusion3Pipeline, prompts: list[str], size: tuple[int, int]) -> Conditioning:
    """Both CLIPs' penultimate states side by side (zero-padded to T5's width), then T5's 256 states, along the
    sequence; both CLIPs' pooled projections side by side."""
    embeds, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device=pipeline.transformer.device,
                                                  do_classifier_free_guidance=False, max_sequence_length=SD3_T5_TOKENS)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


@dataclass(frozen=True)
class GroundTruth:
    """What a family whose world is known (the organism) gives methods and jobs in place of learned judges:
    `read_images(images)` the exact reading of each image (a table with `shape`, `color`, `texture`),
    `success(images, texts)` 1.0 per image that draws what its text should, `classifier(attributes)` an image
    classifier over attribute prompts (debiasing), `captions()` the world's captions (ReFACT's key corpus),
    `descriptions()` a description of every attribute value of the world (the side-effect ranker's candidates)."""

    read_images: Callable[[torch.Tensor], object]
    success: Callable[[torch.Tensor, list[str]], object]
    classifier: Callable[[list[str]], Callable[[torch.Tensor], list[int]]]
    captions: Callable[[], list[str]]
    descriptions: Callable[[], list[str]]


@dataclass(frozen=True)
class Family:
    """One model family.

    `encode(pipeline, prompts, size)` returns the UNet conditioning of the prompts (one row each) for an
    image of `size` = (height, width) pixels; `uncond(pipeline, n, size)` the unconditional CFG rows;
    `prompt_text(pipeline, prompt)` the text the tokenizer actually receives, when the pipeline changes it
    (token positions are computed on it). `ground_truth`: the family's known world, when it has one.
    `denoiser`: `unet`, or the DiT kind (`flux`, `sd3`; `localize.denoising`), whose pipeline holds it as
    `transformer`. `guidance_distilled`: the denoiser reads the guidance scale as an input and no unconditional
    half runs (FLUX.1). `token_lengths`: each tokenizer's length when they differ (default: all `max_tokens`).
    `context_tokens`: the length of the conditioning's token axis when it is not `max_tokens` (SD3 puts its
    CLIP and T5 states one after the other).
    """

    name: str
    description: str
    pipeline_class: type[DiffusionPipeline]
    text_encoders: tuple[str, ...]
    tokenizers: tuple[str, ...]
    encode: Callable[[DiffusionPipeline, list[str], tuple[int, int]], Conditioning]
    uncond: Callable[[DiffusionPipeline, int, tuple[int, int]], Conditioning] | None = None
    max_tokens: int = 77  # the sequence length the pipelines encode (IF's is hard-coded in its pipeline too)
    prompt_text: Callable[[DiffusionPipeline, str], str] | None = None
    ground_truth: GroundTruth | None = None
    denoiser: str = "unet"
    guidance_distilled: bool = False
    token_lengths: tuple[int, ...] | None = None
    context_tokens: int | None = None

    @property
    def context_length(self) -> int:
        """Positions on the token axis of the conditioning the denoiser reads."""
        return self.context_tokens or self.max_tokens

    @property
    def lengths(self) -> tuple[int, ...]:
        """The length each tokenizer encodes to, in `tokenizers` order."""
        return self.token_lengths or (self.max_tokens,) * len(self.tokenizers)

    @property
    def denoiser_attr(self) -> str:
        """The pipeline attribute that holds the denoiser."""
        return "unet" if self.denoiser == "unet" else "transformer"

    def unconditional(self, pipeline: DiffusionPipeline, n: int, size: tuple[int, int]) -> Conditioning:
        if self.uncond is not None:
            return self.uncond(pipeline, n, size)
        return self.encode(pipeline, [""] * n, size)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("sd1", "Stable Diffusion 1.x (1.4, 1.5, OpenJourney)", StableDiffusionPipeline,
               ("text_encoder",), ("tokenizer",), _encode_sd),
        Family("sd2", "Stable Diffusion 2.x", StableDiffusionPipeline, ("text_encoder",), ("tokenizer",), _encode_sd),
        Family("sdxl", "Stable Diffusion XL", StableDiffusionXLPipeline, ("text_encoder", "text_encoder_2"),
               ("tokenizer", "tokenizer_2"), _encode_sdxl, _uncond_sdxl),
        Family("if", "DeepFloyd IF stage I", IFPipeline, ("text_encoder",), ("tokenizer",), _encode_if,
               prompt_text=_prompt_text_if),
        Family("organism", "the embedded model organism (16x16 pixel space, see localize.organism)",
               OrganismPipeline, ("text_encoder",), ("tokenizer",), _encode_organism,
               ground_truth=GroundTruth(read_images, oracle_success, color_classifier, world_captions,
                                        world_descriptions)),
        Family("flux", "FLUX.1 (dev, schnell): MMDiT, T5 text stream + pooled CLIP, flow matching", FluxPipeline,
               ("text_encoder_2", "text_encoder"), ("tokenizer_2", "tokenizer"), _encode_flux,
               max_tokens=FLUX_TOKENS, token_lengths=(FLUX_TOKENS, 77), denoiser="flux", guidance_distilled=True),
        Family("sd3", "Stable Diffusion 3 and 3.5: MMDiT, two CLIPs + T5, flow matching", StableDiffusion3Pipeline,
               ("text_encoder", "text_encoder_2", "text_encoder_3"), ("tokenizer", "tokenizer_2", "tokenizer_3"),
               _encode_sd3, token_lengths=(77, 77, SD3_T5_TOKENS), context_tokens=77 + SD3_T5_TOKENS, denoiser="sd3"),
    )
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; valid families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


_SD_BY_TEXT_ACTIVATION = {"quick_gelu": "sd1", "gelu": "sd2"}


def check_family(pipeline: DiffusionPipeline, name: str) -> None:
    """An error naming both when `pipeline` cannot be of family `name`: its class differs, or (SD 1.x / 2.x) its
    text encoder's activation says the other version."""
    family = get_family(name)
    if not isinstance(pipeline, family.pipeline_class):
        fitting = [f.name for f in FAMILIES.values() if isinstance(pipeline, f.pipeline_class)]
        raise ValueError(f"family {name!r} runs a {family.pipeline_class.__name__}, but the pipeline is a "
                         f"{type(pipeline).__name__}; give family= one of {fitting}, or none to detect it")
    config = getattr(getattr(pipeline, "text_encoder", None), "config", None)
    activation = getattr(config, "hidden_act", None)
    version = _SD_BY_TEXT_ACTIVATION.get(activation)
    if name in _SD_BY_TEXT_ACTIVATION.values() and version not in (None, name):
        raise ValueError(f"family {name!r} given, but the pipeline's text encoder ({activation}) is "
                         f"{get_family(version).description} ({version!r}); give family={version!r} or none")


def detect_family(pipeline: DiffusionPipeline) -> str:
    """The family of a loaded pipeline, from its class and configs.

    SD 1.x and 2.x share a pipeline class; they differ in the text encoder: OpenAI CLIP (quick_gelu) for 1.x,
    OpenCLIP (gelu) for 2.x.
    """
    names = [f.name for f in FAMILIES.values() if type(pipeline) is f.pipeline_class]
    if names == ["sd1", "sd2"]:
        activation = getattr(pipeline.text_encoder.config, "hidden_act", None)
        names = [_SD_BY_TEXT_ACTIVATION[activation]] if activation in _SD_BY_TEXT_ACTIVATION else []
    if len(names) != 1:
        raise ValueError(
            f"cannot detect the model family of a {type(pipeline).__name__}; pass family= one of "
            f"{', '.join(FAMILIES)}"
        )
    return names[0]
