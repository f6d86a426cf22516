"""Shared fixtures: seeded tiny random models of every family, built once per test session."""

import pytest

from localize import random_model

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
