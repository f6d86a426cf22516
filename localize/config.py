"""Dataclass schemas of the shared config groups, registered in Hydra's ConfigStore so a mistyped key is an error.

`conf/` holds the YAML: each `model/` option starts from `base_model`, each `prompts/` option from
`base_prompts`, each `scorer/` option from `base_scorer`; each job's own schema is `base_<job>` (see
`localize.jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from localize.data import shipped
from localize.gpus import visible_gpus


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
class ScorerConfig:
    """An open_clip model: `model_name` and `pretrained` as in `open_clip.create_model` (the organism's scorer:
    `organism-clip` / `organism`)."""

    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"
    device: str | None = None
    dtype: str | None = None


@dataclass
class PromptItem:
    """One prompt of a prompt set. `attribute`: the phrase of `prompt` that carries the knowledge (what causal
    tracing corrupts); `text`: what the images are scored against (the attribute itself when not given).
    `altered`: the prompt with the attribute removed or replaced (for facts: the updated fact), `altered_text`
    what it is scored against (LOCOGEN). `neutral`: the prompt with the attribute removed, the other side of
    the neuron search (`altered` when not given)."""

    prompt: str = MISSING
    attribute: str = MISSING
    text: str | None = None
    altered: str | None = None
    altered_text: str | None = None
    neutral: str | None = None


@dataclass
class PromptSet:
    """A named set of prompts of one knowledge kind (`style`, `object`, `fact`, ...)."""

    name: str = MISSING
    kind: str = MISSING
    entries: list[PromptItem] = field(default_factory=list)


@dataclass
class ScoredJobConfig:
    """What every job that generates and scores images takes (`trace`, `locogen`, `evaluate`): the model, the
    scorer, the seeds, the sampler, the batch size, and the bootstrap of its confidence intervals."""

    model: ModelConfig = field(default_factory=ModelConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    steps: int = 25
    guidance: float = 7.5
    batch_size: Any = "auto"  # rows per batch: an integer, or auto (from the device's free memory: localize.memory)
    memory_budget: float | None = None  # GiB that batch_size=auto may use (null: the device's free memory)
    confidence: float = 0.95
    resamples: int = 1000
    progress: bool = True


@dataclass
class PromptJobConfig(ScoredJobConfig):
    """A scored job over a prompt set (`trace`, `locogen`)."""

    prompts: PromptSet = field(default_factory=PromptSet)


Settings = TypeVar("Settings")


def settings_from(cfg: DictConfig, settings: type[Settings], paths: dict[str, str] | None = None,
                  **values) -> Settings:
    """A runtime settings dataclass built from a job's config, not copied field by field: each field is the
    config value at `paths[field]` (a dotted key), else at the key of the field's own name, unless given in
    `values` (a value derived from several keys). Lists become tuples. A field with none of these is an error,
    so no config value can silently fall back to a settings default."""
    paths = paths or {}
    kwargs = {}
    for item in fields(settings):
        if item.name in values:
            kwargs[item.name] = values[item.name]
            continue
        path = paths.get(item.name, item.name)
        value = OmegaConf.select(cfg, path, default=MISSING)
        if value is MISSING:
            raise KeyError(f"{settings.__name__}.{item.name}: the config has no key {path!r}")
        kwargs[item.name] = tuple(value) if isinstance(value, ListConfig) else value
    return settings(**kwargs)


def register_configs(jobs: dict) -> None:
    """Register the group schemas, for each job of `jobs` (name -> `Job`) its schema as `base_<name>`, and the
    resolvers `${shipped:NAME}` (the path of a dataset file shipped in `localize/datasets/`) and
    `${visible_gpus:}` (the launcher `gpus`' workers; at least 1)."""
    OmegaConf.register_new_resolver("shipped", lambda name: str(shipped(name)), replace=True)
    OmegaConf.register_new_resolver("visible_gpus", lambda: max(1, visible_gpus()), replace=True)
    store = ConfigStore.instance()
    store.store(group="model", name="base_model", node=ModelConfig)
    store.store(group="scorer", name="base_scorer", node=ScorerConfig)
    store.store(group="prompts", name="base_prompts", node=PromptSet)
    for name, job in jobs.items():
        store.store(name=f"base_{name}", node=job.schema)
