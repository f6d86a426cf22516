"""Causal mediation analysis over UNet and text-encoder states (Basu et al., ICLR 2024).

`trace(model, scorer, units, settings)` runs the clean, corrupted and restored generations of every unit
(prompt x seed) as rows of batches and returns one row per unit x state; `state_effects` aggregates them
(mean indirect effect, bootstrap CI); `localize trace` is the command-line job (`causal_tracing.job`).
"""

from localize.lazy import lazy_exports

_EXPORTS = {
    "State": "causal_tracing.states",
    "TraceSettings": "causal_tracing.settings",
    "Unit": "causal_tracing.settings",
    "state_effects": "causal_tracing.effects",
    "summary_text": "causal_tracing.effects",
    "trace": "causal_tracing.tracing",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
