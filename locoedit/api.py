"""`edit(model, method, **params)`: compute an edit with one of the methods, timed, leaving the model untouched."""

from __future__ import annotations

import inspect
import json
import time as clock

from localize.model import Model
from locoedit import ablation, debias, joint, methods, text_encoder
from locoedit.edits import Edit
from locoedit.prompts import check_choice

UCE_FUNCTIONS = {"debias": debias.debias, "joint": joint.uce_joint}


def _uce(model: Model, mode: str = "erase", **params):
    """UCE: `erase` / `moderate` (`locoedit.methods.uce`), `debias` (`locoedit.debias.debias`) or `joint` (every
    term in one solve, `locoedit.joint.uce_joint`)."""
    check_choice("UCE mode", mode, (*methods.UCE_MODES, *UCE_FUNCTIONS))
    if mode in UCE_FUNCTIONS:
        return UCE_FUNCTIONS[mode](model, **params)
    return methods.uce(model, mode=mode, **params)


METHODS = {
    "time": methods.time,
    "uce": _uce,
    "locoedit": methods.locoedit,
    "diffquickfix": text_encoder.diffquickfix,
    "refact": text_encoder.refact,
    "neurons": ablation.neurons,
}


def _signature(method: str, params: dict) -> inspect.Signature:
    function = METHODS[method]
    if method == "uce":
        function = UCE_FUNCTIONS.get(params.get("mode"), methods.uce)
    return inspect.signature(function)


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, (list, tuple, range)):
            return [_jsonable(v) for v in value]
        return repr(value)


def check_params(method: str, params: dict, given: tuple[str, ...] = ()) -> inspect.Signature:
    """Before any model loads: `method` is known, every parameter name is one it takes, and none it needs is
    missing (`given`: names the caller supplies later, e.g. an evaluation's per-case source and destination).
    Returns the method's signature."""
    if method not in METHODS:
        raise ValueError(f"unknown edit method {method!r}; valid: {', '.join(METHODS)}")
    if method == "uce" and "mode" in params:
        check_choice("UCE mode", params["mode"], (*methods.UCE_MODES, *UCE_FUNCTIONS))
    signature = _signature(method, params)
    valid = [name for name in signature.parameters if name != "model"]
    unknown = sorted(set(params) - set(valid) - ({"mode"} if method == "uce" else set()))
    if unknown:
        raise TypeError(f"{method} takes no parameter(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    missing = [name for name, p in signature.parameters.items() if name != "model" and p.default is p.empty
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in params and name not in given]
    if missing:
        raise TypeError(f"{method} needs parameter(s) {', '.join(missing)}")
    return signature


def edit(model: Model, method: str, **params) -> Edit:
    """Compute a `method` edit (time, uce, locoedit, diffquickfix, refact, neurons) of `model` with `params`; the
    model's weights are not changed (`Edit.apply` does that). Unknown parameters are an error."""
    signature = check_params(method, params)
    valid = [name for name in signature.parameters if name != "model"]
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


time = _typed("time", "time", methods.time)
uce = _typed("uce", "uce", methods.uce)
uce_debias = _typed("uce_debias", "uce", debias.debias, mode="debias")
uce_joint = _typed("uce_joint", "uce", joint.uce_joint, mode="joint")
locoedit = _typed("locoedit", "locoedit", methods.locoedit)
diffquickfix = _typed("diffquickfix", "diffquickfix", text_encoder.diffquickfix)
refact = _typed("refact", "refact", text_encoder.refact)
neurons = _typed("neurons", "neurons", ablation.neurons)
