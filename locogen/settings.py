"""LOCOGEN's units, settings and their checks, importable without torch: the command line checks a config with
them before any model loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from localize.checks import AUTO, check_batch_size, check_guidance, check_memory_budget, check_seeds, check_steps

OBJECTIVES = ("lower", "raise")
BLOCKS = ("dual", "single")  # a DiT's window blocks: dual-stream (and every UNet's layers), or FLUX's single-stream
PROJECTIONS = ("to_k", "to_v")
ABLATIONS = ("mean", "zero")


@dataclass(frozen=True)
class Unit:
    """One prompt x seed: the original `prompt`, its `altered` counterpart, the `text` images are scored against."""

    prompt: str
    altered: str
    text: str
    seed: int


def make_units(prompts: Sequence[str], altered: Sequence[str], texts: Sequence[str], seeds: Sequence[int]
               ) -> list[Unit]:
    """Every (prompt, altered prompt, scored text) with every seed; the three lists must line up."""
    if not (len(prompts) == len(altered) == len(texts)):
        raise ValueError(f"the prompt lists must have one entry each: {len(prompts)} prompts, {len(altered)} "
                         f"altered prompts, {len(texts)} texts")
    if not prompts:
        raise ValueError("no prompt to search with: the prompt set is empty")
    check_seeds(seeds)
    return [Unit(p, a, t, int(seed)) for p, a, t in zip(prompts, altered, texts, strict=True) for seed in seeds]


def check_window_size(m, n_layers: int | None = None) -> None:
    """A window of `m` consecutive layers fits a model of `n_layers` cross-attention layers (when known)."""
    if not isinstance(m, int) or m < 1 or (n_layers is not None and m > n_layers):
        upper = n_layers if n_layers is not None else "the model's cross-attention layers"
        raise ValueError(f"window size m={m!r} must be an integer in 1..{upper}")


@dataclass(frozen=True)
class SearchSettings:
    m: int = 2
    steps: int = 25
    guidance: float = 7.5
    batch_size: int | str = AUTO  # rows per batch, or AUTO: see `localize.memory`
    memory_budget: float | None = None  # GiB for batch_size=auto (None: the device's free memory)
    objective: str = "lower"
    blocks: str = "dual"  # `single`: windows of FLUX's single-stream blocks, their joint sequence's text slice

    def check(self, n_layers: int | None = None) -> None:
        """The settings alone; with `n_layers` (the model's layers the windows run over) the window size too."""
        if self.blocks not in BLOCKS:
            raise ValueError(f"unknown blocks {self.blocks!r}; valid: {', '.join(BLOCKS)}")
        check_window_size(self.m, n_layers)
        check_steps(self.steps)
        check_guidance(self.guidance)
        check_batch_size(self.batch_size, 2, "the altered row and a window row")
        check_memory_budget(self.memory_budget)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}")


@dataclass(frozen=True)
class NeuronSettings:
    """`ks`: the neuron counts to ablate (None: `default_ks` of the candidates)."""

    ks: tuple[int, ...] | None = None
    projections: tuple[str, ...] = PROJECTIONS
    ablation: str = "mean"
    random_draws: int = 3
    steps: int = 25
    guidance: float = 7.5
    batch_size: int | str = AUTO
    memory_budget: float | None = None

    def check(self) -> None:
        check_batch_size(self.batch_size, 2, "the clean row and an ablated row")
        check_memory_budget(self.memory_budget)
        unknown = [p for p in self.projections if p not in PROJECTIONS]
        if unknown or not self.projections:
            raise ValueError(f"projections {list(self.projections)}: give one or more of {', '.join(PROJECTIONS)}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablation!r}; valid: {', '.join(ABLATIONS)}")
        if self.ks is not None and (not self.ks or any(k < 1 for k in self.ks)):
            raise ValueError(f"ks must be a non-empty list of positive neuron counts, got {list(self.ks)}")
        if self.random_draws < 1:
            raise ValueError(f"random_draws must be >= 1, got {self.random_draws}")


def check_prompt_counts(attribute_prompts: Sequence[str], neutral_prompts: Sequence[str]) -> None:
    if len(set(attribute_prompts)) < 2 or len(set(neutral_prompts)) < 2:
        raise ValueError(f"need at least two distinct attribute and two distinct neutral prompts for Welch's t; got "
                         f"{len(set(attribute_prompts))} and {len(set(neutral_prompts))}")
