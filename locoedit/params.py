"""Edit method parameters, checked without importing torch: which function computes each method, the names it
takes, and the values that need no model.

The command line checks an edit config's `params` before any model loads, in well under a second: the method
functions' parameters are read from their source (`ast`), not by importing the modules (which import torch and
diffusers, seconds), and `locoedit.api` imports the same functions from this table, so the two cannot drift.
The options' valid values live here too; the method functions check them with the same tables.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from localize.checks import check_guidance, check_seeds, check_steps
from locoedit.prompts import augmented_pairs, check_choice, check_lam, preserved_prompts

UCE_MODES = ("erase", "moderate")  # `locoedit.methods.uce`; `debias` and `joint` have functions of their own
ALIGNMENTS = ("time", "final", "all")  # LOCOEDIT's `alignment`: which source tokens map onto which destination's
PRESERVE_TOKENS = ("all", "final")  # `pair_prompts` alignments of preserved prompts
MODERATIONS = ("authors", "partial")
SEARCHES = ("bracket", "authors")
BIAS_COUNTS = ("once", "twice")
CONCEPT_TOKENS = ("final", "last")  # a DiT's UCE keys: last word and end span (this lab's), last word (authors')
REFACT_OBJECTIVES = ("contrastive", "conditioning")
SHIFT_SITES = ("subject", "update")
COVARIANCE_TOKENS = ("all", "attended")
# parameter name -> valid values, in every method taking it
CHOICES = {"alignment": ALIGNMENTS, "preserve_tokens": PRESERVE_TOKENS, "moderation": MODERATIONS,
           "search": SEARCHES, "bias": BIAS_COUNTS, "objective": REFACT_OBJECTIVES, "shift_at": SHIFT_SITES,
           "covariance_tokens": COVARIANCE_TOKENS, "concept_tokens": CONCEPT_TOKENS}

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
    takes, none it needs is missing (`given`: names the caller supplies later, e.g. an evaluation's per-case
    source and destination), and the values that need no model are valid (`check_values`). Returns the
    function's parameters."""
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
    check_values(method, mode, params)
    return found


def check_strength(mode: str, strength: float) -> None:
    """UCE's `strength`: 1 for an erase (concepts fully onto their guides), in (0, 1) for a moderation."""
    if mode == "erase" and strength != 1.0:
        raise ValueError(f"erase maps concepts fully onto their guides (strength 1); got strength={strength!r}: "
                         "use mode=moderate for a partial erase")
    if mode == "moderate" and not 0 < strength < 1:
        raise ValueError(f"moderate needs 0 < strength < 1, got {strength!r}")


def check_values(method: str, mode: str, params: dict) -> None:
    """The given values that need no model, with the checks the method functions run themselves: options,
    `lam`, source and destination prompts (non-empty, paired) and the preserved ones (none also edited), UCE's
    `strength`, and the generation settings of the methods that generate (`steps`, `seeds`, `guidance`, a DiT
    LOCOEDIT's `key_seeds` and `held_out_seeds`)."""
    for name, value in params.items():
        if name in CHOICES:
            check_choice(name, value, CHOICES[name])
    if "lam" in params:
        check_lam(params["lam"])
    if "source" in params and "destination" in params:
        sources, _ = augmented_pairs(params["source"], params["destination"], ())
        preserved_prompts(params.get("preserve", ()), sources)
    if method == "uce" and mode in UCE_MODES and "strength" in params:
        check_strength(mode, params["strength"])
    for name, check in (("steps", check_steps), ("seeds", check_seeds), ("guidance", check_guidance),
                        ("key_seeds", check_seeds), ("held_out_seeds", check_seeds)):
        if params.get(name) is not None and (name != "held_out_seeds" or params[name]):
            check(params[name])
