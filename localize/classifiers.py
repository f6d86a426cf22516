"""Image classifiers for class-accuracy metrics (`localize evaluate classifier=module:function`).

`imagenette_resnet50`: UCE's erased-class accuracy. An ImageNet ResNet-50 (torchvision's IMAGENET1K_V2
weights, fetched by torchvision on first use) takes the top-1 of all 1000 classes; an image is named by its
ImageNette class when that top-1 is one of the 10, else `other`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IMAGENETTE = {0: "tench", 217: "English springer", 482: "cassette player", 491: "chain saw", 497: "church",
              566: "French horn", 569: "garbage truck", 571: "gas pump", 574: "golf ball", 701: "parachute"}
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.cache
def _resnet50(device: str) -> torch.nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    return resnet50(weights=ResNet50_Weights.IMAGENET1K_V2).eval().to(device)


def imagenet_top1(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Top-1 ImageNet class index per image (N x 3 x H x W in [0, 1], resized to 224 x 224, normalized)."""
    device = next(network.parameters()).device
    pixels = F.interpolate(images.float().to(device), size=(224, 224), mode="bilinear", antialias=True)
    mean, std = (torch.tensor(v, device=device)[:, None, None] for v in (_MEAN, _STD))
    pixels = (pixels - mean) / std
    with torch.no_grad():
        return network(pixels).argmax(-1).cpu()


def imagenette_names(classes: torch.Tensor) -> list[str]:
    return [IMAGENETTE.get(int(c), "other") for c in classes]


def imagenette_resnet50(images: torch.Tensor) -> list[str]:
    """The ImageNette class name (or `other`) of each image, by torchvision's ImageNet ResNet-50."""
    return imagenette_names(imagenet_top1(_resnet50(str(images.device)), images))
