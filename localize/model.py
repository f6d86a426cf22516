"""`Model`: a diffusers pipeline plus its canonical layer tables, and `load_model` for hub ids and local dirs.

Layer-index convention: every table is 0-based and in EXECUTION order (down blocks, mid block, up blocks, as
the UNet's forward calls them), which is not `named_modules()` order (down, up, mid). The order is recorded
by running the UNet's forward once on the meta device (no memory, no compute) with hooks on every module.
A DiT (FLUX, SD3) runs its dual-stream `transformer_blocks`, then FLUX's `single_transformer_blocks`, in
index order: its text-reading layers are the dual-stream blocks' attentions (the text stream's `add_k_proj` /
`add_v_proj`), and its components are the blocks.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from localize.context_cache import ContextCache
from localize.families import TEXT_ENCODER_ARCHS, Family, check_family, detect_family, get_family
from localize.tokens import EncoderTokenizer


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer. `key`/`value` are the projections that see the text.

    For SD and SD-XL these are `to_k`/`to_v` of a transformer block's `attn2`; for DeepFloyd IF's added-K/V
    attention, and a DiT's dual-stream joint attention (its text stream), they are `add_k_proj`/`add_v_proj`.
    """

    index: int
    name: str
    module: nn.Module

    @property
    def key(self) -> nn.Linear:
        return self.module.add_k_proj if self.module.added_kv_proj_dim is not None else self.module.to_k

    @property
    def value(self) -> nn.Linear:
        return self.module.add_v_proj if self.module.added_kv_proj_dim is not None else self.module.to_v


@dataclass(frozen=True)
class TextEncoderLayer:
    """Layer `index` of text encoder `encoder` (0-based, in `Model.text_encoders` order)."""

    encoder: int
    index: int
    name: str
    module: nn.Module
    self_attn: nn.Module
    mlp: nn.Module


@dataclass(frozen=True)
class UNetComponent:
    """A denoiser state causal tracing restores: kind in `resnet, self_attn, cross_attn, ff`, block e.g.
    `up_blocks.1` (UNets); kind `block` (dual-stream) or `single`, block `transformer_blocks` or
    `single_transformer_blocks` (DiTs)."""

    index: int
    name: str
    kind: str
    block: str
    module: nn.Module


def _is_cross_attention(module: nn.Module) -> bool:
    return isinstance(module, Attention) and (module.is_cross_attention or module.added_kv_proj_dim is not None)


def _component_kind(module: nn.Module) -> str | None:
    if isinstance(module, ResnetBlock2D):
        return "resnet"
    if isinstance(module, Attention):
        return "cross_attn" if _is_cross_attention(module) else "self_attn"
    if isinstance(module, FeedForward):
        return "ff"
    return None


def _meta_inputs(config) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Smallest valid UNet inputs on the meta device for a UNet config."""
    side = 2 ** (len(config.block_out_channels) - 1)
    sample = torch.zeros(1, config.in_channels, side, side, device="meta")
    text_dim = config.encoder_hid_dim or config.cross_attention_dim
    kwargs: dict = {"encoder_hidden_states": torch.zeros(1, 4, text_dim, device="meta")}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, pooled, device="meta"),
            "time_ids": torch.zeros(1, 6, device="meta"),
        }
    return sample, torch.zeros(1, device="meta"), kwargs


@functools.lru_cache(maxsize=16)
def _execution_order(config_json: str) -> tuple[str, ...]:
    """Names of the UNet's modules in the order its forward first calls them (traced on the meta device)."""
    config = json.loads(config_json)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    order: dict[str, None] = {}
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: order.setdefault(name))
        for name, module in unet.named_modules()
        if name
    ]
    try:
        sample, timestep, kwargs = _meta_inputs(unet.config)
        with torch.no_grad():
            unet(sample, timestep, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return tuple(order)


def unet_execution_order(unet: UNet2DConditionModel) -> tuple[str, ...]:
    return _execution_order(json.dumps(dict(unet.config), sort_keys=True, default=list))


DIT_BLOCK_LISTS = {"transformer_blocks": "block", "single_transformer_blocks": "single"}


def _dit_tables(transformer: nn.Module) -> tuple[list[CrossAttentionLayer], list[UNetComponent]]:
    """A DiT's text-reading layers (each dual-stream block's attention) and its blocks, in execution order."""
    blocks = [(f"{attr}.{i}", kind, attr, block) for attr, kind in DIT_BLOCK_LISTS.items()
              for i, block in enumerate(getattr(transformer, attr, ()))]
    dual = [(name, block.attn) for name, kind, _, block in blocks if kind == "block"]
    return ([CrossAttentionLayer(i, f"{name}.attn", attn) for i, (name, attn) in enumerate(dual)],
            [UNetComponent(i, name, kind, attr, block) for i, (name, kind, attr, block) in enumerate(blocks)])


def block_of(name: str) -> str:
    """The UNet block a module belongs to: `down_blocks.N`, `mid_block` or `up_blocks.N`."""
    parts = name.split(".")
    return parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])


