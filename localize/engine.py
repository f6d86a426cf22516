"""The intervention engine: install a list of patches, and captures, as hooks for the duration of a `with` block.

Every site is resolved and every patch checked against the batch before any hook is registered; every
hook is removed on exit, exceptions included, so outputs after the block are bit-identical to before.
Patches on the same module apply in list order. A capture records what a site holds on each call, after the
block's patches on it (`capturing`, or `patching(..., capture=sites)`: TransformerLens' `run_with_cache`,
baukit's `TraceDict`). See `localize.patches` for the batch convention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from localize.model import Model
from localize.patches import Patch
from localize.sites import Site, resolve_site, token_length


class PatchRun:
    """Live state the hooks read: the batch layout and the current denoising step.

    `halves` names the CFG halves of the batch the next forward sees, in order: `("uncond", "cond")` for
    a guided UNet call, `("cond",)` for encoding prompts, `("uncond",)` for the empty prompts; `generate` sets
    it before each forward. None (the start): the layout is unknown, so only patches that apply to every row
    alike (`Patch.reads_layout` False) may run, e.g. around the pipeline's own call; the others are an error.
    `step` is the index of the current denoising step (None outside a denoising loop). `captured[site]` holds
    what each captured site held on each call of the block, in call order (detached, on its device). `ran`:
    the sites whose patches' hook has run (`check_ran`).
    """

    def __init__(self, rows: int | None):
        self.rows = rows
        self.halves: tuple[str, ...] | None = None
        self.step: int | None = None
        self.captured: dict[str, list[torch.Tensor]] = {}
        self.ran: set[str] = set()
        self._indices: dict[tuple, torch.Tensor] = {}

    def check_ran(self, patches: Sequence[Patch]) -> None:
        """Raise if a patch's module was never called in the block: a patch that silently did nothing (e.g. a
        library version whose forward calls another module than the one the site names)."""
        missing = sorted({patch.site for patch in patches} - self.ran)
        if missing:
            raise RuntimeError(f"patched site(s) {missing} never ran: their module is not called by this forward, "
                               "so the patch changed nothing")

    def _index(self, positions: list[int], device: torch.device) -> torch.Tensor:
        """The index tensor of `positions` on `device`, built once per run."""
        key = (tuple(positions), device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(positions, device=device)
        return self._indices[key]

    def apply(self, entries: Sequence[tuple[Patch, Site]], x: torch.Tensor) -> torch.Tensor:
        """`x` with the patches applied in order; each patch is read through its own site's axis conventions."""
        if self.halves is None:
            reading = [patch for patch, _ in entries if patch.reads_layout]
            if reading:
                raise RuntimeError(
                    f"patch on {reading[0].site!r} picks rows or a CFG branch, but the batch layout of this forward "
                    "is unknown: `localize.generate(..., patches=...)` sets it; around another call, set the "
                    "yielded run's `halves` (e.g. ('uncond', 'cond') for a guided UNet call) first")
        halves = self.halves or ("cond",)  # an unknown layout: every row alike (checked above)
        if self.halves is None:
            rows = x.shape[0]
        else:
            rows = self.rows if self.rows is not None else x.shape[0] // len(halves)
        if x.shape[0] != rows * len(halves):
            raise RuntimeError(
                f"site {entries[0][1].name!r} saw a batch of {x.shape[0]} rows, expected {rows} prompt rows x "
                f"{len(halves)} CFG halves {halves}"
            )
        self.ran.update(patch.site for patch, _ in entries)
        out = None
        for patch, site in entries:
            if not site.in_text_encoder and not patch.active_at(self.step):
                continue
            prompt_rows = list(patch.rows) if patch.rows is not None else list(range(rows))
            for h, half in enumerate(halves):
                if patch.branch not in ("both", half):
                    continue
                out = x.clone() if out is None else out
                offset = h * rows
                index = self._index([offset + r for r in prompt_rows], x.device)
                current = out[index]
                sources = out[self._index([offset + r for r in patch.source_rows], x.device)]
                new = patch.new_values(current, sources)
                mask = patch.selection_mask(current.shape[1:], site.text_axis, x.device)
                out[index] = new if mask is None else torch.where(mask, new, current)
        return x if out is None else out


