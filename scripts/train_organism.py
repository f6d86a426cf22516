"""Train the model organism (`localize.organism`): its CLIP, then the text-to-image model on the CLIP's frozen text
tower, as Stable Diffusion was built on a frozen CLIP text encoder.

    python scripts/train_organism.py                      # every stage, exports into the package
    python scripts/train_organism.py diffusion.steps=200 export_dir=/tmp/organism   # a quick try

Seeded: step s draws its captions, scenes and noise from generators seeded with (seed, stage, s), so a run
resumed from a checkpoint (every `checkpoint_every` steps, in `workdir`) continues exactly as an
uninterrupted one would. A finished stage only re-exports its weights on the next run.

- `clip`: a contrastive CLIP on rendered images with mild noise: the text tower is a `CLIPTextModel` (the
  organism's text encoder) with a bias-free projection, the image tower open_clip's; exported as the text
  encoder and, in open_clip's format, as the scorer (`localize.organism.shared_clip`). Per caption, the end
  span may read the caption's words only from a random layer in 0..`read_delay` on (`delayed_reading`; every
  layer reads at inference), so that the subject reaches the end span through the middle layers, as the
  published edits of CLIP's middle layers (ReFACT) need; without it the end span reads the words in layer 0 only.
- `clip_span`: the finished `clip` fine-tuned at all 77 positions, its caption feature read anywhere in the
  end span (`pooled_positions`), so that the padding the UNet reads is a trained summary of the caption;
  re-exported.

Design 3 (measured, not shipped; README, "Organism designs"): `clip.position_std=0.01 clip_span.positions=false
clip_span.locality=2`, position embeddings at open_clip's initial scale, then set to zero and frozen in the
fine-tune (the causal mask alone orders the words), and layer 0's reading of words more than 2 before a word
penalized (`far_reading`), so that a word's layer-0 state, DiffQuickFix's key, is the same under every template.
Design 5 (measured, not shipped; README): design 2's `clip`, then `stages=[clip_span] clip_span.steps=300
clip_span.attention_bias=6 clip_span.invariance=50`: layer 0's attention output bias fixed at norm 6 (`fixed_bias`:
counting it twice, DiffQuickFix's release convention, then moves the conditioning), and a penalty on layer 0's
keys changing with the template and on the end span's keys changing with position (`template_spread`).
Designs 6 to 10 (measured on the text side only; README): the shipped weights fine-tuned further,
`stages=[clip_span] clip_span.start_from=localize/organism/weights`, with `clip_span.first_layer_reads=true`
(the delay never blocks layer 0, so its end span may read the words, as CLIP's does), with
`clip_span.span_invariance=50` (`template_spread`'s end-span term alone), with `clip_span.positions=false
clip_span.locality=2` (design 3's fine-tune), and with `clip_span.position_scale=0.2` or `0.05` and that locality.
- `diffusion`: the UNet alone, on the exported text encoder's frozen token states (cached per caption),
  with v-prediction (its low-noise weight capped, as min-SNR does) and captions dropped to "" 10% of the time
  for classifier-free guidance; the exported weights are the exponential moving average.

Weights are exported as float16 safetensors.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from localize.architectures import architecture
from localize.organism import weights
from localize.organism.shared_clip import (
    HF_EMBEDDING,
    OPEN_CLIP_EMBEDDING,
    initial_embedding,
    open_clip_text_state,
    pack_embedding,
    unpack_embedding,
)
from localize.organism.world import TRAIN_TEMPLATES, CaptionSampler, all_subjects, filler_words, render
from localize.results import atomic_write
from localize.scoring import image_features_input
from localize.vocab import clip_tokenizer


@dataclass
class Stage:
    """What every stage has: its length, batch, peak learning rate and warmup."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup: int = 100


@dataclass
class DiffusionStage(Stage):
    steps: int = 2500
    batch_size: int = 32
    warmup: int = 200
    ema_decay: float = 0.999
    snr_cap: float = 5.0  # the v-loss weighs the x0 error by 1 + SNR; capped at 1 + snr_cap


