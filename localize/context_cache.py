"""Text contexts kept by prompt, so repeated edits (a UCE preservation set, a debiasing loop, a sweep) encode
each prompt once.

A cache belongs to one model. Its entries are valid for one state of the text side (the text encoders and the
UNet's own text projection): every parameter's storage, version counter, dtype and device. Any in-place change
(an applied text-encoder edit, a revert, `.to(...)`) changes that state and empties the cache. Entries are
evicted least recently used first once they hold more than `max_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch


def parameter_state(modules: Sequence[torch.nn.Module]) -> tuple[Hashable, ...]:
    """What identifies the modules' weights as they are now, without reading them."""
    return tuple((p.data_ptr(), p._version, p.dtype, str(p.device))
                 for module in modules for p in module.parameters())


# transformers keeps these on a text encoder's layers once hidden states were asked for (SD-XL asks); they only
# collect outputs and change nothing.
_OBSERVING_HOOK_MODULES = ("transformers.utils.output_capturing",)


def _changing(hooks) -> bool:
    return any(getattr(hook, "__module__", None) not in _OBSERVING_HOOK_MODULES for hook in hooks.values())


def has_hooks(modules: Sequence[torch.nn.Module]) -> bool:
    """Whether a forward hook could change what the modules compute (then nothing is cached or read)."""
    globals_ = torch.nn.modules.module
    if globals_._global_forward_hooks or globals_._global_forward_pre_hooks:
        return True
    return any(_changing(m._forward_hooks) or _changing(m._forward_pre_hooks)
               for module in modules for m in module.modules())


class ContextCache:
    """Prompt -> context [tokens, features], for one state of the text side."""

    def __init__(self, max_bytes: int = 2**30):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._state: tuple[Hashable, ...] | None = None
        self._bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def contexts(self, state: tuple[Hashable, ...], prompts: Sequence[str],
                 encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Contexts of `prompts` (N x tokens x features), encoding only those not cached for `state`, as one
        batch."""
        if state != self._state:
            self.clear()
            self._state = state
        missing = [p for p in dict.fromkeys(prompts) if p not in self._entries]
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, encode(missing), strict=True)) if missing else {}
        found = [fresh[p] if p in fresh else self._entries[p] for p in prompts]
        for prompt in prompts:
            if prompt in self._entries:
                self._entries.move_to_end(prompt)
        for prompt, context in fresh.items():
            self._store(prompt, context)
        return torch.stack(found)

    def _store(self, prompt: str, context: torch.Tensor) -> None:
        size = context.numel() * context.element_size()
        if size > self.max_bytes:
            return
        self._entries[prompt] = context
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()
