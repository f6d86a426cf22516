"""Stable string addresses of the activations the intervention engine can read and write.

Grammar (indices 0-based; cross-attention and text layers in execution order, see `localize layers`):

- `text_encoder.E.embeddings`               token embeddings of text encoder E
- `text_encoder.E.layers.L`                 output of layer L of encoder E (the residual stream)
- `text_encoder.E.layers.L.self_attn`       its self-attention output (before the residual add)
- `text_encoder.E.layers.L.mlp`             its MLP output (before the residual add)
- `text_encoder.E.layers.L.PATH`            any submodule of the layer by its own path, e.g.
                                            `self_attn.out_proj` (CLIP), `layer.0.SelfAttention.o` (T5)
- `cross_attn.K.context`                    the text conditioning cross-attention layer K receives
- `cross_attn.K.to_k` / `cross_attn.K.to_v` the text-side key / value projections' outputs (IF: add_k/add_v)
- `cross_attn.K`                            the cross-attention layer's output
- `unet.PATH`                               the output of any UNet module, e.g. `unet.up_blocks.1.resnets.0`
- `transformer.PATH`                        the output of a DiT's (FLUX, SD3) module, e.g.
                                            `transformer.context_embedder` (a module that returns one tensor)
- `block.K.text_in` / `block.K.text` / `block.K.image`
                                            DiT dual-stream block K: the text stream entering it, and each
                                            stream's output (SD3's last block outputs no text stream; a bare
                                            `block.K` or `single.K` is its image stream)
- `block.K.add_k` / `block.K.add_v`         its text stream's key / value projections' outputs
- `single.K.text_in` / `single.K.text` / `single.K.image`
                                            FLUX single-stream block K: the text slice of its joint sequence
                                            entering it and leaving it, and the image slice leaving it
- `SITE.input`                              the first input of any site above that is a module's output, e.g.
                                            `text_encoder.0.layers.0.self_attn.out_proj.input` (DiffQuickFix's keys)

A neuron is one feature of a site: `SITE:N`, e.g. `cross_attn.4.to_v:17` (LOCOGEN's neuron scores, the `neurons`
edit; a patch selects it with `Patch(SITE, neurons=[N])`).

Per-row tensors: text-axis sites are [tokens, features]; UNet sites are [positions, channels] (transformer
blocks) or [channels, height, width] (convolutions, IF attention); a DiT's image stream is [patches, channels].
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from localize.model import Model

SITE_PATTERNS = (
    "text_encoder.E.embeddings",
    "text_encoder.E.layers.L[.self_attn|.mlp|.<module path>]",
    "cross_attn.K[.context|.to_k|.to_v]",
    "unet.<module path>",
    "<module site>.input",
)
DIT_SITE_PATTERNS = (
    "text_encoder.E.embeddings",
    "text_encoder.E.layers.L[.self_attn|.mlp|.<module path>]",
    "block.K[.text_in|.text|.image|.add_k|.add_v]",
    "single.K[.text_in|.text|.image] (FLUX)",
    "transformer.<module path>",
    "<module site>.input",
)
DIT_STREAMS = {"text": 0, "image": 1}  # a DiT block returns (text stream, image stream)


def site_patterns(model: Model) -> tuple[str, ...]:
    """The site kinds this model's family has."""
    return SITE_PATTERNS if model.spec.denoiser == "unet" else DIT_SITE_PATTERNS


@dataclass(frozen=True)
class Site:
    """A resolved address. `hook`: `output` (the module's output), `input` (its first positional input) or
    `context` (its encoder_hidden_states input).

    `text_axis`: per-row tensors are [tokens, features]. `in_text_encoder`: computed once per prompt batch,
    before denoising, so a denoising-step range does not apply. `element`: for a module that returns a tuple,
    which element the site is (a DiT block's streams; None: the first).
    """

    name: str
    module: nn.Module
    hook: str
    text_axis: bool
    in_text_encoder: bool
    element: int | None = None


def _index(part: str, n: int, what: str, site: str) -> int:
    if not part.isdigit():
        raise ValueError(f"site {site!r}: {what} index {part!r} is not a non-negative integer")
    if int(part) >= n:
        raise IndexError(f"site {site!r}: {what} index {part} out of range: the model has {n} (0..{n - 1})")
    return int(part)


