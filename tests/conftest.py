"""Shared fixtures, built once per test session: seeded tiny random models of every family, the organism and
its scorer."""

import pytest

from localize import load_model, random_model
from localize.scoring import ORGANISM, ClipScorer

FAMILIES = ("sd1", "sd2", "sdxl", "if", "organism")


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
