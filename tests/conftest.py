"""Shared fixtures, built once per test session: seeded tiny random models of every family, the organism and
its scorer."""

import pytest
import torch

from localize import load_model, random_model
from localize.scoring import ORGANISM, ClipScorer

FAMILIES = ("sd1", "sd2", "sdxl", "if", "organism", "flux", "sd3")


@pytest.fixture(scope="session")
def tiny_models():
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = random_model(family, "tiny")
        return cache[family]

    return get


@pytest.fixture(scope="session")
def sd1(tiny_models):
    return tiny_models("sd1")


@pytest.fixture(scope="session")
def organism():
    return load_model("organism")


@pytest.fixture(scope="session")
def scorer():
    return ClipScorer("organism-clip", ORGANISM)


@pytest.fixture(scope="session")
def organism64():
    """The organism in float64, for comparisons across batch sizes: in float32 they differ by up to 2e-4 CLIP
    points from one CPU to another (different kernels per batch size); in float64 by less than 1e-8."""
    return load_model("organism", dtype=torch.float64)


@pytest.fixture(scope="session")
def scorer64():
    return ClipScorer("organism-clip", ORGANISM, dtype=torch.float64)
