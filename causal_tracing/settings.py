"""Causal tracing's units, settings and their checks, importable without torch: the command line checks a config
with them before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

from localize.checks import AUTO, check_batch_size, check_guidance, check_memory_budget, check_steps

UNET_KINDS = ("resnet", "self_attn", "cross_attn", "ff")
DIT_KINDS = ("image", "text")  # a DiT block's output streams (FLUX's single blocks: the joint sequence's slices)
DENOISER_KINDS = UNET_KINDS + DIT_KINDS
TEXT_KINDS = ("self_attn", "mlp")


def check_kinds(unet_kinds, text_kinds) -> None:
    """`unet_kinds`: denoiser state kinds (None: every kind the model's denoiser has, UNet or DiT)."""
    valid_denoiser = f"{', '.join(UNET_KINDS)} (UNets), {', '.join(DIT_KINDS)} (DiTs)"
    for given, valid, what, listed in ((unet_kinds, DENOISER_KINDS, "denoiser", valid_denoiser),
                                       (text_kinds, TEXT_KINDS, "text-encoder", ", ".join(TEXT_KINDS))):
        unknown = [kind for kind in given or () if kind not in valid]
        if unknown:
            raise ValueError(f"unknown {what} state kind(s) {unknown}; valid: {listed}")
    if unet_kinds is not None and not list(unet_kinds) and not list(text_kinds):
        raise ValueError("no state kind to trace: give at least one denoiser or text-encoder kind")


@dataclass(frozen=True)
class TraceSettings:
    """`step_range`: (start, stop) denoising-step indices where UNet states are restored (all steps if None).
    `min_drop`: units whose corruption lowers the clean score by less than this (CLIP points) get no indirect
    effect (its denominator would be noise)."""

    steps: int = 25
    guidance: float = 7.5
    noise_scale: float = 3.0
    noise_std: float | None = None
    step_range: tuple[int, int] | None = None
    batch_size: int | str = AUTO  # rows per batch, or AUTO: see `localize.memory`
    memory_budget: float | None = None  # GiB for batch_size=auto (None: the device's free memory)
    min_drop: float = 1.0

    def check(self) -> None:
        check_steps(self.steps)
        check_guidance(self.guidance)
        check_batch_size(self.batch_size, 2, "a clean row and a restored row")
        check_memory_budget(self.memory_budget)
        if self.step_range is not None:
            start, stop = self.step_range
            if not 0 <= start < stop <= self.steps:
                raise ValueError(f"step range {list(self.step_range)} outside the schedule of {self.steps} steps: "
                                 f"need 0 <= start < stop <= {self.steps}")


@dataclass(frozen=True)
class Unit:
    """One prompt x seed. `attribute`: the phrase of `prompt` that is corrupted; `text`: what images are scored
    against (CLIP score = 100 * max(cos, 0), see `localize.scoring`)."""

    prompt: str
    attribute: str
    text: str
    seed: int
