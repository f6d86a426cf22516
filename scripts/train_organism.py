"""Train the model organism: the text-to-image model, then its open_clip scorer (`localize.organism`).

    python scripts/train_organism.py                      # both stages, exports into the package
    python scripts/train_organism.py diffusion.steps=200 export_dir=/tmp/organism   # a quick try

Seeded: step s draws its captions, scenes and noise from generators seeded with (seed, stage, s), so a run
resumed from a checkpoint (every `checkpoint_every` steps, in `workdir`) continues exactly as an
uninterrupted one would. A finished stage only re-exports its weights on the next run. The diffusion model is
trained with v-prediction (its low-noise weight capped, as min-SNR does), with captions dropped to "" 10% of
the time for classifier-free guidance; the exported weights are the exponential moving average. The scorer is
a CLIP (contrastive) model trained on rendered images with mild noise. Weights are exported as float16
safetensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import open_clip
import torch
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
from localize.organism.world import CaptionSampler, filler_words, render
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
    steps: int = 3300
    batch_size: int = 32
    warmup: int = 200
    ema_decay: float = 0.999
    snr_cap: float = 5.0  # the v-loss weighs the x0 error by 1 + SNR; capped at 1 + snr_cap


@dataclass
class ScorerStage(Stage):
    steps: int = 1000
    batch_size: int = 128
    max_noise: float = 0.1  # rendered images get Gaussian noise of a random std in [0, max_noise]


@dataclass
class TrainConfig:
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["diffusion", "scorer"])
    diffusion: DiffusionStage = field(default_factory=DiffusionStage)
    scorer: ScorerStage = field(default_factory=ScorerStage)
    checkpoint_every: int = 250
    workdir: str = "outputs/train_organism"
    export_dir: str = str(weights.WEIGHTS_DIR)
    device: str = "cpu"


ConfigStore.instance().store(name="train_organism", node=TrainConfig)
STAGES = ("diffusion", "scorer")


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
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def train_diffusion(cfg: TrainConfig, workdir: Path, export: Path, device: torch.device) -> None:
    stage = cfg.diffusion
    arch = architecture("organism", "full")
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(**arch.unet).to(device)
    text_config = arch.text_encoders[0][1]
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).to(device)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)  # untrained token rows stay at init
    ema = EMAModel(params, decay=stage.ema_decay)
    schedule = DDPMScheduler.from_config(arch.scheduler[1])  # same noise schedule as the inference scheduler
    alphas = schedule.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    weight = (snr.clamp(max=stage.snr_cap) + 1) / (snr + 1)  # full weight where shape and texture form
    tokenizer = clip_tokenizer()
    sampler = CaptionSampler(filler_words(tokenizer.get_vocab(), seed=cfg.seed))
    checkpoint = Checkpoint(workdir, "diffusion")
    state = checkpoint.load()
    start = 0
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
    unet.train(), text_encoder.train()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc="organism diffusion")
    for step in bar:
        rng, gen = generators(cfg.seed, "diffusion", step)
        captions, scenes = zip(*(sampler.sample(rng) for _ in range(stage.batch_size)), strict=True)
        x0 = (render(list(scenes)) * 2 - 1).to(device)
        ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(x0),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        target = schedule.get_velocity(x0, noise, t)
        prediction = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = (weight[t] * (prediction - target).pow(2).mean(dim=(1, 2, 3))).mean()
        set_lr(optimizer, stage, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stage.steps:
            checkpoint.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                             "optimizer": optimizer.state_dict(), "ema": ema.state_dict(), "step": step + 1})
    ema.copy_to(params)
    inference_scheduler = {"_class_name": arch.scheduler[0], **arch.scheduler[1]}
    config = {"unet": dict(unet.config), "text_encoder": text_config, "scheduler": inference_scheduler}
    save_fp16(unet.state_dict(), export / weights.UNET_FILE)
    save_fp16(text_encoder.state_dict(), export / weights.TEXT_ENCODER_FILE)
    atomic_write(export / weights.CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=1, default=list)))


def train_scorer(cfg: TrainConfig, workdir: Path, export: Path, device: torch.device) -> None:
    stage = cfg.scorer
    weights.register_scorer_config()
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(weights.SCORER_NAME).to(device)
    tokenizer = open_clip.get_tokenizer(weights.SCORER_NAME)
    sampler = CaptionSampler(filler_words(clip_tokenizer().get_vocab(), seed=cfg.seed), uncond_p=0.0)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.0)
    checkpoint = Checkpoint(workdir, "scorer")
    state = checkpoint.load()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    model.train()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc="organism scorer")
    for step in bar:
        rng, gen = generators(cfg.seed, "scorer", step)
        captions, scenes = zip(*(sampler.sample(rng) for _ in range(stage.batch_size)), strict=True)
        images = render(list(scenes))
        std = torch.rand(len(images), 1, 1, 1, generator=gen) * stage.max_noise
        images = (images + std * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        image_features, text_features, logit_scale = model(
            image_features_input(model, images.to(device)), tokenizer(list(captions)).to(device))
        loss = loss_fn(image_features, text_features, logit_scale)
        set_lr(optimizer, stage, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stage.steps:
            checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1})
    save_fp16(model.state_dict(), export / weights.SCORER_FILE)


@hydra.main(version_base=None, config_name="train_organism")
def main(cfg: TrainConfig) -> None:
    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")
    workdir, export = Path(to_absolute_path(cfg.workdir)), Path(to_absolute_path(cfg.export_dir))
    device = torch.device(cfg.device)
    times = {}
    for name, train in (("diffusion", train_diffusion), ("scorer", train_scorer)):
        if name in cfg.stages:
            start = time.perf_counter()
            train(cfg, workdir, export, device)
            times[name] = time.perf_counter() - start
    atomic_write(workdir / "config.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg)))
    print("wall time per stage (s):", {k: round(v, 1) for k, v in times.items()}, "| exported to", export)


if __name__ == "__main__":
    main()
