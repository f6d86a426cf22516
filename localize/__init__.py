"""localize: find where knowledge lives inside text-to-image diffusion models, and edit it."""

from localize.engine import PatchRun, patching
from localize.generation import generate
from localize.model import CrossAttentionLayer, Model, TextEncoderLayer, UNetComponent, load_model
from localize.patches import Patch
from localize.random_models import random_model

__all__ = [
    "CrossAttentionLayer",
    "Model",
    "Patch",
    "PatchRun",
    "TextEncoderLayer",
    "UNetComponent",
    "generate",
    "load_model",
    "patching",
    "random_model",
]