def _check(patch: Patch, site: Site, model: Model, rows: int | None, steps: int | None) -> None:
    if rows is not None:
        for what, indices in (("rows", patch.rows), ("source_rows", patch.source_rows)):
            if indices is not None and max(indices) >= rows:
                raise IndexError(f"patch on {site.name!r}: {what} {list(indices)} beyond the batch of {rows} rows")
    if patch.steps is not None:
        if site.in_text_encoder:
            raise ValueError(f"patch on {site.name!r}: text-encoder sites run once, before denoising; "
                             "a step range does not apply")
        if steps is not None and patch.steps[1] > steps:
            raise ValueError(f"patch on {site.name!r}: step range {patch.steps} outside the schedule's "
                             f"{steps} steps (0..{steps})")
    if patch.tokens is not None:
        if not site.text_axis:
            raise ValueError(f"patch on {site.name!r}: token positions apply to text-axis sites only "
                             "(text_encoder.*, cross_attn.K.context/to_k/to_v, a DiT's text streams)")
        length = token_length(model, site)
        if max(patch.tokens) >= length:
            raise IndexError(f"patch on {site.name!r}: token {max(patch.tokens)} beyond the {length} positions")


@contextmanager
def patching(
    model: Model, patches: Sequence[Patch], rows: int | None = None, steps: int | None = None,
    capture: Sequence[str] = (),
) -> Iterator[PatchRun]:
    """Install `patches` on `model` for the block, and a capture of each site in `capture`; yields the
    `PatchRun` whose layout the caller sets (`generate` does; see `PatchRun`) and whose `captured` fills. `rows`
    (prompt rows per batch) and `steps` (denoising steps) are checked against the patches up front."""
    resolved = [(patch, resolve_site(model, patch.site)) for patch in patches]
    for patch, site in resolved:
        _check(patch, site, model, rows, steps)
    captures = [resolve_site(model, name) for name in dict.fromkeys(capture)]
    groups: dict[tuple[int, str, int | None], list[tuple[Patch, Site]]] = {}
    for patch, site in resolved:
        groups.setdefault((id(site.module), site.hook, site.element), []).append((patch, site))
    run = PatchRun(rows)
    handles = []
    try:
        for entries in groups.values():
            handles.append(_register(run, entries))
        for site in captures:  # registered last: they see the patched values
            run.captured[site.name] = []
            handles.append(_register_capture(site, run.captured[site.name]))
        yield run
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capturing(model: Model, sites: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside, record what each of `sites` holds on each call: yields site -> tensors in call order (batch
    first, detached). E.g. `with capturing(model, ["cross_attn.3.to_v"]) as cache: model.pipeline(...)`."""
    with patching(model, (), capture=sites) as run:
        yield run.captured


def _register_capture(site: Site, calls: list[torch.Tensor]):
    if site.hook == "output":
        def record_output(module, args, output):
            calls.append((output[site.element or 0] if isinstance(output, tuple) else output).detach())

        return site.module.register_forward_hook(record_output)

    def record_input(module, args, kwargs):
        value = kwargs.get("encoder_hidden_states") if site.hook == "context" else args[0]
        calls.append(value.detach())

    return site.module.register_forward_pre_hook(record_input, with_kwargs=True)


def _register(run: PatchRun, entries: list[tuple[Patch, Site]]):
    """One hook per (module, hook kind) running all its patches in list order."""
    site = entries[0][1]
    if site.hook == "input":
        def input_hook(module, args):
            return (run.apply(entries, args[0]), *args[1:])

        return site.module.register_forward_pre_hook(input_hook, prepend=True)
    if site.hook == "context":
        def context_hook(module, args, kwargs):
            states = kwargs.get("encoder_hidden_states")
            if states is None:
                raise RuntimeError(f"site {site.name!r}: the layer was called without encoder_hidden_states")
            return args, {**kwargs, "encoder_hidden_states": run.apply(entries, states)}

        return site.module.register_forward_pre_hook(context_hook, with_kwargs=True, prepend=True)

    def output_hook(module, args, output):
        if isinstance(output, tuple):
            element = site.element or 0
            return (*output[:element], run.apply(entries, output[element]), *output[element + 1:])
        return run.apply(entries, output)

    # First among the module's hooks, so hooks a library keeps there (transformers' hidden-state capture, which
    # SD-XL's penultimate-layer conditioning reads) see the patched output.
    return site.module.register_forward_hook(output_hook, prepend=True)
