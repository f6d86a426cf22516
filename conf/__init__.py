"""Hydra configs, installed as the package `localize.conf`."""
