"""Restorations whose image is known without generating it, so no row is spent on them.

- `unreached`: in a causal text encoder (CLIP, not T5), a state at positions all before the first corrupted
  token is the same in the clean and corrupted runs: restoring it reproduces the corrupted run (indirect
  effect exactly 0). Known from the token positions alone.
- `same_conditioning`: a text-state restoration whose conditioning (everything the UNet reads from the text
  side, `encode_patched`) is bit-identical to the corrupted run's, the clean run's or an earlier
  restoration's feeds the UNet the same input with the same seed, so it gives the same image. E.g. SD-XL reads
  its encoders' penultimate layers, so no last-layer state reaches the image except the second encoder's end
  token, which its pooled projection reads. Found with one text-encoder pass per unit.

A known result names the run it equals: `"corrupted"`, `"clean"`, or the earlier `State`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

from causal_tracing.states import State
from localize.families import TEXT_ENCODER_ARCHS
from localize.generation import encode_patched
from localize.model import Model
from localize.patches import Patch

Known = str | State  # "corrupted", "clean", or the state whose restoration gives the same image

ENCODE_ROWS = 64  # prompt rows per text-encoder pass of `same_conditioning`


def unreached(model: Model, state: State) -> bool:
    """Whether `state` lies before every corrupted token (token role `start` or `before`) of a causal text
    encoder, where restoring it provably changes nothing."""
    if state.token_role not in ("start", "before"):
        return False
    encoder = int(state.location.rsplit(".", 1)[1])
    return TEXT_ENCODER_ARCHS[type(model.text_encoders[encoder]).__name__].causal


def same_conditioning(
    model: Model, prompt: str, states: Sequence[State], row_patches: Callable[[State | None, int], list[Patch]],
) -> dict[State, Known]:
    """The text `states` whose restoration conditions the UNet exactly as another run of the unit does.

    `row_patches(state, row)`: the patches of the corrupted run (`state` None) or of the restoration of
    `state`, placed at prompt row `row` with the clean row at 0."""
    runs: list[State | None] = [None, *(state for state in states if state.group == "text_encoder")]
    prints: list[bytes] = []
    for start in range(0, len(runs), ENCODE_ROWS - 1):
        chunk = runs[start:start + ENCODE_ROWS - 1]
        patches = [patch for row, run in enumerate(chunk, 1) for patch in row_patches(run, row)]
        conditioning = encode_patched(model, [prompt] * (len(chunk) + 1), patches)
        if start == 0:
            clean = _fingerprint(conditioning, 0)
        prints += [_fingerprint(conditioning, row) for row in range(1, len(chunk) + 1)]
    first: dict[bytes, Known] = {clean: "clean"}
    known = {}
    for run, fingerprint in zip(runs, prints, strict=True):
        if fingerprint in first:
            known[run] = first[fingerprint]
        else:
            first[fingerprint] = run if run is not None else "corrupted"
    known.pop(None, None)  # the corrupted run equal to the clean one: no effect to measure, still generated
    return known


def _fingerprint(conditioning: dict, row: int) -> bytes:
    """A digest of row `row` of every batched tensor in `conditioning` (nested dicts included)."""
    digest = hashlib.blake2b()
    for tensor in _tensors(conditioning):
        digest.update(tensor[row].detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.digest()


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in _tensors(value[key])]
    return [value] if isinstance(value, torch.Tensor) else []
