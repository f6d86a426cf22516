"""CLIP scores with open_clip, for real models (a hub model name and pretrained tag) and the organism.

CLIP score of an image and a text = 100 * max(cos(image features, text features), 0), the definition of
torchmetrics' `CLIPScore` (Hessel et al.'s CLIPScore with weight 100 instead of 2.5). Images are float
tensors in [0, 1], N x 3 x H x W, resized (bicubic, antialiased) to the model's input size and normalized
with its mean and std, as open_clip's own preprocessing does for PIL images.
"""

from __future__ import annotations

import contextlib
import logging

import open_clip
import torch
import torch.nn.functional as F

ORGANISM = "organism"  # `pretrained` tag of the organism's scorer: the weights shipped in the package


def image_features_input(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to the tensor the model's image tower takes (resize and normalize)."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    if tuple(images.shape[-2:]) != tuple(size):  # in float32: antialiased bicubic has no half kernel on CPU
        images = F.interpolate(images.float(), size=tuple(size), mode="bicubic", antialias=True,
                               align_corners=False).to(images.dtype)
    mean = torch.tensor(cfg["mean"], device=images.device, dtype=images.dtype)[:, None, None]
    std = torch.tensor(cfg["std"], device=images.device, dtype=images.dtype)[:, None, None]
    return (images - mean) / std


def trained_with_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Whether open_clip's pretrained tag was trained with QuickGELU (OpenAI's CLIPs): open_clip 3 builds the
    plain `ViT-L-14` with GELU and only warns, so the scorer asks for QuickGELU itself."""
    return bool(pretrained and open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_warning():
    """Silence open_clip's "Model initialized randomly" warning (root logger) for a model loaded right after."""
    quiet = _RandomInitFilter()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


class ClipScorer:
    """An open_clip model and tokenizer. `model_name`/`pretrained` as in `open_clip.create_model` (with the
    activation the weights were trained with); the organism's scorer is `model_name="organism-clip",
    pretrained="organism"`."""

    def __init__(self, model_name: str, pretrained: str | None, device=None, dtype: torch.dtype | None = None):
        if pretrained == ORGANISM:  # the package's own weights, not an open_clip pretrained tag
            from localize.organism import weights

            weights.register_scorer_config()
            with _without_random_init_warning():  # the weights are loaded right after
                self.model = open_clip.create_model(model_name)
            weights.load_scorer_into(self.model)
            self.model = self.model.to(device).eval()
        else:
            quick_gelu = trained_with_quick_gelu(model_name, pretrained)
            self.model = open_clip.create_model(model_name, pretrained=pretrained, device=device,
                                                force_quick_gelu=quick_gelu).eval()
        if dtype is not None:
            self.model.to(dtype)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_name, self.pretrained = model_name, pretrained

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm features, N x D."""
        pixels = image_features_input(self.model, images.to(self.device, self.dtype))
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm features, N x D."""
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float(), dim=-1)

    def score(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """CLIP score of image i with text i (one text per image), N."""
        if len(texts) != len(images):
            raise ValueError(f"need one text per image; got {len(texts)} texts for {len(images)} images")
        cos = (self.image_features(images) * self.text_features(texts)).sum(-1)
        return 100 * cos.clamp(min=0)

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity of every image with every text, N x T (zero-shot classification: argmax)."""
        return self.image_features(images) @ self.text_features(texts).T