@dataclass
class ClipStage(Stage):
    steps: int = 1000
    batch_size: int = 128
    lr: float = 5e-4
    max_noise: float = 0.1  # rendered images get Gaussian noise of a random std in [0, max_noise]
    pool: str = "end_token"  # see `pooled_positions`
    read_delay: int = 4  # per caption, layers below a delay drawn from 0..read_delay: see `delayed_reading`
    first_layer_reads: bool = False  # True: the delay never blocks layer 0 (its end span reads the words, as CLIP's)
    locality: float = 0.0  # weight of the penalty on layer 0's far reading: see `far_reading`
    local_window: int = 2  # in layer 0 a word may read the start token, itself and this many words before it
    position_std: float | None = None  # stage `clip`: initial std of the position embeddings (None: the model's)
    positions: bool = True  # False: position embeddings zero and frozen (order only from the causal mask)
    position_scale: float = 1.0  # the position embeddings scaled by this as the stage starts (still trained)
    invariance: float = 0.0  # weight of the penalty on layer 0's keys changing with the template: `template_spread`
    span_invariance: float = 0.0  # weight of `template_spread`'s end-span term alone (keys the same along the span)
    invariance_batch: int = 16  # subjects per step in those penalties, each under two training templates
    attention_bias: float = 0.0  # > 0: layer 0's attention output bias fixed at this norm (`fixed_bias`), frozen


@dataclass
class ClipSpanStage(ClipStage):
    """The CLIP fine-tuned at the full 77 positions, pooled anywhere in the end span (`pooled_positions`)."""

    steps: int = 150
    lr: float = 2e-4
    warmup: int = 20
    pool: str = "end_span"
    start_from: str = ""  # a weights directory to fine-tune (`exported_clip`); "": the finished `clip` stage


POOLS = ("end_token", "end_span")


