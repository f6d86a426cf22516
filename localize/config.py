"""Dataclass schemas of the job configs, registered in Hydra's ConfigStore so a mistyped key is an error.

`conf/` holds the YAML; each job config starts from its schema (`base_<job>`), each `model/` option from
`base_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    """`name_or_path`: a hub id, a local diffusers directory, or `random` (then `family`, `size`, `seed`)."""

    name_or_path: str = "random"
    family: str | None = None
    size: str = "tiny"
    seed: int = 0
    device: str | None = None
    dtype: str | None = None


@dataclass
class LayersJob:
    model: ModelConfig = field(default_factory=ModelConfig)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(name="base_layers", node=LayersJob)
