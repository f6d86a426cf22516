"""Neuron ablation as a weight edit: the LOCOGEN neurons' rows of to_k / to_v set to zero.

A neuron is one output feature of a cross-attention layer's key or value projection, addressed as the engine's
site and the feature (`localize.sites`): `cross_attn.K.to_v:N` (layer K 0-based in execution order, projection
to_k or to_v, output feature N), or the tuple (K, projection, N). Zeroing its weight row makes its
output zero for every prompt (its bias, for projections that have one, IF's added K/V), which is LOCOGEN's zero
ablation made permanent; the update is exact: rows are zeroed bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from localize.model import Model
from locoedit.cross_attention import check_layers, projection_address
from locoedit.edits import WeightUpdate

PROJECTIONS = ("to_k", "to_v")


def top_neurons(scores: str | Path, k: int) -> list[tuple[int, str, int]]:
    """The k neurons of largest |t| in LOCOGEN's `neuron_scores.parquet` (layer, projection, index, t)."""
    path = Path(scores)
    if not path.is_file():
        raise FileNotFoundError(f"no LOCOGEN neuron scores at {path}")
    table = pd.read_parquet(path)
    missing = {"layer", "projection", "index", "t"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not LOCOGEN's neuron_scores.parquet: no {', '.join(sorted(missing))} column")
    if not isinstance(k, int) or not 1 <= k <= len(table):
        raise ValueError(f"k={k!r} neurons requested; {path} scores {len(table)}")
    ranked = table.assign(size=table["t"].abs()).sort_values("size", ascending=False, kind="stable").head(k)
    return list(zip(ranked["layer"].astype(int), ranked["projection"], ranked["index"].astype(int), strict=True))


NEURON_ADDRESS = re.compile(r"cross_attn\.(\d+)\.(to_k|to_v):(\d+)")


def parse_neuron(neuron) -> tuple[int, str, int]:
    """`"cross_attn.K.PROJECTION:N"` (e.g. `"cross_attn.4.to_v:17"`) or a (K, projection, N) sequence."""
    if isinstance(neuron, str):
        match = NEURON_ADDRESS.fullmatch(neuron)
        parts = list(match.groups()) if match else []
    else:
        parts = list(neuron)
    if len(parts) != 3 or parts[1] not in PROJECTIONS or not str(parts[0]).isdigit() or not str(parts[2]).isdigit():
        raise ValueError(f"neuron {neuron!r} must be 'cross_attn.K.PROJECTION:N' with PROJECTION in "
                         f"{', '.join(PROJECTIONS)}, e.g. 'cross_attn.4.to_v:17'")
    return int(parts[0]), parts[1], int(parts[2])


@torch.no_grad()
def neurons(model: Model, neurons: Sequence | None = None, scores: str | None = None, k: int | None = None
            ) -> dict[str, WeightUpdate]:
    """Zero the rows of the given `neurons`, or of the top `k` neurons of LOCOGEN's `scores` file."""
    if (neurons is None) == (scores is None):
        raise ValueError("give either `neurons` (a list of 'cross_attn.K.PROJECTION:N') or `scores` (LOCOGEN's "
                         "neuron_scores.parquet) with `k`")
    chosen = top_neurons(scores, k) if scores is not None else [parse_neuron(n) for n in neurons]
    if not chosen:
        raise ValueError("no neuron to ablate")
    check_layers(model, [layer for layer, _, _ in chosen])
    rows: dict[tuple[int, str], set[int]] = {}
    for layer, projection, index in chosen:
        rows.setdefault((layer, projection), set()).add(index)
    updates = {}
    for (k_layer, projection), indices in sorted(rows.items()):
        layer = model.cross_attention_layers[k_layer]
        module = layer.key if projection == "to_k" else layer.value
        weight = module.weight
        bad = sorted(i for i in indices if i >= weight.shape[0])
        if bad:
            raise ValueError(f"layer {k_layer} {projection} has {weight.shape[0]} neurons; indices {bad} do not exist")
        order = sorted(indices)
        up = torch.zeros(weight.shape[0], len(order))
        up[order, range(len(order))] = 1.0
        down = -weight[order].float().cpu()
        updates[projection_address(model, layer, module)] = WeightUpdate.from_factors(weight, up, down)
    return updates
