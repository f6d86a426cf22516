"""The cross-attention layer table `localize layers` prints (index -> module, execution order) with sizes; for a
DiT (FLUX, SD3), its text-reading layers (each dual-stream block's joint attention, whose `add_k_proj` /
`add_v_proj` read the text stream) and, below, every block with its stream."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from localize.loading import model_from_config
from localize.model import Model, block_of
from localize.results import write_results


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_table(model: Model) -> pd.DataFrame:
    """One row per cross-attention layer: index, UNet block, module name, parameters (all / key+value)."""
    return pd.DataFrame([
        {"index": layer.index, "block": block_of(layer.name), "name": layer.name,
         "params": _count(layer.module), "key_value_params": _count(layer.key) + _count(layer.value)}
        for layer in model.cross_attention_layers
    ])


def block_table(model: Model) -> pd.DataFrame:
    """A DiT's blocks in execution order: index, kind (`block`: dual-stream, text and image streams apart;
    `single`: one joint sequence whose first tokens are the text), module name, parameters."""
    return pd.DataFrame([{"index": c.index, "kind": c.kind, "name": c.name, "params": _count(c.module)}
                         for c in model.unet_components])


def run_layers(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    model = model_from_config(cfg.model)
    table = layer_table(model)
    encoders = ", ".join(
        f"{attr} {type(enc).__name__} ({sum(1 for layer in model.text_encoder_layers if layer.encoder == e)} "
        f"layers, {_count(enc) / 1e6:.1f}M params)"
        for e, (attr, enc) in enumerate(zip(model.spec.text_encoders, model.text_encoders, strict=True))
    )
    dit = model.spec.denoiser != "unet"
    denoiser = type(model.denoiser).__name__ if dit else "UNet"
    reading = "text-reading layers (dual-stream joint attention)" if dit else "cross-attention layers"
    print(f"{model.family}: {denoiser} {_count(model.denoiser) / 1e6:.1f}M params, {len(table)} {reading} "
          f"(0-based, execution order); text encoders: {encoders}")
    print(table.to_string(index=False))
    if dit:
        blocks = block_table(model)
        print(f"\n{len(blocks)} blocks (execution order):")
        print(blocks.to_string(index=False))
    write_results(table, cfg, out_dir)
    return table
