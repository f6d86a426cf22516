"""LOCOGEN window search over cross-attention layers, and neuron-level localization (Basu et al., ICML 2024).

`search(model, scorer, units, settings)` scores every window of m consecutive cross-attention layers (rows of
batches); `window_summary` aggregates over units and marks the chosen window; `localize locogen` is the
command-line job (`locogen.job`).
"""

from locogen.curves import window_summary
from locogen.layer_search import SearchSettings, Unit, make_units, search
from locogen.windows import windows

__all__ = ["SearchSettings", "Unit", "make_units", "search", "window_summary", "windows"]
