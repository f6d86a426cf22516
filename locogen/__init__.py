"""LOCOGEN window search over cross-attention layers, and neuron-level localization (Basu et al., ICML 2024).

`search(model, scorer, units, settings)` scores every window of m consecutive cross-attention layers (rows of
batches); `window_summary` aggregates over units and marks the chosen window; `localize locogen` is the
command-line job (`locogen.job`). The windows themselves: `locogen.windows.windows`.
"""

from localize.lazy import lazy_exports

_EXPORTS = {
    "SearchSettings": "locogen.settings",
    "Unit": "locogen.layer_search",
    "make_units": "locogen.layer_search",
    "search": "locogen.layer_search",
    "window_summary": "locogen.curves",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
