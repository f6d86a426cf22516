"""Causal mediation analysis over UNet and text-encoder states (Basu et al., ICLR 2024).

`trace(model, scorer, units, settings)` runs the clean, corrupted and restored generations of every unit
(prompt x seed) as rows of batches and returns one row per unit x state; `state_effects` aggregates them
(mean indirect effect, bootstrap CI); `localize trace` is the command-line job (`causal_tracing.job`).
"""

from causal_tracing.effects import state_effects, summary_text
from causal_tracing.states import State
from causal_tracing.tracing import TraceSettings, Unit, trace

__all__ = ["State", "TraceSettings", "Unit", "state_effects", "summary_text", "trace"]
