"""Closed-form editing: one ridge solver serving LOCOEDIT, DiffQuickFix, TIME, UCE, ReFACT and neuron ablation.

`edit(model, method, **params) -> Edit`; `Edit.apply`, `revert`, `save`, `to_lora`; `load_edit`, `compose`.
"""

from localize.lazy import lazy_exports

_EXPORTS = {
    "METHODS": "locoedit.api",
    "Edit": "locoedit.edits",
    "EditMismatchError": "locoedit.edits",
    "IllConditionedError": "locoedit.solver",
    "RidgeProblem": "locoedit.solver",
    "compose": "locoedit.edits",
    "edit": "locoedit.api",
    "load_edit": "locoedit.edits",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
