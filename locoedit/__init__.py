"""Closed-form editing: one ridge solver serving LOCOEDIT, DiffQuickFix, TIME, UCE, ReFACT and neuron ablation.

Each method as a function with its own parameters, returning an `Edit`: `time(model, source, destination)`,
`uce`, `uce_debias`, `uce_joint`, `locoedit`, `diffquickfix`, `refact`, `neurons`; `edit(model, method,
**params)` is the same by name (configs use it). `Edit.apply`, `revert`, `save`, `to_lora`; `load_edit`,
`compose`; `Model.revert_all`.
"""

from localize.lazy import lazy_exports

_EXPORTS = {
    "METHODS": "locoedit.api",
    "Edit": "locoedit.edits",
    "EditMismatchError": "locoedit.edits",
    "IllConditionedError": "locoedit.solver",
    "RidgeProblem": "locoedit.solver",
    "compose": "locoedit.edits",
    "diffquickfix": "locoedit.api",
    "edit": "locoedit.api",
    "load_edit": "locoedit.edits",
    "locoedit": "locoedit.api",
    "neurons": "locoedit.api",
    "refact": "locoedit.api",
    "time": "locoedit.api",
    "uce": "locoedit.api",
    "uce_debias": "locoedit.api",
    "uce_joint": "locoedit.api",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
