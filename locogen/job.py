"""`localize locogen`: LOCOGEN's window search over a prompt set.

Its config schema and checks, importable without torch (the command line checks a config before any model
loads); the run itself, and what it writes: `locogen.run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from localize.config import PromptJobConfig, settings_from
from localize.jobs import Job
from localize.stats import check_interval_settings
from locogen.settings import NeuronSettings, SearchSettings, Unit, check_prompt_counts, make_units


@dataclass
class NeuronsConfig:
    """Neuron-level localization in the chosen window: the prompt set's prompts against their `neutral` ones."""

    enabled: bool = True
    ks: list[int] | None = None  # None: 1, 2, 4, ... up to all candidate neurons
    projections: list[str] = field(default_factory=lambda: ["to_k", "to_v"])
    ablation: str = "mean"  # mean (the neutral prompts' mean activation) | zero
    random_draws: int = 3


@dataclass
class LocogenJob(PromptJobConfig):
    m: int = 2
    objective: str | None = None  # lower | raise; None: raise for facts, lower otherwise
    blocks: str = "dual"  # a DiT's window blocks: dual-stream, or FLUX's single-stream (their text slice)
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)


def objective_of(cfg: DictConfig) -> str:
    return cfg.objective or ("raise" if cfg.prompts.kind == "fact" else "lower")


def units_of(cfg: DictConfig) -> list[Unit]:
    """Every entry with every seed; scored against `text` (lower) or `altered_text` (raise)."""
    objective, entries = objective_of(cfg), cfg.prompts.entries
    for entry in entries:
        if entry.altered is None:
            raise ValueError(f"prompt set {cfg.prompts.name!r}: entry {entry.prompt!r} has no altered prompt")
    texts = [(e.text or e.attribute) if objective == "lower" else (e.altered_text or e.altered) for e in entries]
    return make_units([e.prompt for e in entries], [e.altered for e in entries], texts, list(cfg.seeds))


def search_settings(cfg: DictConfig) -> SearchSettings:
    return settings_from(cfg, SearchSettings, objective=objective_of(cfg))


def neuron_settings_of(cfg: DictConfig) -> NeuronSettings:
    return settings_from(cfg, NeuronSettings,
                         {name: f"neurons.{name}" for name in ("ks", "projections", "ablation", "random_draws")})


def check_locogen(cfg: DictConfig) -> None:
    search_settings(cfg).check()
    units_of(cfg)
    check_interval_settings(cfg.confidence, cfg.resamples)
    if cfg.neurons.enabled:
        neuron_settings_of(cfg).check()
        check_prompt_counts([e.prompt for e in cfg.prompts.entries],
                            [e.neutral or e.altered for e in cfg.prompts.entries])


JOB = Job(LocogenJob, "locogen.run:run_locogen", check=check_locogen)
