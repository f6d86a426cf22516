"""`edit(model, method, **params)`: compute an edit with one of the methods, timed, leaving the model untouched."""

from __future__ import annotations

import importlib
import inspect
import json
import time as clock

from localize.model import Model
from locoedit.edits import Edit
from locoedit.params import FUNCTIONS, UCE_MODES, check_params, function_of
from locoedit.prompts import check_choice


def _function(method: str, mode: str = "erase"):
    module, name = function_of(method, mode)
    return getattr(importlib.import_module(f"locoedit.{module}"), name)


def _uce(model: Model, mode: str = "erase", **params):
    """UCE: `erase` / `moderate` (`locoedit.methods.uce`), `debias` (`locoedit.debias.debias`) or `joint` (every
    term in one solve, `locoedit.joint.uce_joint`)."""
    check_choice("UCE mode", mode, tuple(FUNCTIONS["uce"]))
    return _function("uce", mode)(model, **({"mode": mode} if mode in UCE_MODES else {}), **params)


METHODS = {method: _uce if method == "uce" else _function(method) for method in FUNCTIONS}


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, (list, tuple, range)):
            return [_jsonable(v) for v in value]
        return repr(value)


def edit(model: Model, method: str, **params) -> Edit:
    """Compute a `method` edit (time, uce, locoedit, diffquickfix, refact, neurons) of `model` with `params`; the
    model's weights are not changed (`Edit.apply` does that). Unknown parameters are an error."""
    valid = check_params(method, params).names
    signature = inspect.signature(_function(method, params.get("mode", "erase") if method == "uce" else "erase"))
    bound = signature.bind_partial(model, **{k: v for k, v in params.items() if k in valid})
    bound.apply_defaults()
    recorded = {name: _jsonable(value) for name, value in bound.arguments.items() if name != "model"}
    if method == "uce":
        recorded["mode"] = params.get("mode", "erase")
    start = clock.perf_counter()
    result = METHODS[method](model, **params)
    seconds = clock.perf_counter() - start
    updates, info = result if isinstance(result, tuple) else (result, {})
    return Edit(method, model.family, recorded, updates, seconds, _jsonable(info))


def _typed(name: str, method: str, function, mode: str | None = None):
    """`edit(model, method, ...)` as a function with `function`'s own parameters (signature help in notebooks)."""
    signature = inspect.signature(function)

    def typed(*args, **kwargs) -> Edit:
        bound = signature.bind(*args, **kwargs)
        model = bound.arguments.pop("model")
        return edit(model, method, **({"mode": mode} if mode else {}), **bound.arguments)

    typed.__signature__ = signature.replace(return_annotation=Edit)
    typed.__name__ = typed.__qualname__ = name
    typed.__module__ = "locoedit"
    typed.__doc__ = (f"The {name} edit of `model` as an `Edit` (the model is not changed; `Edit.apply` does that); "
                     f"`locoedit.edit(model, {method!r}{f', mode={mode!r}' if mode else ''}, ...)`.\n\n"
                     f"{inspect.getdoc(function)}")
    return typed


time = _typed("time", "time", _function("time"))
uce = _typed("uce", "uce", _function("uce"))
uce_debias = _typed("uce_debias", "uce", _function("uce", "debias"), mode="debias")
uce_joint = _typed("uce_joint", "uce", _function("uce", "joint"), mode="joint")
locoedit = _typed("locoedit", "locoedit", _function("locoedit"))
diffquickfix = _typed("diffquickfix", "diffquickfix", _function("diffquickfix"))
refact = _typed("refact", "refact", _function("refact"))
neurons = _typed("neurons", "neurons", _function("neurons"))
