"""`Edit`: a computed weight edit that can be applied, reverted bit-exactly, composed, saved, loaded and exported
as a LoRA.

An edit is a set of low-rank updates W' = W + up @ down, one per parameter, each addressed as
`<pipeline component>.<parameter path>` (e.g. `unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`)
and tied to a hash of the base tensor it was computed from. The factors are the solver's exact factorization
(up = residuals^T [out, r], down = K G^-1 [r, in]), kept in float32 (float64 for float64 weights); `apply`
computes W + up @ down in the same precision and rounds once to the weight's dtype, so the same edit on the same
base always gives the same bits, and `revert` restores the saved originals bit-exactly.

Base hashes are taken of the weights rounded to float16, so an edit computed on a model's float32 weights
applies to their float16 or float32 copy, and to nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from localize.model import AppliedEdit, Model
from localize.results import atomic_write

FORMAT = "localize-edit/1"


class EditMismatchError(ValueError):
    """The edit does not belong to this model (another base, another architecture) or its file was altered."""


def tensor_hash(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's shape and its values rounded to float16."""
    data = tensor.detach().to("cpu", torch.float16).contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())  # any strides
    return digest.hexdigest()


def resolve_parameter(model: Model, address: str) -> torch.nn.Parameter:
    """The pipeline parameter at `<component>.<parameter path>`; a clear error if there is none."""
    component, _, path = address.partition(".")
    module = model.pipeline.components.get(component)
    if not isinstance(module, torch.nn.Module):
        valid = [name for name, value in model.pipeline.components.items() if isinstance(value, torch.nn.Module)]
        raise EditMismatchError(f"parameter {address!r}: this {model.family} pipeline has no component "
                                f"{component!r}; components: {', '.join(valid)}")
    try:
        return module.get_parameter(path)
    except AttributeError:
        raise EditMismatchError(f"parameter {address!r} does not exist in this {model.family} model") from None


