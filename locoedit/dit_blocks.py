"""LOCOEDIT on a DiT (FLUX, SD3): the text stream's key and value projections (`attn.add_k_proj`,
`attn.add_v_proj`) of the dual-stream blocks LOCOGEN chose (block indices, as `localize layers` lists them).

In an MMDiT the text these projections read is not a function of the prompt: after block 0 the text stream has
attended to the image, and every block's `norm1_context` modulates it by the timestep (and FLUX's guidance)
embedding. So the keys are gathered from generations: the source and destination prompts are generated together,
one batch per seed of `key_seeds`, with the `steps` and `guidance` the edit is meant for, and at every step the
input of each chosen block's `add_k_proj` (which `add_v_proj` reads too) is recorded in the prompts' conditional
rows. Keys are the sources' rows at the pairs' positions (the last word and end span, in each of the
conditioning's segments), targets the destination's rows at the paired positions at the same seed and step; one
ridge solve per block serves every seed and step. All keys come from the unedited model: the blocks of a window
are solved independently, as LOCOEDIT's UNet layers are.

How well one closed form holds across timesteps (`held_out_seeds`): the gap left, ||W' K' - W T|| / ||W K - W T||
(Frobenius, over a step's keyed rows, the key and value projections of every chosen block together), per step.
`fit`: on the key seeds' own rows (K' = K), what the ridge solve leaves. `held_out`: at seeds the solve never saw,
with K' recorded while the edited model generates the sources and K, T from the unedited model; 0 = each source
row projects exactly as the destination's, 1 = as before the edit. Both go into the edit's info.

Batch convention: rows are the distinct prompts (sources, then destinations), one seed per batch; under SD3's
classifier-free guidance the batch is the unconditional rows, then the conditional ones, and only those are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from localize.checks import check_generation
from localize.engine import capturing
from localize.generation import generate
from localize.model import Model
from locoedit.cross_attention import PromptPair, check_layers, projection_address, side_rows
from locoedit.edits import Edit, WeightUpdate
from locoedit.input_projections import context_pairs
from locoedit.solver import RidgeProblem

KEY_SEEDS = (0, 1, 2, 3)  # `key_seeds` when none are given
Rows = tuple[torch.Tensor, ...]  # one step's rows of each side of the pairs, [rows, features]


def with_job_generation(model: Model, method: str, params: dict, steps: int, guidance: float) -> dict:
    """`params` with a job's `steps` and `guidance` where a DiT's LOCOEDIT needs them (its keys come from
    generations like the job's); values the params give stay."""
    if method != "locoedit" or model.spec.denoiser == "unet":
        return params
    return {"steps": steps, "guidance": guidance, **params}


def key_site(block: int) -> str:
    """The site whose input both text projections of dual-stream block `block` read."""
    return f"block.{block}.add_k.input"


@torch.no_grad()
def stream_inputs(model: Model, prompts: Sequence[str], blocks: Sequence[int], seeds: Sequence[int], steps: int,
                  guidance: float, read: Callable[[torch.Tensor], Rows], progress: bool = False
                  ) -> dict[int, list[list[Rows]]]:
    """What each block's text projections read while `prompts` are generated together, one batch per seed, passed
    through `read` at each call (of [prompts, tokens, features], the conditional rows, in `prompts` order):
    block -> [seed][denoiser call] -> read(states)."""
    sites = {block: key_site(block) for block in blocks}
    inputs: dict[int, list[list[Rows]]] = {block: [] for block in blocks}
    n = len(prompts)
    for seed in tqdm(seeds, desc="gathering block keys", disable=not progress, leave=False):
        with capturing(model, list(sites.values())) as calls:
            generate(model, prompts, [seed] * n, steps, guidance)
        for block, site in sites.items():
            inputs[block].append([read(call[-n:]) for call in calls[site]])
    return inputs


def pair_reader(prompts: Sequence[str], pairs: Sequence[PromptPair], sides: Sequence[str] = ("source", "target")
                ) -> Callable[[torch.Tensor], Rows]:
    """read(states) = each side's rows of the pairs (sources' at the source positions, targets' at the target
    positions), on the CPU; `prompts` is the states' row order."""
    index = {prompt: i for i, prompt in enumerate(prompts)}

    def read(states: torch.Tensor) -> Rows:
        return tuple(side_rows(states, index, pairs, side).cpu() for side in sides)

    return read


def _gap(weights: Sequence[tuple[torch.Tensor, torch.Tensor]], keys_after: torch.Tensor, keys: torch.Tensor,
         targets: torch.Tensor) -> tuple[float, float]:
    """(||W' K' - W T||^2, ||W K - W T||^2) summed over the (W, W') pairs, in float64."""
    left = before = 0.0
    keys_after, keys, targets = keys_after.double(), keys.double(), targets.double()
    for weight, edited in weights:
        goal = targets @ weight.T
        left += (keys_after @ edited.T - goal).square().sum().item()
        before += (keys @ weight.T - goal).square().sum().item()
    return left, before


def _add(totals: dict[int, tuple[float, float]], call: int, gap: tuple[float, float]) -> None:
    left, before = totals.get(call, (0.0, 0.0))
    totals[call] = (left + gap[0], before + gap[1])


def _per_call(totals: dict[int, tuple[float, float]]) -> list[float]:
    """The gap left at each denoiser call (step), over everything summed into it."""
    return [(left / before) ** 0.5 if before > 0 else 0.0 for left, before in (totals[c] for c in sorted(totals))]


@torch.no_grad()
def locoedit_blocks(model: Model, sources: Sequence[str], destinations: Sequence[str], layers: Sequence[int],
                    lam: float, key_seeds: Sequence[int], steps: int, guidance: float,
                    held_out_seeds: Sequence[int] = (), progress: bool = False
                    ) -> tuple[dict[str, WeightUpdate], dict]:
    """The updates of the chosen dual-stream blocks' `add_k_proj` and `add_v_proj` (addresses
    `transformer.transformer_blocks.K.attn.add_k_proj.weight`), and the info {"gap_left": {"fit": [per step],
    "held_out": [per step] (with `held_out_seeds`)}, "key_rows_per_block": n}."""
    check_generation(list(key_seeds), steps, guidance)
    overlap = sorted(set(key_seeds) & set(held_out_seeds))
    if overlap:
        raise ValueError(f"held_out_seeds {overlap} are also key_seeds; held-out seeds are ones the solve never saw")
    if held_out_seeds:
        check_generation(list(held_out_seeds), steps, guidance)
    layers = check_layers(model, layers)
    pairs = context_pairs(model, sources, destinations, "final")
    prompts = list(dict.fromkeys([*sources, *destinations]))
    gathered = stream_inputs(model, prompts, layers, key_seeds, steps, guidance, pair_reader(prompts, pairs),
                             progress)
    updates, weights, fit = {}, [], {}
    for block in layers:
        layer = model.cross_attention_layers[block]
        keys = torch.cat([k for seed in gathered[block] for k, _ in seed])
        targets = torch.cat([t for seed in gathered[block] for _, t in seed])
        problem = RidgeProblem(keys, lam)
        pair = []
        for projection in (layer.key, layer.value):
            up, down = problem.factors(problem.input_residuals(projection.weight, targets))
            update = WeightUpdate.from_factors(projection.weight, up, down)
            updates[projection_address(model, layer, projection)] = update
            weight = projection.weight.detach().double().cpu()
            pair.append((weight, update.edited(weight)))
        weights.append(pair)
        for seed in gathered[block]:
            for call, (k, t) in enumerate(seed):
                _add(fit, call, _gap(pair, k, k, t))
    info = {"gap_left": {"fit": _per_call(fit)}, "key_rows_per_block": len(keys)}
    if held_out_seeds:
        info["gap_left"]["held_out"] = _held_out_gaps(model, updates, weights, pairs, prompts, layers,
                                                      list(held_out_seeds), steps, guidance, progress)
    return updates, info


def _held_out_gaps(model: Model, updates: dict[str, WeightUpdate], weights, pairs: Sequence[PromptPair],
                   prompts: list[str], layers: list[int], seeds: list[int], steps: int, guidance: float,
                   progress: bool) -> list[float]:
    """The gap left per step at `seeds`: the unedited model's keys and targets, and the keys the edited model's
    blocks read when it generates the sources (the edit applied for the measurement only)."""
    before = stream_inputs(model, prompts, layers, seeds, steps, guidance, pair_reader(prompts, pairs), progress)
    sources = list(dict.fromkeys(p.source for p in pairs))
    with Edit("locoedit", model.family, {}, updates).applied(model):
        after = stream_inputs(model, sources, layers, seeds, steps, guidance, pair_reader(sources, pairs, ("source",)),
                              progress)
    totals: dict[int, tuple[float, float]] = {}
    for block, pair in zip(layers, weights, strict=True):
        for seed_before, seed_after in zip(before[block], after[block], strict=True):
            for call, ((k, t), (k_after,)) in enumerate(zip(seed_before, seed_after, strict=True)):
                _add(totals, call, _gap(pair, k_after, k, t))
    return _per_call(totals)
