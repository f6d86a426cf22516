"""Published component configs of each family, and their tiny counterparts, for `random_model`.

`FULL` holds the architecture values of the published `config.json` files (SD 1.5, SD 2.1, SD-XL base 1.0,
DeepFloyd IF-I-XL v1.0, FLUX.1-dev, Stable Diffusion 3.5 Large) and the shipped organism's
(`localize.organism`: a 16x16 pixel-space SD 1.x). `TINY` keeps every structural choice of the full model
(block types, layers per block, transformer depth, the DiTs' block counts, text-encoder layer count, so layer
indices mean the same thing) and shrinks only widths and the sample size, so a tiny model runs in
milliseconds on a CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

_SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}

_SD_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512,
    "scaling_factor": 0.18215,
}
_TINY_VAE = {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8, "sample_size": 64}

_CLIP_L_TEXT = {  # openai/clip-vit-large-patch14's text tower (SD 1.x; SD-XL's first encoder)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "projection_dim": 32}

_CLIP_G_TEXT = {  # laion CLIP ViT-bigG/14's text tower (SD-XL's and SD3's second encoder)
    **_CLIP_L_TEXT, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "hidden_act": "gelu", "projection_dim": 1280}
_T5_XXL = {  # google/t5-v1_1-xxl's encoder (DeepFloyd IF, FLUX, SD3)
    "vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1, "pad_token_id": 0, "eos_token_id": 1,
    "tie_word_embeddings": False, "is_encoder_decoder": False}
_TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4}
_FLOW_VAE = {**_SD_VAE, "latent_channels": 16, "sample_size": 1024, "use_quant_conv": False,
             "use_post_quant_conv": False}  # FLUX's and SD3's 16-channel autoencoder (scaling and shift per family)

_SD1_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32,
}


@dataclass(frozen=True)
class Architecture:
    """Component configs: `text_encoders` and `tokenizers` in the family's order.

    A tokenizer entry is the CLIP pad token (`<|endoftext|>` for SD 1.x, `!` for OpenCLIP encoders) or `"t5"`.
    """

    unet: dict | None
    text_encoders: tuple[tuple[str, dict], ...]
    tokenizers: tuple[str, ...]
    scheduler: tuple[str, dict]
    vae: dict | None = None
    pipeline: dict = field(default_factory=dict)
    transformer: tuple[str, dict] | None = None  # a DiT family's denoiser (class name, config), in place of a UNet


FULL: dict[str, Architecture] = {
    "sd1": Architecture(
        unet=_SD1_UNET,
        text_encoders=(("CLIPTextModel", _CLIP_L_TEXT),),
        tokenizers=("<|endoftext|>",),
        scheduler=("PNDMScheduler", {**_SD_SCHEDULE, "skip_prk_steps": True}),
        vae=_SD_VAE,
    ),
    "sd2": Architecture(
        unet={**_SD1_UNET, "sample_size": 96, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
              "use_linear_projection": True, "upcast_attention": True},
        text_encoders=(("CLIPTextModel", {
            **_CLIP_L_TEXT, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
            "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512}),),
        tokenizers=("!",),
        scheduler=("DDIMScheduler", {**_SD_SCHEDULE, "prediction_type": "v_prediction"}),
        vae={**_SD_VAE, "sample_size": 768},
    ),
    "sdxl": Architecture(
        unet={**_SD1_UNET, "sample_size": 128, "attention_head_dim": [5, 10, 20],
              "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
              "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
              "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816},
        text_encoders=(
            ("CLIPTextModel", _CLIP_L_TEXT),
            ("CLIPTextModelWithProjection", _CLIP_G_TEXT),
        ),
        tokenizers=("<|endoftext|>", "!"),
        scheduler=("EulerDiscreteScheduler", {**_SD_SCHEDULE, "interpolation_type": "linear",
                                              "prediction_type": "epsilon", "timestep_spacing": "leading",
                                              "use_karras_sigmas": False}),
        vae={**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        pipeline={"force_zeros_for_empty_prompt": True},
    ),
    "if": Architecture(
        unet={
            "sample_size": 64, "in_channels": 3, "out_channels": 6, "act_fn": "gelu",
            "block_out_channels": [704, 1408, 2112, 2816], "layers_per_block": 3, "attention_head_dim": 64,
            "cross_attention_dim": 2816, "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj",
            "addition_embed_type": "text", "addition_embed_type_num_heads": 64,
            "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
            "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "cross_attention_norm": "group_norm",
            "resnet_time_scale_shift": "scale_shift", "upcast_attention": False, "use_linear_projection": False,
            "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
        },
        text_encoders=(("T5EncoderModel", _T5_XXL),),
        tokenizers=("t5",),
        scheduler=("DDPMScheduler", {
            "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000, "prediction_type": "epsilon",
            "variance_type": "learned_range", "clip_sample": True, "clip_sample_range": 1.0, "thresholding": True,
            "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5}),
    ),
    "organism": Architecture(
        unet={"sample_size": 16, "in_channels": 3, "out_channels": 3, "act_fn": "silu", "attention_head_dim": 4,
              "block_out_channels": [32, 64, 64], "cross_attention_dim": 256, "layers_per_block": 1,
              "down_block_types": ["CrossAttnDownBlock2D"] * 3, "up_block_types": ["CrossAttnUpBlock2D"] * 3,
              "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 8, "norm_eps": 1e-5},
        text_encoders=(("CLIPTextModel", {
            **_CLIP_L_TEXT, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 8,
            "num_attention_heads": 4, "projection_dim": 256, "hidden_act": "gelu", "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}),),
        tokenizers=("<|endoftext|>",),
        scheduler=("DDIMScheduler", {
            "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
            "clip_sample": False,  # clamping x0 (without recomputing the noise) derails sampling under strong CFG
            "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "trailing"}),
    ),
    "flux": Architecture(  # black-forest-labs/FLUX.1-dev; T5 first: its states are the text stream
        unet=None,
        transformer=("FluxTransformer2DModel", {
            "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}),
        text_encoders=(("T5EncoderModel", _T5_XXL), ("CLIPTextModel", _CLIP_L_TEXT)),
        tokenizers=("t5", "<|endoftext|>"),
        scheduler=("FlowMatchEulerDiscreteScheduler", {
            "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
            "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}),
        vae={**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    ),
    "sd3": Architecture(  # stabilityai/stable-diffusion-3.5-large
        unet=None,
        transformer=("SD3Transformer2DModel", {
            "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
            "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
            "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
            "dual_attention_layers": []}),
        text_encoders=(("CLIPTextModelWithProjection", _CLIP_L_TEXT), ("CLIPTextModelWithProjection", _CLIP_G_TEXT),
                       ("T5EncoderModel", _T5_XXL)),
        tokenizers=("<|endoftext|>", "!", "t5"),
        scheduler=("FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": 3.0}),
        vae={**_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
    ),
}

_TINY_OVERRIDES: dict[str, dict] = {
    "sd1": {"unet": {"sample_size": 8, "block_out_channels": [32, 32, 64, 64], "norm_num_groups": 8,
                     "attention_head_dim": 2, "cross_attention_dim": 32},
            "text_encoders": [_TINY_TEXT], "vae": _TINY_VAE},
    "sd2": {"unet": {"sample_size": 8, "block_out_channels": [32, 32, 64, 64], "norm_num_groups": 8,
                     "attention_head_dim": [1, 2, 2, 2], "cross_attention_dim": 32},
            "text_encoders": [_TINY_TEXT], "vae": _TINY_VAE},
    "sdxl": {"unet": {"sample_size": 8, "block_out_channels": [32, 64, 64], "norm_num_groups": 8,
                      "attention_head_dim": [1, 2, 2], "cross_attention_dim": 64, "addition_time_embed_dim": 8,
                      "projection_class_embeddings_input_dim": 32 + 6 * 8},
             "text_encoders": [_TINY_TEXT, _TINY_TEXT], "vae": _TINY_VAE},
    "if": {"unet": {"sample_size": 16, "block_out_channels": [16, 32, 48, 64], "norm_num_groups": 8,
                    "attention_head_dim": 8, "cross_attention_dim": 64, "encoder_hid_dim": 32,
                    "addition_embed_type_num_heads": 4},
           "text_encoders": [{"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4}]},
    "organism": {"unet": {"sample_size": 8, "block_out_channels": [16, 16, 32], "cross_attention_dim": 32,
                          "attention_head_dim": 2},
                 "text_encoders": [_TINY_TEXT]},
    "flux": {"transformer": {"attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 32,
                             "pooled_projection_dim": 32, "axes_dims_rope": [2, 2, 4]},
             "text_encoders": [_TINY_T5, _TINY_TEXT], "vae": {**_TINY_VAE, "norm_num_groups": 4}},
    "sd3": {"transformer": {"sample_size": 8, "attention_head_dim": 8, "num_attention_heads": 2,
                            "joint_attention_dim": 64, "caption_projection_dim": 16, "pooled_projection_dim": 64,
                            "pos_embed_max_size": 8},  # T5 at least as wide as the two CLIPs' states side by side
            "text_encoders": [_TINY_TEXT, _TINY_TEXT, {**_TINY_T5, "d_model": 64}],
            "vae": {**_TINY_VAE, "norm_num_groups": 4}},
}


def architecture(family: str, size: str) -> Architecture:
    """The `full` (published) or `tiny` architecture of a family."""
    if size not in ("tiny", "full"):
        raise ValueError(f"unknown model size {size!r}; valid sizes: tiny, full")
    if family not in FULL:
        raise ValueError(f"no random architecture for family {family!r}; valid families: {', '.join(FULL)}")
    full = FULL[family]
    if size == "full":
        return copy.deepcopy(full)
    tiny = _TINY_OVERRIDES[family]
    transformer = full.transformer and (full.transformer[0], {**full.transformer[1], **tiny["transformer"]})
    return Architecture(
        unet=full.unet and {**full.unet, **tiny["unet"]},
        transformer=transformer,
        text_encoders=tuple(
            (cls, {**cfg, **small}) for (cls, cfg), small in zip(full.text_encoders, tiny["text_encoders"], strict=True)
        ),
        tokenizers=full.tokenizers,
        scheduler=copy.deepcopy(full.scheduler),
        vae={**full.vae, **tiny["vae"]} if full.vae else None,
        pipeline=dict(full.pipeline),
    )