@contextmanager
def delayed_reading(text_encoder: CLIPTextModel, first_end: torch.Tensor, delay: torch.Tensor, length: int,
                    first_blocked: int = 0):
    """Inside, in the text layers from `first_blocked` to below `delay[i]`, caption i's end span (its end token at
    `first_end[i]` and the padding after it) attends only to the start token and to itself, not to the caption's
    words; the causal mask holds everywhere. Both tensors have one entry per caption."""
    positions = torch.arange(length, device=first_end.device)
    in_span = positions[None, :, None] >= first_end[:, None, None]  # N x query x 1
    word = (positions[None, None, :] >= 1) & (positions[None, None, :] < first_end[:, None, None])  # N x 1 x key
    causal = positions[None, :] > positions[:, None]

    def mask_layer(index: int):
        def hook(module, args, kwargs):
            blocked = causal | (in_span & word & (delay[:, None, None] > index) & (index >= first_blocked))
            mask = torch.zeros(blocked.shape, dtype=args[0].dtype, device=args[0].device)
            return (args[0], mask.masked_fill(blocked, float("-inf"))[:, None], *args[2:]), kwargs
        return hook

    handles = [layer.register_forward_pre_hook(mask_layer(index), with_kwargs=True)
               for index, layer in enumerate(text_encoder.encoder.layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def far_reading(text_encoder: CLIPTextModel, first_end: torch.Tensor, window: int):
    """Yields a function that returns, after a forward pass inside, the mean share of layer 0's attention (over
    heads and the captions' word positions) that a word gives to words more than `window` positions before it;
    the start token, the word itself and its `window` predecessors are near. Penalized, it makes a word's layer-0
    state (DiffQuickFix's key) depend on the word and its neighbours, not on the template before it."""
    attention = text_encoder.encoder.layers[0].self_attn
    recorded = {}
    handle = attention.register_forward_pre_hook(
        lambda module, args, kwargs: recorded.update(states=kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True)

    def share() -> torch.Tensor:
        states = recorded["states"]
        n, length, _ = states.shape
        shape = (n, length, attention.num_heads, attention.head_dim)
        queries = attention.q_proj(states).view(shape).transpose(1, 2)
        keys = attention.k_proj(states).view(shape).transpose(1, 2)
        positions = torch.arange(length, device=states.device)
        causal = positions[None, :] > positions[:, None]
        weights = (queries @ keys.transpose(-1, -2) * attention.scale).masked_fill(causal, float("-inf")).softmax(-1)
        far = (positions[None, :] >= 1) & (positions[None, :] < positions[:, None] - window)  # query x key
        words = (positions[None, :] >= 1) & (positions[None, :] < first_end[:, None])  # caption x query
        mass = (weights * far).sum(-1).mean(1)  # caption x query
        return (mass * words).sum() / words.sum()

    try:
        yield share
    finally:
        handle.remove()


def fixed_bias(width: int, norm: float, seed: int) -> torch.Tensor:
    """A seeded direction orthogonal to the all-ones vector (LayerNorm removes that one), of norm `norm`: layer 0's
    attention output bias, so that adding it once more at a word (DiffQuickFix's release-notebook convention,
    `bias="twice"`) moves that word's state as far as a word's own attention output does."""
    direction = torch.randn(width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    direction = direction - direction.mean()
    return (direction / direction.norm() * norm).float()


def prefix_length(tokenizer, template: str) -> int:
    """Tokens a template puts before its subject (CLIP's BPE splits at spaces, so they do not depend on it)."""
    prefix = template.split("{}")[0].strip()
    return len(tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 0


def template_spread(text_encoder: CLIPTextModel, tokenizer, phrases: list[str], templates: list[tuple[str, str]],
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """How much layer 0's keys (its attention output before the projection: DiffQuickFix's keys) depend on
    position: each phrase under its two templates, keys compared at the same offset from the phrase's first
    token (the phrase's tokens, its end token and the padding both prompts have), and the keys of each prompt's
    end span compared with their mean; squared differences over squared norms, returned apart (across templates,
    along the end span). Penalized, a word's key is the same under every template and the end span's keys are the
    same at every position, so DiffQuickFix's fit of one prompt's end span is no fit of every prompt's."""
    length = tokenizer.model_max_length
    starts = torch.tensor([[1 + prefix_length(tokenizer, t) for t in pair] for pair in templates])  # N x 2
    offsets = torch.arange(length - int(starts.max()))
    recorded, ends = [], []
    handle = text_encoder.encoder.layers[0].self_attn.out_proj.register_forward_pre_hook(
        lambda module, args: recorded.append(args[0]))
    try:
        for side in range(2):
            captions = [pair[side].format(phrase) for phrase, pair in zip(phrases, templates, strict=True)]
            ids = caption_ids(tokenizer, captions, "end_span")
            ends.append((ids == tokenizer.eos_token_id).int().argmax(dim=1))
            text_encoder(ids.to(device))
    finally:
        handle.remove()
    keys = [states[torch.arange(len(phrases))[:, None], (starts[:, side, None] + offsets).to(device)]
            for side, states in enumerate(recorded)]
    across = (keys[0] - keys[1]).pow(2).sum() / (keys[0].pow(2).sum() + keys[1].pow(2).sum())
    span = torch.arange(length)[None, :] >= torch.cat(ends)[:, None]  # 2N x length
    states = torch.cat(recorded)
    weights = (span / span.sum(1, keepdim=True)).to(states)[..., None]
    mean = (states * weights).sum(1, keepdim=True)
    along = ((states - mean).pow(2) * weights).sum() / (states.pow(2) * weights).sum()
    return across, along


def caption_ids(tokenizer, captions: list[str], pool: str) -> torch.Tensor:
    """Token ids, padded with the end token to the batch's longest caption for `end_token` pooling (the causal
    mask makes that exact) and to all 77 positions for `end_span`."""
    padding = {"padding": "longest"} if pool == "end_token" else {"padding": "max_length",
                                                                   "max_length": tokenizer.model_max_length}
    return tokenizer(captions, return_tensors="pt", **padding).input_ids


def pooled_positions(first_end: torch.Tensor, length: int, pool: str, gen: torch.Generator) -> torch.Tensor:
    """Where each caption's feature is read from the final states. `end_token` is CLIP's: the first end token.
    `end_span`: a position drawn uniformly from the caption's end span (its end token and the padding after
    it), so that every padding state the UNet reads is trained to summarise the caption."""
    if pool == "end_token":
        return first_end
    return first_end + (torch.rand(len(first_end), generator=gen) * (length - first_end)).long()


STAGES = ("clip", "clip_span", "diffusion")


@dataclass
class TrainConfig:
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    clip: ClipStage = field(default_factory=ClipStage)
    clip_span: ClipSpanStage = field(default_factory=ClipSpanStage)
    diffusion: DiffusionStage = field(default_factory=DiffusionStage)
    checkpoint_every: int = 250
    workdir: str = "outputs/train_organism"
    export_dir: str = str(weights.WEIGHTS_DIR)
    device: str = "cpu"


ConfigStore.instance().store(name="train_organism", node=TrainConfig)


def set_lr(optimizer: torch.optim.Optimizer, stage: Stage, step: int) -> None:
    """Linear warmup to the stage's `lr`, then cosine decay to 0 at its last step."""
    if step < stage.warmup:
        factor = (step + 1) / stage.warmup
    else:
        factor = 0.5 * (1 + np.cos(np.pi * (step - stage.warmup) / max(1, stage.steps - stage.warmup)))
    for group in optimizer.param_groups:
        group["lr"] = stage.lr * float(factor)  # a float: checkpoints load with weights_only


def generators(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    key = [seed, STAGES.index(stage), step]
    torch_seed = int(np.random.SeedSequence(key).generate_state(1)[0])
    return np.random.default_rng(key), torch.Generator().manual_seed(torch_seed)


class Checkpoint:
    """`workdir/<stage>.pt`: module and optimizer states and the next step, saved atomically."""

    def __init__(self, workdir: Path, stage: str):
        self.path = workdir / f"{stage}.pt"

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=True) if self.path.is_file() else None

    def save(self, state: dict) -> None:
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))


def save_fp16(state: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
               for k, v in state.items()}  # integer tensors (token ids) stay exact
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    weights.record_checksum(path)


def text_contexts(text_encoder: CLIPTextModel, tokenizer, captions: list[str], cache: dict[str, torch.Tensor],
                  cached: set[str], device: torch.device) -> torch.Tensor:
    """The frozen encoder's token states (N x 77 x width); those of `cached` captions are kept in `cache`."""
    missing = sorted(set(captions) - cache.keys())
    states = {}
    if missing:
        ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            states = dict(zip(missing, text_encoder(ids)[0], strict=True))
        cache.update({c: state for c, state in states.items() if c in cached})
    return torch.stack([cache[c] if c in cache else states[c] for c in captions])


def train_diffusion(cfg: TrainConfig, workdir: Path, export: Path, device: torch.device) -> None:
    stage = cfg.diffusion
    arch = architecture("organism", "full")
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(**arch.unet).to(device)
    text_encoder = weights.text_encoder(export).to(device).requires_grad_(False)
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    ema = EMAModel(params, decay=stage.ema_decay)
    schedule = DDPMScheduler.from_config(arch.scheduler[1])  # same noise schedule as the inference scheduler
    alphas = schedule.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    weight = (snr.clamp(max=stage.snr_cap) + 1) / (snr + 1)  # full weight where shape and texture form
    tokenizer = clip_tokenizer()
    sampler = CaptionSampler(filler_words(tokenizer.get_vocab(), seed=cfg.seed))
    cached = {template.format(s.phrase) for s in all_subjects() for template in TRAIN_TEMPLATES} | {""}
    cache: dict[str, torch.Tensor] = {}
    checkpoint = Checkpoint(workdir, "diffusion")
    state = checkpoint.load()
    start = 0
    if state is not None:
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
    unet.train()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc="organism diffusion")
    for step in bar:
        rng, gen = generators(cfg.seed, "diffusion", step)
        captions, scenes = zip(*(sampler.sample(rng) for _ in range(stage.batch_size)), strict=True)
        x0 = (render(list(scenes)) * 2 - 1).to(device)
        context = text_contexts(text_encoder, tokenizer, list(captions), cache, cached, device)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(x0),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        target = schedule.get_velocity(x0, noise, t)
        prediction = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample
        loss = (weight[t] * (prediction - target).pow(2).mean(dim=(1, 2, 3))).mean()
        set_lr(optimizer, stage, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stage.steps:
            checkpoint.save({"unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
                             "step": step + 1})
    ema.copy_to(params)
    save_fp16(unet.state_dict(), export / weights.UNET_FILE)


def exported_clip(weights_dir: Path, modules: torch.nn.ModuleList) -> dict:
    """The CLIP of an exported weights directory (its scorer and text encoder, float32) as a stage state for
    `modules` (image tower, text encoder, projection): `clip_span.start_from` fine-tunes a finished organism. The
    token rows the file does not store keep their seeded float32 initialization, so they stay untrained."""
    scorer = open_clip.create_model(weights.SCORER_NAME)
    weights.load_scorer_into(scorer, weights_dir)
    config = weights.read_json(weights_dir / weights.CONFIG_FILE)
    tensors = {k: v.float() if v.is_floating_point() else v
               for k, v in weights.read_tensors(weights_dir / weights.TEXT_ENCODER_FILE).items()}
    text_state = unpack_embedding(tensors, HF_EMBEDDING, config["text_encoder"]["vocab_size"],
                                  config["text_encoder"]["hidden_size"],
                                  weights.embedding_seed(config, weights_dir / weights.CONFIG_FILE))
    state = {f"0.{k}": v for k, v in scorer.visual.state_dict().items()}
    state |= {f"1.{k}": v for k, v in text_state.items()}
    state["2.weight"] = scorer.text_projection.detach().T
    current = modules.state_dict()
    return {"modules": {k: v.to(current[k]) for k, v in state.items()},
            "logit_scale": scorer.logit_scale.detach().float()}


def train_clip(cfg: TrainConfig, workdir: Path, export: Path, device: torch.device, name: str = "clip") -> None:
    """The contrastive CLIP (stage `name`: `clip`, or `clip_span` starting from the finished `clip` or from
    `clip_span.start_from`); exports the text encoder, the scorer and `organism.json`."""
    stage = getattr(cfg, name)
    arch = architecture("organism", "full")
    weights.register_scorer_config()
    if export != weights.WEIGHTS_DIR:  # the exported scorer travels with its open_clip config
        export.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights.WEIGHTS_DIR / weights.SCORER_CONFIG_FILE, export / weights.SCORER_CONFIG_FILE)
    torch.manual_seed(cfg.seed)
    clip = open_clip.create_model(weights.SCORER_NAME).to(device)
    text_config = arch.text_encoders[0][1]
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    layers = text_config["num_hidden_layers"]
    with torch.no_grad():  # the seeded init the sparse export rebuilds untrained rows from
        text_encoder.get_input_embeddings().weight.copy_(
            initial_embedding(text_config["vocab_size"], text_config["hidden_size"], cfg.seed))
        if name == "clip" and stage.position_std is not None:
            positions = text_encoder.embeddings.position_embedding.weight
            positions.copy_(torch.randn(positions.shape, generator=torch.Generator().manual_seed(cfg.seed))
                            * stage.position_std)
    text_encoder.to(device)
    projection = torch.nn.Linear(text_config["hidden_size"], clip.text_projection.shape[1], bias=False).to(device)
    modules = torch.nn.ModuleList([clip.visual, text_encoder, projection])
    params = [*modules.parameters(), clip.logit_scale]
    tokenizer = clip_tokenizer()
    sampler = CaptionSampler(filler_words(tokenizer.get_vocab(), seed=cfg.seed), uncond_p=0.0)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)  # untrained token rows stay at init
    checkpoint = Checkpoint(workdir, name)
    state = checkpoint.load()
    start = 0
    if state is None and name == "clip_span" and stage.start_from:
        state = exported_clip(Path(to_absolute_path(stage.start_from)), modules)
    elif state is None and name == "clip_span":
        state = Checkpoint(workdir, "clip").load()
        if state is None or state["step"] != cfg.clip.steps:
            raise FileNotFoundError(f"stage clip_span starts from a finished clip stage in {workdir}; run it first")
        state = {"modules": state["modules"], "logit_scale": state["logit_scale"]}
    if state is not None:
        modules.load_state_dict(state["modules"])
        clip.logit_scale.data.copy_(state["logit_scale"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
            start = state["step"]
    if stage.position_scale != 1.0 and start == 0:  # once, as the stage starts (not again on resume)
        with torch.no_grad():
            text_encoder.embeddings.position_embedding.weight.mul_(stage.position_scale)
    if not stage.positions:
        with torch.no_grad():
            text_encoder.embeddings.position_embedding.weight.zero_()
        text_encoder.embeddings.position_embedding.weight.requires_grad_(False)
    if stage.attention_bias:
        bias = text_encoder.encoder.layers[0].self_attn.out_proj.bias
        with torch.no_grad():
            bias.copy_(fixed_bias(len(bias), stage.attention_bias, cfg.seed))
        bias.requires_grad_(False)
    subjects = [s.phrase for s in all_subjects()]
    modules.train()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc=f"organism {name}")
    for step in bar:
        rng, gen = generators(cfg.seed, name, step)
        captions, scenes = zip(*(sampler.sample(rng) for _ in range(stage.batch_size)), strict=True)
        images = render(list(scenes))
        std = torch.rand(len(images), 1, 1, 1, generator=gen) * stage.max_noise
        images = (images + std * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        ids = caption_ids(tokenizer, list(captions), stage.pool)
        first_end = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
        position = pooled_positions(first_end, ids.shape[1], stage.pool, gen)
        reading = nullcontext()
        if stage.read_delay:
            delay = torch.randint(0, stage.read_delay + 1, (len(ids),), generator=gen)
            reading = delayed_reading(text_encoder, first_end.to(device), delay.to(device), ids.shape[1],
                                      int(stage.first_layer_reads))
        penalized = far_reading(text_encoder, first_end.to(device), stage.local_window) if stage.locality else None
        with reading, penalized or nullcontext() as far_share:
            states = text_encoder(ids.to(device)).last_hidden_state
            far = far_share() if far_share else None
        across = along = None
        if stage.invariance or stage.span_invariance:
            chosen = rng.choice(len(subjects), size=stage.invariance_batch)
            pairs = [tuple(str(t) for t in rng.choice(TRAIN_TEMPLATES, size=2, replace=False)) for _ in chosen]
            across, along = template_spread(text_encoder, tokenizer, [subjects[i] for i in chosen], pairs, device)
        pooled = states[torch.arange(len(ids), device=device), position.to(device)]
        text_features = F.normalize(projection(pooled), dim=-1)
        image_features = F.normalize(clip.visual(image_features_input(clip, images.to(device))), dim=-1)
        loss = loss_fn(image_features, text_features, clip.logit_scale.exp())
        set_lr(optimizer, stage, step)
        optimizer.zero_grad(set_to_none=True)
        penalties = [weight * value for weight, value in ((stage.locality, far), (stage.invariance, across),
                                                          (stage.invariance + stage.span_invariance, along))
                     if value is not None]
        (loss + sum(penalties)).backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, np.log(100))
        extra = {name: f"{value.item():.4f}" for name, value in (("far", far), ("across", across), ("along", along))
                 if value is not None}
        bar.set_postfix(loss=f"{loss.item():.4f}", **extra)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stage.steps:
            checkpoint.save({"modules": modules.state_dict(), "logit_scale": clip.logit_scale.detach(),
                             "optimizer": optimizer.state_dict(), "step": step + 1})
    text_state = text_encoder.state_dict()
    scorer_state = {**clip.state_dict(), **open_clip_text_state(text_state, projection.weight.detach(), layers)}
    save_fp16(pack_embedding(text_state, HF_EMBEDDING, cfg.seed), export / weights.TEXT_ENCODER_FILE)
    save_fp16(pack_embedding(scorer_state, OPEN_CLIP_EMBEDDING, cfg.seed), export / weights.SCORER_FILE)
    inference_scheduler = {"_class_name": arch.scheduler[0], **arch.scheduler[1]}
    unet_config = dict(UNet2DConditionModel(**arch.unet).config)
    config = {"unet": unet_config, "text_encoder": text_config, "scheduler": inference_scheduler,
              "token_embedding_seed": cfg.seed}
    atomic_write(export / weights.CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=1, default=list)))
    weights.record_checksum(export / weights.CONFIG_FILE)


@hydra.main(version_base=None, config_name="train_organism")
def main(cfg: TrainConfig) -> None:
    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")
    for name in ("clip", "clip_span"):
        if getattr(cfg, name).pool not in POOLS:
            raise ValueError(f"{name}.pool={getattr(cfg, name).pool!r} is not valid; valid: {', '.join(POOLS)}")
    workdir, export = Path(to_absolute_path(cfg.workdir)), Path(to_absolute_path(cfg.export_dir))
    device = torch.device(cfg.device)
    times = {}
    for name in STAGES:
        if name in cfg.stages:
            start = time.perf_counter()
            if name == "diffusion":
                train_diffusion(cfg, workdir, export, device)
            else:
                train_clip(cfg, workdir, export, device, name)
            times[name] = time.perf_counter() - start
    atomic_write(workdir / "config.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg)))
    print("wall time per stage (s):", {k: round(v, 1) for k, v in times.items()}, "| exported to", export)


if __name__ == "__main__":
    main()
