"""A patch is data: where (site, tokens, neurons, rows, CFG branch, denoising steps) and what (operation).

Batch convention (ROME's): a batch holds N prompt rows; row 0 is usually the clean run and rows 1..N-1 are
each patched differently, so N configurations run as ONE forward. `rows` and `source_rows` are prompt rows
(0..N-1). Under classifier-free guidance the UNet sees 2N rows, [unconditional rows; conditional rows]; the
engine maps prompt row r to batch row r (uncond half) and N + r (cond half), and `branch` picks the halves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

OPERATIONS = ("replace", "add", "zero", "noise", "restore", "mean_ablate", "function")
BRANCHES = ("both", "cond", "uncond")


def _index_tuple(value, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    values = tuple(int(v) for v in ([value] if isinstance(value, int) else value))
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{what} must be a non-empty list of non-negative indices, got {value!r}")
    return values


@dataclass(frozen=True, eq=False)  # eq=False: tensors in `value` do not compare as booleans
class Patch:
    """One intervention on one site.

    - `op`: `replace` (with `value`), `add` (`value`), `zero`, `noise` (add N(0, std^2) drawn from `seed`; the
      same draw for every row and step, so a row's result never depends on the rest of the batch), `restore`
      (copy the activation of `source_rows[0]` of the same CFG half, ROME's restoration), `mean_ablate` (the
      mean over `source_rows` of the same CFG half), `function` (`fn(rows)`: the selected rows, [R, *row shape],
      to new ones of the same shape; a user's own operation, e.g. a steering or projection).
    - `value`: a tensor in the site's per-row shape, or broadcastable to it (e.g. one vector per feature).
    - `tokens`: positions on the token axis (text-axis sites only); `neurons`: feature/channel indices.
      The operation writes only the selected entries; `None` selects all.
    - `steps`: `(start, stop)` denoising-step indices (index into the scheduler's timesteps, stop exclusive).
    - `rows`: prompt rows to patch (`None`: all); `branch`: `both`, `cond` or `uncond`.
    """

    site: str
    op: str = "replace"
    value: torch.Tensor | None = None
    tokens: tuple[int, ...] | None = None
    neurons: tuple[int, ...] | None = None
    steps: tuple[int, int] | None = None
    branch: str = "both"
    rows: tuple[int, ...] | None = None
    source_rows: tuple[int, ...] = (0,)
    std: float = 1.0
    seed: int = 0
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def reads_layout(self) -> bool:
        """Whether the patch needs the batch layout (which rows are which prompts, which half is which): it picks
        rows or a CFG branch, or copies from other rows."""
        return self.rows is not None or self.branch != "both" or self.op in ("restore", "mean_ablate")

    def __post_init__(self):
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown patch operation {self.op!r}; valid: {', '.join(OPERATIONS)}")
        if self.branch not in BRANCHES:
            raise ValueError(f"unknown CFG branch {self.branch!r}; valid: {', '.join(BRANCHES)}")
        if self.op in ("replace", "add") and self.value is None:
            raise ValueError(f"patch {self.op!r} on {self.site!r} needs a value tensor")
        if self.op not in ("replace", "add") and self.value is not None:
            raise ValueError(f"patch {self.op!r} on {self.site!r} takes no value")
        if (self.op == "function") != (self.fn is not None):
            raise ValueError(f"patch {self.op!r} on {self.site!r}: " + (
                "needs fn, a function of the selected rows" if self.fn is None else "takes no fn (op='function' does)"))
        if self.op == "noise" and not self.std > 0:
            raise ValueError(f"noise std must be > 0, got {self.std!r}")
        object.__setattr__(self, "tokens", _index_tuple(self.tokens, "tokens"))
        object.__setattr__(self, "neurons", _index_tuple(self.neurons, "neurons"))
        object.__setattr__(self, "rows", _index_tuple(self.rows, "rows"))
        object.__setattr__(self, "source_rows", _index_tuple(self.source_rows, "source_rows"))
        if self.steps is not None:
            start, stop = (int(s) for s in self.steps)
            if not 0 <= start < stop:
                raise ValueError(f"step range {self.steps!r} must satisfy 0 <= start < stop")
            object.__setattr__(self, "steps", (start, stop))

    def active_at(self, step: int | None) -> bool:
        if self.steps is None:
            return True
        if step is None:
            raise RuntimeError(f"patch on {self.site!r} has a step range but the UNet ran outside a denoising loop")
        return self.steps[0] <= step < self.steps[1]

    def selection_mask(self, shape: torch.Size, text_axis: bool, device: torch.device) -> torch.Tensor | None:
        """Boolean mask over one row's entries, or None when the patch covers the whole row."""
        if self.tokens is None and self.neurons is None:
            return None
        mask = torch.ones(shape, dtype=torch.bool, device=device)
        if self.tokens is not None:
            mask &= _axis_mask(shape, 0, self.tokens, "token", self.site, device)
        if self.neurons is not None:
            channel_axis = 0 if (len(shape) == 3 and not text_axis) else len(shape) - 1
            mask &= _axis_mask(shape, channel_axis, self.neurons, "neuron", self.site, device)
        return mask

    def new_values(self, rows: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """What the selected rows become. `rows`: [R, *row shape]; `sources`: the source rows of each's half."""
        if self.op == "zero":
            return torch.zeros_like(rows)
        if self.op == "restore":
            return sources[:1].expand_as(rows)
        if self.op == "mean_ablate":
            return sources.mean(0, keepdim=True).expand_as(rows)
        if self.op == "noise":
            generator = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(rows.shape[1:], generator=generator).to(rows.device, rows.dtype)
            return rows + self.std * noise
        if self.op == "function":
            new = self.fn(rows)
            if not isinstance(new, torch.Tensor) or new.shape != rows.shape:
                raise ValueError(f"patch function on {self.site!r} must return a tensor of the rows' shape "
                                 f"{tuple(rows.shape)}, got {getattr(new, 'shape', type(new).__name__)}")
            return new
        value = self.value.to(rows.device, rows.dtype)
        try:
            shape = torch.broadcast_shapes(value.shape, rows.shape[1:])
        except RuntimeError:
            shape = None
        if shape != rows.shape[1:]:
            raise ValueError(
                f"patch value of shape {tuple(value.shape)} does not broadcast to site {self.site!r}'s "
                f"per-row shape {tuple(rows.shape[1:])}"
            )
        return rows + value if self.op == "add" else value.expand_as(rows)


def _axis_mask(shape, axis: int, indices, what: str, site: str, device) -> torch.Tensor:
    if max(indices) >= shape[axis]:
        raise IndexError(f"{what} index {max(indices)} out of range for site {site!r} with {shape[axis]} {what}s")
    line = torch.zeros(shape[axis], dtype=torch.bool, device=device)
    line[list(indices)] = True
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return line.view(view)