def _unet_tables(unet: UNet2DConditionModel, family: str) -> tuple[list[CrossAttentionLayer], list[UNetComponent]]:
    """A UNet's cross-attention layers and components, in execution order."""
    modules = dict(unet.named_modules())
    order = [name for name in unet_execution_order(unet) if name in modules]
    cross = [name for name in order if _is_cross_attention(modules[name])]
    if not cross:
        raise ValueError(f"the {family} UNet has no cross-attention layer; cannot build a Model of it")
    components = [(name, kind) for name in order if (kind := _component_kind(modules[name])) is not None]
    return ([CrossAttentionLayer(i, n, modules[n]) for i, n in enumerate(cross)],
            [UNetComponent(i, n, kind, block_of(n), modules[n]) for i, (n, kind) in enumerate(components)])


@dataclass
class AppliedEdit:
    """The weights an applied edit replaced (`locoedit.Edit.apply`): the edit's content key, its method, and the
    original tensors by address (`<pipeline component>.<parameter path>`)."""

    key: str
    method: str
    originals: dict[str, torch.Tensor]


@dataclass
class Model:
    """A pipeline and its tables. Build with `load_model` or `random_model`.

    `cross_attention_layers`, `unet_components`: execution order over the UNet. `text_encoder_layers`: encoder by
    encoder (in `text_encoders` order), layer by layer. `context_cache`: the text contexts `text_contexts` has
    encoded for the current text weights. `applied_edits`: the edits applied to the weights, in the order applied
    (any `Edit` with the same content, fresh or loaded from its file, reverts its entry); `revert_all` restores
    the base weights bit-exactly.
    """

    pipeline: DiffusionPipeline
    family: str
    cross_attention_layers: list[CrossAttentionLayer]
    text_encoder_layers: list[TextEncoderLayer]
    unet_components: list[UNetComponent]
    context_cache: ContextCache = field(default_factory=ContextCache, repr=False, compare=False)
    applied_edits: list[AppliedEdit] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_pipeline(cls, pipeline: DiffusionPipeline, family: str | None = None) -> Model:
        if family is None:
            family = detect_family(pipeline)
        else:
            check_family(pipeline, family)
        if get_family(family).denoiser == "unet":
            cross_layers, components = _unet_tables(pipeline.unet, family)
        else:
            cross_layers, components = _dit_tables(pipeline.transformer)
        text_layers = []
        for e, attr in enumerate(get_family(family).text_encoders):
            encoder = getattr(pipeline, attr)
            arch = TEXT_ENCODER_ARCHS[type(encoder).__name__]
            for i, layer in enumerate(encoder.get_submodule(arch.layers)):
                text_layers.append(TextEncoderLayer(
                    e, i, f"{attr}.{arch.layers}.{i}", layer,
                    layer.get_submodule(arch.self_attn), layer.get_submodule(arch.mlp),
                ))
        return cls(pipeline=pipeline, family=family, cross_attention_layers=cross_layers,
                   text_encoder_layers=text_layers, unet_components=components)

    @property
    def spec(self) -> Family:
        return get_family(self.family)

    @property
    def denoiser(self) -> nn.Module:
        """The UNet, or a DiT family's transformer."""
        return getattr(self.pipeline, self.spec.denoiser_attr)

    @property
    def unet(self) -> UNet2DConditionModel:
        if self.spec.denoiser != "unet":
            raise ValueError(f"the {self.family} family has no UNet: its denoiser is a {type(self.denoiser).__name__} "
                             "(`Model.denoiser`, sites `transformer.<module path>`)")
        return self.pipeline.unet

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def vae(self) -> nn.Module | None:
        return getattr(self.pipeline, "vae", None)

    @property
    def text_encoders(self) -> tuple[nn.Module, ...]:
        return tuple(getattr(self.pipeline, attr) for attr in self.spec.text_encoders)

    @property
    def text_side(self) -> tuple[nn.Module, ...]:
        """Every module the text contexts depend on: the text encoders and the UNet's text projection (IF)."""
        projection = getattr(self.denoiser, "encoder_hid_proj", None)
        return self.text_encoders + ((projection,) if projection is not None else ())

    @property
    def tokenizers(self) -> tuple[EncoderTokenizer, ...]:
        """The family's tokenizers as its encoding uses them: its length (`max_tokens`), each prompt seen as the
        encoder sees it (`Family.prompt_text`)."""
        prompt_text = self.spec.prompt_text and functools.partial(self.spec.prompt_text, self.pipeline)
        return tuple(EncoderTokenizer(getattr(self.pipeline, attr), length, prompt_text)
                     for attr, length in zip(self.spec.tokenizers, self.spec.lengths, strict=True))

    @property
    def tokenizer(self):
        """The first tokenizer: the one whose token positions index the cross-attention context."""
        return self.tokenizers[0]

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def text_encoder_embeddings(self, encoder: int) -> nn.Module:
        arch = TEXT_ENCODER_ARCHS[type(self.text_encoders[encoder]).__name__]
        return self.text_encoders[encoder].get_submodule(arch.embeddings)

    @torch.no_grad()
    def revert_all(self) -> Model:
        """Restore the base weights bit-exactly: every applied edit reverted, the latest first."""
        while self.applied_edits:
            entry = self.applied_edits.pop()
            for address, original in entry.originals.items():
                component, _, path = address.partition(".")
                self.pipeline.components[component].get_parameter(path).copy_(original)
        return self

    def dit_blocks(self, kind: str) -> list[UNetComponent]:
        """A DiT's blocks of `kind` (`block`: dual-stream, `single`), in execution order: entry K is the block
        that sites `block.K.*` / `single.K.*` name."""
        return [c for c in self.unet_components if c.kind == kind]

    def cross_attention_layer(self, index: int) -> CrossAttentionLayer:
        n = len(self.cross_attention_layers)
        if not isinstance(index, int) or not -n <= index < n:
            raise IndexError(f"cross-attention layer index {index!r} out of range: this model has {n} (0..{n - 1})")
        return self.cross_attention_layers[index]


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from its name (`float32`, `fp16`, `bf16`, ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    valid = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in valid:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(valid)}")
    return valid[dtype]


