"""`localize layers`: the model's cross-attention layer table (index -> module, execution order) with sizes.
The table and the run: `localize.layer_table`."""

from __future__ import annotations

from dataclasses import dataclass, field

from localize.config import ModelConfig
from localize.jobs import Job


@dataclass
class LayersJob:
    model: ModelConfig = field(default_factory=ModelConfig)


JOB = Job(LayersJob, "localize.layer_table:run_layers")
