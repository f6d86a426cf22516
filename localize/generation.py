"""`generate`: the seeded, batched denoising loop, with patches active.

It follows the diffusers pipelines' own loops step for step (with no patch it reproduces the pipeline's
output for the same prompts and seeds), but owns the batch so each prompt row can carry different patches.
Seeds: row i's initial noise (and a stochastic scheduler's noise) comes from a CPU `torch.Generator` seeded
with `seeds[i]`, so a row's image depends only on its prompt, seed and patches, not on the rest of the batch
or on the device.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from localize.checks import AUTO, check_batch_size, check_generation
from localize.denoising import Denoising, native_size
from localize.engine import patching
from localize.memory import run_in_batches
from localize.model import Model
from localize.patches import Patch
from localize.sites import resolve_site
from localize.tokens import token_ids


def _repeat(conditioning, n: int):
    """A one-row conditioning (nested dicts of batch-first tensors) as n identical rows."""
    if isinstance(conditioning, dict):
        return {key: _repeat(value, n) for key, value in conditioning.items()}
    return conditioning.expand(n, *conditioning.shape[1:])


def _concat(first, second):
    """Concatenate two conditionings (nested dicts of batch-first tensors) along the batch."""
    if isinstance(first, dict):
        return {key: _concat(first[key], second[key]) for key in first}
    return torch.cat([first, second])


def image_size(model: Model, height: int | None, width: int | None) -> tuple[int, int]:
    """Pixel size: the family's native size (`native_size`) unless given."""
    native = native_size(model)
    return height or native[0], width or native[1]


@torch.no_grad()
def encode_patched(model: Model, prompts: Sequence[str], patches: Sequence[Patch] = (), height: int | None = None,
                   width: int | None = None) -> dict:
    """What `generate`'s UNet reads from the conditional half for `prompts` (the family's `encode`: e.g. SD-XL's
    penultimate states and pooled projection), with the text-encoder `patches` applied; patch rows are prompt
    rows. No denoising: a text-encoder pass only."""
    with patching(model, patches, rows=len(prompts)) as run:
        run.halves = ("cond",)
        conditioning = model.spec.encode(model.pipeline, list(prompts), image_size(model, height, width))
        run.check_ran(patches)
    return conditioning