_UNUSED_COMPONENTS = ("safety_checker", "feature_extractor", "watermarker")


def unused_components(pipeline_class: type, present) -> dict:
    """Keyword arguments that leave out the safety checker, feature extractor and watermarker among `present`
    component names: the lab reads raw generations."""
    kwargs = {name: None for name in _UNUSED_COMPONENTS if name in present}
    if "requires_safety_checker" in inspect.signature(pipeline_class.__init__).parameters:
        kwargs["requires_safety_checker"] = False
    return kwargs


ORGANISM = "organism"  # the name `load_model` gives the embedded model organism


HUB_ID = re.compile(r"[A-Za-z0-9][\w-]*(\.[\w-]+)*/[\w-]+(\.[\w-]+)*")  # owner/name; not ./x, ../x, ~/x, /x


def load_model(
    name_or_path: str,
    family: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Model:
    """Load a diffusers pipeline from a hub id or a local diffusers directory and build its tables;
    `"organism"` loads the embedded model organism shipped in the package (no network).

    The family (`sd1, sd2, sdxl, if, flux, sd3, organism`) is detected from the pipeline's configs unless given. Safety
    checkers and watermarkers are not loaded.
    """
    if family is not None:
        get_family(family)
    if name_or_path == ORGANISM:
        from localize.organism.weights import organism_pipeline

        if family not in (None, ORGANISM):
            raise ValueError(f"the organism is of family {ORGANISM!r}, not {family!r}")
        return _placed(organism_pipeline(), device, dtype, ORGANISM)
    path = Path(name_or_path)
    if path.exists() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory: it has no model_index.json")
    if not path.exists() and not HUB_ID.fullmatch(name_or_path):
        raise FileNotFoundError(f"no local diffusers directory at {path.expanduser().resolve()}, and "
                                f"{name_or_path!r} is not a hub id (owner/name)")
    try:
        index = DiffusionPipeline.load_config(name_or_path)
    except OSError as error:
        raise OSError(f"{name_or_path!r}: no local directory of that name (none at {path.resolve()}), and the hub "
                      f"did not give it: {error}") from None
    pipeline_class = getattr(diffusers, index["_class_name"], DiffusionPipeline)
    skipped = unused_components(pipeline_class, index)
    pipeline = pipeline_class.from_pretrained(name_or_path, torch_dtype=parse_dtype(dtype), **skipped)
    return _placed(pipeline, device, None, family)


def _placed(pipeline: DiffusionPipeline, device, dtype, family: str | None) -> Model:
    if device is not None or dtype is not None:
        pipeline.to(*([torch.device(device)] if device is not None else []),
                    *([parse_dtype(dtype)] if dtype is not None else []))
    return Model.from_pipeline(pipeline, family)
