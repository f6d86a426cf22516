"""Quality kept by an edit: pixel similarity, FID against an independent computation with a small feature network,
and the weight files named when absent (the measures in `localize evaluate`: tests/test_setdiff.py)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from localize.quality import (
    FID_URL,
    FID_WEIGHTS,
    LPIPS_URL,
    LPIPS_WEIGHTS,
    PSNR_CAP,
    FrechetDistance,
    cached_weights,
    hub_checkpoints,
    lpips_distance,
    pixel_similarity,
)


class PooledFeatures(torch.nn.Module):
    """A small fixed feature network: 4 x 4 average pooling and a random projection to 6 features."""

    def __init__(self):
        super().__init__()
        self.projection = torch.randn(3 * 4 * 4, 6, generator=torch.Generator().manual_seed(0))

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.projection


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of two Gaussians fitted to feature sets, from the FID paper's formula."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real))


def test_fid_equals_the_frechet_distance_of_the_features_fed_in_batches():
    generator = torch.Generator().manual_seed(1)
    first = torch.rand(40, 3, 16, 16, generator=generator)
    second = torch.rand(30, 3, 16, 16, generator=generator) * 0.6 + 0.3
    features = PooledFeatures()
    distance = FrechetDistance(feature=features)
    distance.add(first[:25], first=True)
    distance.add(first[25:], first=True)
    distance.add(second, first=False)
    expected = frechet(features(first).double().numpy(), features(second).double().numpy())
    assert distance.compute() == pytest.approx(expected, rel=1e-6) and expected > 0.1
    same = FrechetDistance(feature=features)
    same.add(first, first=True)
    same.add(first, first=False)
    assert abs(same.compute()) < 1e-6
    with pytest.raises(ValueError, match="at least 2 images in each set, got 40 and 0"):
        lonely = FrechetDistance(feature=features)
        lonely.add(first, first=True)
        lonely.compute()


def test_pixel_similarity_of_identical_and_of_changed_images():
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 16, 16, generator=generator)
    same = pixel_similarity(images, images)
    assert same["ssim"] == pytest.approx([1, 1, 1]) and (same["psnr"] == PSNR_CAP).all()
    noisy = (images + 0.1 * torch.randn(3, 3, 16, 16, generator=generator)).clamp(0, 1)
    changed = pixel_similarity(images, noisy)
    mse = ((noisy - images) ** 2).mean(dim=(1, 2, 3)).numpy()
    assert changed["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert (changed["ssim"] < 0.99).all()


def test_missing_weights_are_named_with_where_to_get_them(tmp_path, monkeypatch):
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert LPIPS_URL == torchvision.models.AlexNet_Weights.DEFAULT.url and FID_URL == URL_INCEPTION_V3
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert hub_checkpoints() == tmp_path / "torch" / "hub" / "checkpoints"
    assert str(hub_checkpoints()) == f"{torch.hub.get_dir()}/checkpoints"  # torch's own rule
    with pytest.raises(FileNotFoundError, match=f"FID needs its weights file .*{FID_WEIGHTS}, which is missing: "
                                                f"download {FID_URL}"):
        FrechetDistance()
    with pytest.raises(FileNotFoundError, match=f"LPIPS needs its weights file .*{LPIPS_WEIGHTS}"):
        lpips_distance(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    given = tmp_path / "inception.pth"
    given.write_bytes(b"")
    assert cached_weights(FID_WEIGHTS, FID_URL, "FID", str(given)) == given
