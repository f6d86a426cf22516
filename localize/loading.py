"""Build a `Model` from a `model/` config and a `ClipScorer` from a `scorer/` config."""

from __future__ import annotations

from localize.config import ModelConfig, ScorerConfig
from localize.gpus import resolve_device
from localize.model import Model, load_model, parse_dtype
from localize.random_models import random_model
from localize.scoring import ClipScorer


def model_from_config(cfg: ModelConfig) -> Model:
    """`device: cuda:free` is the GPU the running job claimed (`localize.gpus`)."""
    device = resolve_device(cfg.device)
    if cfg.name_or_path == "random":
        if cfg.family is None:
            raise ValueError("model.name_or_path=random needs model.family (sd1, sd2, sdxl, if, organism)")
        return random_model(cfg.family, cfg.size, device=device, dtype=cfg.dtype, seed=cfg.seed)
    return load_model(cfg.name_or_path, family=cfg.family, device=device, dtype=cfg.dtype)


def scorer_from_config(cfg: ScorerConfig, default_device=None) -> ClipScorer:
    """The scorer on `cfg.device`, else on `default_device` (the model's)."""
    return ClipScorer(cfg.model_name, cfg.pretrained, device=resolve_device(cfg.device) or default_device,
                      dtype=parse_dtype(cfg.dtype))
