"""Which function computes each edit method, and its parameter names, read without importing torch.

The command line checks an edit config's `params` before any model loads, in well under a second: the method
functions' parameters are read from their source (`ast`), not by importing the modules (which import torch and
diffusers, seconds). `locoedit.api` imports the same functions from this table, so the two cannot drift.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from locoedit.prompts import check_choice

UCE_MODES = ("erase", "moderate")  # `locoedit.methods.uce`; `debias` and `joint` have functions of their own

FUNCTIONS = {  # method (uce: per mode) -> (module of this package, function name)
    "time": ("methods", "time"),
    "uce": {"erase": ("methods", "uce"), "moderate": ("methods", "uce"), "debias": ("debias", "debias"),
            "joint": ("joint", "uce_joint")},
    "locoedit": ("methods", "locoedit"),
    "diffquickfix": ("text_encoder", "diffquickfix"),
    "refact": ("text_encoder", "refact"),
    "neurons": ("ablation", "neurons"),
}


@dataclass(frozen=True)
class Parameters:
    """A method function's parameters besides `model`, in order, and those without a default."""

    names: tuple[str, ...]
    required: tuple[str, ...]


def function_of(method: str, mode: str = "erase") -> tuple[str, str]:
    """(module, function) computing `method` (UCE: in `mode`)."""
    entry = FUNCTIONS[method]
    return entry[mode] if isinstance(entry, dict) else entry


@cache
def parameters(module: str, function: str) -> Parameters:
    """`function`'s parameters, read from `locoedit/<module>.py`'s source."""
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    with_default = positional[len(positional) - len(args.defaults):] if args.defaults else []
    keyword_only = [a for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None]
    names = [a.arg for a in (*positional, *args.kwonlyargs) if a.arg != "model"]
    required = [a.arg for a in (*positional, *keyword_only) if a.arg != "model" and a not in with_default]
    return Parameters(tuple(names), tuple(required))


def check_params(method: str, params: dict, given: tuple[str, ...] = ()) -> Parameters:
    """Before any model loads: `method` (and a UCE `mode`) is known, every parameter name is one its function
    takes, and none it needs is missing (`given`: names the caller supplies later, e.g. an evaluation's per-case
    source and destination). Returns the function's parameters."""
    check_choice("edit method", method, tuple(FUNCTIONS))
    mode = params.get("mode", "erase") if method == "uce" else "erase"
    if method == "uce":
        check_choice("UCE mode", mode, tuple(FUNCTIONS["uce"]))
    found = parameters(*function_of(method, mode))
    unknown = sorted(set(params) - set(found.names) - ({"mode"} if method == "uce" else set()))
    if unknown:
        raise TypeError(f"{method} takes no parameter(s) {', '.join(unknown)}; valid: {', '.join(found.names)}")
    missing = [name for name in found.required if name not in params and name not in given]
    if missing:
        raise TypeError(f"{method} needs parameter(s) {', '.join(missing)}")
    return found