@torch.no_grad()
def generate(
    model: Model,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 25,
    guidance: float = 7.5,
    patches: Sequence[Patch] = (),
    scheduler=None,
    height: int | None = None,
    width: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Images for `prompts[i]` with `seeds[i]`: a float tensor in [0, 1], N x C x H x W, on the model's device.

    `guidance` > 1 runs classifier-free guidance (the unconditional half uses the empty prompt, encoded once
    for all rows unless a patch reaches its text states). `scheduler` is any diffusers scheduler (its config
    is used; the model's by default). Patch rows are prompt rows.
    """
    prompts, seeds = list(prompts), list(seeds)
    if not prompts or len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt and at least one prompt; got {len(prompts)} prompts and "
                         f"{len(seeds)} seeds")
    check_generation(seeds, steps, guidance)
    for tokenizer in model.tokenizers:
        for prompt in prompts:
            token_ids(tokenizer, prompt)
    n = len(prompts)
    size = image_size(model, height, width)
    base = scheduler or model.scheduler
    scheduler = type(base).from_config(base.config)
    spec = model.spec
    cfg = guidance > 1.0 and not spec.guidance_distilled
    check_branches(model, patches, guidance)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    denoising = Denoising(model, size)
    denoising.set_timesteps(scheduler, steps)
    latents = denoising.initial(generators, scheduler)

    # the empty prompt is encoded once for every row unless a patch changes its text states
    per_row_uncond = any(resolve_site(model, patch.site).in_text_encoder and patch.branch in ("both", "uncond")
                         for patch in patches)
    uncond = spec.unconditional(model.pipeline, 1, size) if cfg and not per_row_uncond else None
    with patching(model, patches, rows=n, steps=len(scheduler.timesteps)) as run:
        run.halves = ("cond",)
        conditioning = spec.encode(model.pipeline, prompts, size)
        if cfg:
            run.halves = ("uncond",)
            uncond = _repeat(uncond, n) if uncond is not None else spec.unconditional(model.pipeline, n, size)
            conditioning = _concat(uncond, conditioning)
        run.halves = ("uncond", "cond") if cfg else ("cond",)

        step_kwargs = {"generator": generators} if "generator" in _step_parameters(scheduler) else {}
        channels = model.denoiser.config.in_channels if spec.denoiser == "unet" else None
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoising", disable=not progress, leave=False)):
            run.step = i
            model_input = torch.cat([latents] * 2) if cfg else latents
            prediction = denoising.predict(scheduler, model_input, t, conditioning, guidance)
            if cfg:
                uncond, cond = prediction.chunk(2)
                if channels is None:
                    prediction = uncond + guidance * (cond - uncond)
                else:
                    guided = uncond[:, :channels] + guidance * (cond[:, :channels] - uncond[:, :channels])
                    prediction = torch.cat([guided, cond[:, channels:]], dim=1)  # IF's learned variance: cond half
            if channels is not None and prediction.shape[1] > channels and scheduler.config.get(
                    "variance_type") not in ("learned", "learned_range"):
                prediction = prediction[:, :channels]
            latents = scheduler.step(prediction, t, latents, **step_kwargs, return_dict=False)[0]
        run.check_ran(patches)
    return decode(model, denoising.to_vae(latents))


def check_branches(model: Model, patches: Sequence[Patch], guidance: float) -> None:
    """A patch on the unconditional half when none runs is an error: a guidance-distilled family (FLUX.1) never
    runs one, the others only with guidance > 1."""
    for patch in patches:
        if patch.branch != "uncond":
            continue
        if model.spec.guidance_distilled:
            raise ValueError(f"patch on {patch.site!r} has branch='uncond', but {model.family} is guidance-"
                             "distilled: it reads the guidance scale as an input and runs no unconditional "
                             "half; use branch='cond' (or 'both', the same here)")
        if guidance <= 1.0:
            raise ValueError(f"patch on {patch.site!r} has branch='uncond', but guidance={guidance} <= 1 runs no "
                             "unconditional half, so it would change nothing; use guidance > 1 or branch='cond'")


def _step_parameters(scheduler) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


def decode(model: Model, latents: torch.Tensor) -> torch.Tensor:
    """Latents (or pixel-space samples) to images in [0, 1], as the pipelines' `output_type="pt"` does."""
    vae = model.vae
    if vae is None:
        images = latents
    else:
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        decode_dtype = torch.float32 if upcast else vae.dtype
        if upcast:
            vae.to(torch.float32)
        try:
            shift = vae.config.get("shift_factor") or 0.0  # FLUX's and SD3's autoencoders are shifted too
            images = vae.decode(latents.to(decode_dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_images(model: Model, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to what the denoiser works on, the inverse of `decode`: pixel-space samples in [-1, 1],
    or the VAE's latent mean times its scaling factor."""
    vae = model.vae
    if vae is None:
        return images.to(model.device, model.dtype) * 2 - 1
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)  # as `decode` does
    if upcast:
        vae.to(torch.float32)
    try:
        samples = images.to(model.device, vae.dtype) * 2 - 1
        latents = vae.encode(samples, return_dict=False)[0].mean
    finally:
        if upcast:
            vae.to(torch.float16)
    shift = vae.config.get("shift_factor") or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(model.dtype)


def generate_batches(model: Model, prompts: Sequence[str], seeds: Sequence[int], batch_size: int | str = AUTO,
                     steps: int = 25, guidance: float = 7.5, progress: bool = False, desc: str = "generating",
                     memory_budget: float | None = None) -> torch.Tensor:
    """`generate` in batches of at most `batch_size` rows, or "auto" (`localize.memory`: measured on the first
    batch with one step, within `memory_budget` GiB), halved after an out-of-memory error; with a progress bar
    over the rows. A row depends only on its prompt and seed, so the images equal one big batch's up to
    floating-point batch effects. N x C x H x W on the model's device."""
    check_batch_size(batch_size)
    prompts, seeds = list(prompts), list(seeds)
    images: list[torch.Tensor] = []
    with tqdm(total=len(prompts), desc=desc, unit="row", disable=not progress, leave=False) as bar:

        def step(size: int) -> int:  # the next batch of at most `size` rows
            start = sum(len(batch) for batch in images)
            images.append(generate(model, prompts[start:start + size], seeds[start:start + size], steps, guidance))
            bar.update(len(images[-1]))
            return len(images[-1])

        def probe(size: int) -> int:  # the next batch with one step, dropped
            start = sum(len(batch) for batch in images)
            return len(generate(model, prompts[start:start + size], seeds[start:start + size], 1, guidance))

        run_in_batches(step, lambda: len(prompts) - sum(len(batch) for batch in images), batch_size, model.device,
                       probe, memory_budget)
    return torch.cat(images)