@dataclass
class WeightUpdate:
    """W' = W + up @ down for one [out, in] weight; `up` [out, r], `down` [r, in], on the CPU, in float32
    (float64 for a float64 weight)."""

    up: torch.Tensor
    down: torch.Tensor
    base_hash: str

    def __post_init__(self):
        if self.up.ndim != 2 or self.down.ndim != 2 or self.up.shape[1] != self.down.shape[0]:
            raise ValueError(f"factors of shapes {tuple(self.up.shape)} and {tuple(self.down.shape)} do not chain")

    @classmethod
    def from_factors(cls, weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> WeightUpdate:
        """Keep only the key columns that move the weight (a zero residual adds nothing to the update); an update
        wider than the weight's smaller side is stored as that side's identity times the dense difference."""
        used = up.abs().sum(0) > 0
        work = torch.promote_types(weight.dtype, torch.float32)
        up, down = up[:, used].to(work), down[used].to(work)
        out, inp = weight.shape
        if up.shape[1] > min(out, inp):
            delta = up @ down
            eye = torch.eye(min(out, inp), device=delta.device, dtype=delta.dtype)
            up, down = (eye, delta) if out <= inp else (delta, eye)
        return cls(up.cpu().contiguous(), down.cpu().contiguous(), tensor_hash(weight))

    @property
    def rank(self) -> int:
        """Width of the factorization: an upper bound of the update's rank, equal to it for independent keys."""
        return self.up.shape[1]

    @property
    def changed(self) -> int:
        """Entries the update moves: rows with a nonzero `up` times columns with a nonzero `down`."""
        return int((self.up.abs().sum(1) > 0).sum()) * int((self.down.abs().sum(0) > 0).sum())

    def then(self, other: WeightUpdate) -> WeightUpdate:
        """This update plus `other`, as one exact low-rank update (factors concatenated) on this one's base."""
        return WeightUpdate(torch.cat([self.up, other.up], 1), torch.cat([self.down, other.down]), self.base_hash)

    def edited(self, weight: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(weight.dtype, torch.float32)
        delta = self.up.to(weight.device, work) @ self.down.to(weight.device, work)
        return (weight.to(work) + delta).to(weight.dtype)


@dataclass
class Edit:
    """A computed edit. `updates` maps parameter addresses to their updates; `params` are the method's
    parameters (JSON-serializable); `seconds` is the wall time of computing it; `info` what the method measured
    on the way (debiasing's rounds, ReFACT's mismatch)."""

    method: str
    family: str
    params: dict
    updates: dict[str, WeightUpdate]
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.updates or all(update.rank == 0 for update in self.updates.values()):
            raise ValueError(f"the {self.method} edit changes no weight (its targets equal the model's current "
                             "outputs, or it found nothing to edit); refusing a silent no-op")

    @property
    def rank(self) -> int:
        """The largest factorization width over the edited weights (an upper bound of each update's rank)."""
        return max(update.rank for update in self.updates.values())

    @property
    def parameters_changed(self) -> int:
        return sum(update.changed for update in self.updates.values())

    def report(self, model: Model) -> dict:
        """Wall time, parameters changed (count and percent of the pipeline's parameters), rank, weights edited."""
        total = sum(p.numel() for m in model.pipeline.components.values() if isinstance(m, torch.nn.Module)
                    for p in m.parameters())
        changed = self.parameters_changed
        return {"method": self.method, "seconds": self.seconds, "weights": len(self.updates),
                "parameters_changed": changed, "parameters_changed_percent": 100 * changed / total,
                "rank": self.rank}

    def _check(self, model: Model) -> dict[str, torch.nn.Parameter]:
        if model.family != self.family:
            raise EditMismatchError(f"this {self.method} edit was computed for a {self.family} model, not "
                                    f"{model.family}")
        parameters = {address: resolve_parameter(model, address) for address in self.updates}
        for address, parameter in parameters.items():
            update = self.updates[address]
            expected = (update.up.shape[0], update.down.shape[1])
            if tuple(parameter.shape) != expected:
                raise EditMismatchError(f"parameter {address} is {tuple(parameter.shape)} in this model; the edit "
                                        f"was computed for {expected}")
            if tensor_hash(parameter) != update.base_hash:
                raise EditMismatchError(
                    f"parameter {address} differs from the base this {self.method} edit was computed on (another "
                    "model, or already edited); apply it to its base model, or revert other edits first")
        return parameters

    @functools.cached_property
    def key(self) -> str:
        """The edit's content hash (its saved header and factors): the same for this edit and its saved file."""
        return _content_hash(self._header(), self._tensors())

    def _header(self) -> dict:
        return {"format": FORMAT, "method": self.method, "family": self.family, "params": self.params,
                "seconds": self.seconds, "info": self.info,
                "base_hashes": {a: u.base_hash for a, u in self.updates.items()}}

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for address, update in self.updates.items():
            tensors[f"{address}:up"], tensors[f"{address}:down"] = update.up.contiguous(), update.down.contiguous()
        return tensors

    def _entry(self, model: Model) -> int | None:
        """Where this edit sits in `model.applied_edits`, if applied."""
        return next((i for i, entry in enumerate(model.applied_edits) if entry.key == self.key), None)

    @torch.no_grad()
    def apply(self, model: Model) -> Model:
        """Write the edited weights into `model` (in place) and record it in `model.applied_edits`. Every check
        runs before any weight changes."""
        if self._entry(model) is not None:
            raise RuntimeError(f"this {self.method} edit is already applied to this model; revert it first")
        parameters = self._check(model)
        new = {address: self.updates[address].edited(p) for address, p in parameters.items()}
        originals = {address: p.detach().clone() for address, p in parameters.items()}
        for address, parameter in parameters.items():
            parameter.copy_(new[address])
        model.applied_edits.append(AppliedEdit(self.key, self.method, originals))
        return model

    @torch.no_grad()
    def revert(self, model: Model) -> Model:
        """Restore the weights `apply` replaced, bit for bit. This edit, or one with the same content (its saved
        file), must be applied to `model`, and no edit applied after it may have changed the same weights."""
        index = self._entry(model)
        if index is None:
            raise RuntimeError(f"this {self.method} edit is not applied to this model; nothing to revert")
        entry = model.applied_edits[index]
        later = [e.method for e in model.applied_edits[index + 1:] if e.originals.keys() & entry.originals.keys()]
        if later:
            raise RuntimeError(f"the {', '.join(later)} edit(s) applied after this {self.method} edit changed the "
                               "same weights; revert them first (or `model.revert_all()`)")
        for address, original in entry.originals.items():
            resolve_parameter(model, address).copy_(original)
        del model.applied_edits[index]
        return model

    @contextmanager
    def applied(self, model: Model):
        """`with edit.applied(model):` the edit is applied inside the block and reverted on exit, exceptions
        included."""
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    def save(self, path: str | Path) -> Path:
        """A safetensors file: the factors, and metadata (method, parameters, family, base hashes, a content hash
        that `load_edit` verifies). Written atomically."""
        header, tensors = self._header(), self._tensors()
        metadata = {"localize_edit": json.dumps(header, sort_keys=True), "content_hash": self.key}
        return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def to_lora(self, path: str | Path) -> Path:
        """The edit as a LoRA in diffusers' PEFT format (`<component>.<module>.lora_A.weight` = down,
        `lora_B.weight` = up, scale 1), loadable with `pipeline.load_lora_weights`; exact up to float32 rounding."""
        tensors = {}
        for address, update in self.updates.items():
            module, _, kind = address.rpartition(".")
            if kind != "weight":
                raise ValueError(f"{address}: only weight matrices can be exported as LoRA layers")
            tensors[f"{module}.lora_A.weight"] = update.down.contiguous()
            tensors[f"{module}.lora_B.weight"] = update.up.contiguous()
        return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def _content_hash(header: dict, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_edit(path: str | Path) -> Edit:
    """An edit saved by `Edit.save`; an `EditMismatchError` if the file was altered after saving."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no edit file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for truncated or foreign files
        raise EditMismatchError(f"{path} is not a readable localize edit file (a safetensors file written by "
                                f"Edit.save): {error}") from None
    if "localize_edit" not in metadata:
        raise EditMismatchError(f"{path} is not a localize edit file (no localize_edit metadata)")
    header = json.loads(metadata["localize_edit"])
    if header.get("format") != FORMAT:
        raise EditMismatchError(f"{path}: unsupported edit format {header.get('format')!r}; expected {FORMAT}")
    if _content_hash(header, tensors) != metadata.get("content_hash"):
        raise EditMismatchError(f"{path} was modified after it was saved (its content hash does not match)")
    updates = {address: WeightUpdate(tensors[f"{address}:up"], tensors[f"{address}:down"], base_hash)
               for address, base_hash in header["base_hashes"].items()}
    return Edit(header["method"], header["family"], header["params"], updates, header["seconds"], header["info"])


def compose(*edits: Edit) -> Edit:
    """One edit that applies all of `edits`, computed on the same base: updates of a shared weight add up (their
    factors are concatenated, so the result stays an exact low-rank LoRA)."""
    if not edits:
        raise ValueError("compose needs at least one edit")
    families = {edit.family for edit in edits}
    if len(families) > 1:
        raise EditMismatchError(f"cannot compose edits of different model families: {sorted(families)}")
    updates: dict[str, WeightUpdate] = {}
    for edit in edits:
        for address, update in edit.updates.items():
            if address not in updates:
                updates[address] = update
                continue
            first = updates[address]
            if first.base_hash != update.base_hash:
                raise EditMismatchError(f"cannot compose: the edits saw different base weights for {address}; "
                                        "compose edits computed on the same model, or apply them one after another")
            updates[address] = first.then(update)
    return Edit("+".join(edit.method for edit in edits), families.pop(),
                {"edits": [{"method": e.method, "params": e.params} for e in edits]}, updates,
                sum(edit.seconds for edit in edits))
