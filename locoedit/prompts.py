"""Prompt handling shared by the edit methods: prompt lists, TIME's augmentation templates, lambda and option
checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

TIME_TEMPLATES = ("A photo of ", "An image of ", "A picture of ")  # TIME's augmentations, prefixed to the prompt


def as_list(prompts: str | Sequence[str], what: str) -> list[str]:
    """One prompt or a list of prompts, as a non-empty list; `what` names the argument in errors."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{what} must be a prompt or a non-empty list of prompts, got {prompts!r}")
    return prompts


def augmented(prompt: str, templates: Sequence[str]) -> list[str]:
    """The prompt, then each template prefixed to it (its leading "A" lowered, as TIME does)."""
    base = "a" + prompt[1:] if prompt[:1] == "A" else prompt
    return [prompt, *(template + base for template in templates)]


def augmented_pairs(sources: str | Sequence[str], destinations: str | Sequence[str], templates: Sequence[str],
                    names: tuple[str, str] = ("source", "destination")) -> tuple[list[str], list[str]]:
    """Sources and destinations paired by index, each with its templated variants (same order on both sides).
    `names` name the two sides in errors (UCE: concept, guide). An empty source is an error: it is the
    unconditional half of every guided generation."""
    sources, destinations = as_list(sources, names[0]), as_list(destinations, names[1])
    if any(not source.strip() for source in sources):
        raise ValueError(f"an empty {names[0]} prompt cannot be edited: it is the unconditional half of every guided "
                         f"generation, so the edit would change every image; got {sources}")
    if len(sources) != len(destinations):
        raise ValueError(f"need one {names[1]} per {names[0]}, got {len(sources)} {names[0]}(s) and "
                         f"{len(destinations)} {names[1]}(s)")
    return ([p for s in sources for p in augmented(s, templates)],
            [p for d in destinations for p in augmented(d, templates)])


def preserved_prompts(preserve: Sequence[str], edited: Sequence[str]) -> list[str]:
    """The prompts an edit keeps as they are (possibly none); a prompt both edited and preserved is an error."""
    preserve = as_list(preserve, "preserve") if preserve else []
    overlap = sorted(set(preserve) & set(edited))
    if overlap:
        raise ValueError(f"prompts {overlap} are both edited and preserved")
    return preserve


def check_lam(lam: float) -> None:
    if not 0 < lam < math.inf:
        raise ValueError(f"lambda must be a finite number > 0, got {lam!r}: it keeps the edited weights near the "
                         "originals where the keys do not reach")


def check_choice(name: str, value, valid: Sequence) -> None:
    """An option's value must be one of `valid`; the error names both."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")
