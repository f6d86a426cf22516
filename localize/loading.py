"""Build a `Model` from a `model/` config."""

from __future__ import annotations

from localize.config import ModelConfig
from localize.model import Model, load_model
from localize.random_models import random_model


def model_from_config(cfg: ModelConfig) -> Model:
    if cfg.name_or_path == "random":
        if cfg.family is None:
            raise ValueError("model.name_or_path=random needs model.family (sd1, sd2, sdxl, if, organism)")
        return random_model(cfg.family, cfg.size, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    return load_model(cfg.name_or_path, family=cfg.family, device=cfg.device, dtype=cfg.dtype)
