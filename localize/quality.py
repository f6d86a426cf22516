"""Quality kept by an edit: the same prompts and seeds before and after it, compared image by image and as sets.

Definitions (torchmetrics; images N x 3 x H x W in [0, 1]):
- `ssim`: structural similarity of each after-image with its before-image (Gaussian window 11, sigma 1.5, data
  range 1); 1 is identical. `psnr`: 10 log10(1 / MSE) in dB per pair, at most `PSNR_CAP` (identical images
  would be infinite, and so would every mean they enter).
- `lpips`: the LPIPS distance (Zhang et al. 2018) of each pair with the AlexNet backbone, the paper's default;
  0 is identical. The linear heads ship in torchmetrics; the backbone is torchvision's ImageNet AlexNet, read
  from the torch hub cache (`LPIPS_WEIGHTS`), never downloaded here.
- `fid`: the Frechet distance between the Inception-v3 pool features (2048-d, torch-fidelity's port of the TF
  network the FID paper used) of the before set and the after set: how far the edit moved the model's whole
  output distribution. Its weights come from the torch hub cache (`FID_WEIGHTS`) or a given file.

The weight files are named here so a config is checked before any model loads, without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

LPIPS_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision.models.AlexNet_Weights.DEFAULT
LPIPS_URL = f"https://download.pytorch.org/models/{LPIPS_WEIGHTS}"
FID_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch_fidelity's URL_INCEPTION_V3
PSNR_CAP = 100.0  # dB: an MSE of 1e-10, far below 8-bit rounding (about 48 dB)
FID_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FID_WEIGHTS}"


def hub_checkpoints() -> Path:
    """Where torch hub keeps downloaded weights (`torch.hub.get_dir()/checkpoints`: $TORCH_HOME/hub, else
    $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def cached_weights(name: str, url: str, what: str, given: str | None = None) -> Path:
    """The weights file `given`, else `name` in the torch hub cache; an error naming the file, the place and the
    URL to fetch it from when it is not there (nothing is downloaded here)."""
    path = Path(given) if given else hub_checkpoints() / name
    if not path.is_file():
        raise FileNotFoundError(f"{what} needs its weights file {path}, which is missing: download {url} there on "
                                "a machine with network access (or give the file's path)")
    return path


def lpips_available() -> bool:
    """Whether LPIPS's backbone weights are in the torch hub cache."""
    return (hub_checkpoints() / LPIPS_WEIGHTS).is_file()


def pixel_similarity(before: torch.Tensor, after: torch.Tensor) -> dict[str, np.ndarray]:
    """`ssim` and `psnr` of each after-image with its before-image."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    before, after = before.float(), after.float()
    ssim = structural_similarity_index_measure(after, before, data_range=1.0, reduction="none")
    psnr = peak_signal_noise_ratio(after, before, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return {"ssim": ssim.cpu().numpy(), "psnr": psnr.clamp(max=PSNR_CAP).cpu().numpy()}


def lpips_distance(before: torch.Tensor, after: torch.Tensor, batch: int = 16) -> np.ndarray:
    """The LPIPS (AlexNet) distance of each after-image with its before-image; its backbone weights must be in
    the torch hub cache."""
    import torch
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    cached_weights(LPIPS_WEIGHTS, LPIPS_URL, "LPIPS")
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=True)
    metric = metric.to(after.device).eval()
    with torch.no_grad():
        distances = [metric(after[i:i + batch].float(), before[i:i + batch].float()).flatten()
                     for i in range(0, len(after), batch)]
    return torch.cat(distances).cpu().numpy()


class FrechetDistance:
    """FID between two image sets fed in batches (`add(images, first=...)`), by torchmetrics with torch-fidelity's
    Inception (weights: `weights` or the torch hub cache), or any `feature` network (N x 3 x H x W in [0, 1] ->
    N x D features)."""

    def __init__(self, feature: torch.nn.Module | None = None, weights: str | None = None):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if feature is None:
            path = cached_weights(FID_WEIGHTS, FID_URL, "FID", weights)
            self.metric = FrechetInceptionDistance(2048, normalize=True, feature_extractor_weights_path=str(path))
        else:
            self.metric = FrechetInceptionDistance(feature, normalize=True)
        self.counts = [0, 0]

    def add(self, images: torch.Tensor, first: bool) -> None:
        self.metric.update(images.float().to(self.metric.device), real=first)
        self.counts[0 if first else 1] += len(images)

    def compute(self) -> float:
        if min(self.counts) < 2:
            raise ValueError(f"FID needs at least 2 images in each set, got {self.counts[0]} and {self.counts[1]}")
        return float(self.metric.compute())