def _unknown(model: Model, name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(all_site_names(model)), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown site {name!r}; valid sites: {', '.join(site_patterns(model))}{hint}")


def resolve_site(model: Model, name: str) -> Site:
    """The module and hook behind a site address; a clear error for an address that does not exist."""
    if name.endswith(".input"):
        site = _resolve(model, name.removesuffix(".input"))
        if site.hook != "output":
            raise _unknown(model, name)
        return Site(name, site.module, "input", site.text_axis, site.in_text_encoder)
    return _resolve(model, name)


def _resolve(model: Model, name: str) -> Site:
    parts = name.split(".")
    head = parts[0]
    if head == model.spec.denoiser_attr and len(parts) > 1:
        path = ".".join(parts[1:])
        try:
            module = model.denoiser.get_submodule(path)
        except AttributeError:
            raise _unknown(model, name) from None
        return Site(name, module, "output", text_axis=False, in_text_encoder=False)
    if head in ("block", "single") and model.spec.denoiser != "unet" and len(parts) in (2, 3):
        return _dit_block_site(model, name, parts)
    if head in ("cross_attn", "unet") and model.spec.denoiser != "unet":
        raise ValueError(f"site {name!r} is a UNet site; the {model.family} family is a DiT "
                         f"({type(model.denoiser).__name__}), whose sites are: {', '.join(DIT_SITE_PATTERNS)}")
    if head == "cross_attn" and len(parts) in (2, 3):
        layer = model.cross_attention_layers[_index(parts[1], len(model.cross_attention_layers),
                                                    "cross-attention layer", name)]
        part = parts[2] if len(parts) == 3 else None
        if part is None:
            return Site(name, layer.module, "output", text_axis=False, in_text_encoder=False)
        if part == "context":
            return Site(name, layer.module, "context", text_axis=True, in_text_encoder=False)
        if part in ("to_k", "to_v"):
            module = layer.key if part == "to_k" else layer.value
            return Site(name, module, "output", text_axis=True, in_text_encoder=False)
    if head == "text_encoder" and len(parts) >= 3:
        e = _index(parts[1], len(model.text_encoders), "text encoder", name)
        if parts[2:] == ["embeddings"]:
            return Site(name, model.text_encoder_embeddings(e), "output", text_axis=True, in_text_encoder=True)
        layers = [layer for layer in model.text_encoder_layers if layer.encoder == e]
        if parts[2] == "layers" and len(parts) >= 4:
            layer = layers[_index(parts[3], len(layers), f"text encoder {e} layer", name)]
            path = ".".join(parts[4:])
            module = {"": layer.module, "self_attn": layer.self_attn, "mlp": layer.mlp}.get(path)
            if module is None:
                try:
                    module = layer.module.get_submodule(path)
                except AttributeError:
                    raise _unknown(model, name) from None
            return Site(name, module, "output", text_axis=True, in_text_encoder=True)
    raise _unknown(model, name)


def _dit_block_site(model: Model, name: str, parts: list[str]) -> Site:
    kind = parts[0]
    blocks = model.dit_blocks(kind)
    if not blocks:
        raise ValueError(f"site {name!r}: the {model.family} family has no {kind} blocks; valid sites: "
                         f"{', '.join(DIT_SITE_PATTERNS)}")
    block = blocks[_index(parts[1], len(blocks), f"{kind} block", name)].module
    part = parts[2] if len(parts) == 3 else "image"
    if part == "text_in":
        return Site(name, block, "context", text_axis=True, in_text_encoder=False)
    if part in DIT_STREAMS:
        if part == "text" and getattr(block, "context_pre_only", False):
            raise ValueError(f"site {name!r}: this block outputs no text stream (the last SD3 block reads the text "
                             "but passes none on); use its text_in or image")
        return Site(name, block, "output", text_axis=part == "text", in_text_encoder=False,
                    element=DIT_STREAMS[part])
    if part in ("add_k", "add_v") and kind == "block":
        return Site(name, getattr(block.attn, f"{part}_proj"), "output", text_axis=True, in_text_encoder=False)
    raise _unknown(model, name)


def token_length(model: Model, site: Site) -> int:
    """Positions on a text-axis site's token axis: its text encoder's length, else the conditioning's."""
    parts = site.name.split(".")
    if parts[0] == "text_encoder":
        return model.spec.lengths[int(parts[1])]
    return model.spec.context_length


def all_site_names(model: Model) -> list[str]:
    """Every valid address of this model (UNet modules included), for listings and suggestions."""
    names = []
    for e in range(len(model.text_encoders)):
        names.append(f"text_encoder.{e}.embeddings")
    for layer in model.text_encoder_layers:
        base = f"text_encoder.{layer.encoder}.layers.{layer.index}"
        names += [base, f"{base}.self_attn", f"{base}.mlp"]
    if model.spec.denoiser == "unet":
        for layer in model.cross_attention_layers:
            base = f"cross_attn.{layer.index}"
            names += [base, f"{base}.context", f"{base}.to_k", f"{base}.to_v"]
    else:
        for kind, parts in (("block", ("text_in", "text", "image", "add_k", "add_v")),
                            ("single", ("text_in", "text", "image"))):
            names += [f"{kind}.{i}.{part}" for i in range(len(model.dit_blocks(kind))) for part in parts]
    names += [f"{model.spec.denoiser_attr}.{path}" for path, _ in model.denoiser.named_modules() if path]
    return names
