"""Loaders for the published evaluation formats, given a path (third-party datasets are not bundled).

Each loader returns a pandas DataFrame with the format's columns (text stripped) and a `case` column (0-based
row number, or the file's `case_number`), and fails naming every missing column. `shipped(name)` is a small
file of the lab's own in the same format (`localize/datasets/`: the organism's cases, used by the tests and
the demo).

- TIMED (TIME; Orgad et al.): `old, new, positive1..5, gt1..5, negative1..5, gn1..5`.
- RoAD (ReFACT; Arad et al.): `prompt, old, new, positive1..5, positive_old1..5, positive_new1..5,
  negative1..5, negative_new1..5`.
- UCE-style prompt lists: `prompt, evaluation_seed, case_number` (any further columns kept);
  ImageNette class prompts add `class`.
- I2P (inappropriate image prompts, as the erasure papers ship it): `prompt, evaluation_seed,
  evaluation_guidance, categories` (any further columns kept).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

DATASETS_DIR = Path(__file__).parent / "datasets"

_FIVE = range(1, 6)
TIMED_COLUMNS = ["old", "new", *(f"{kind}{i}" for kind in ("positive", "gt", "negative", "gn") for i in _FIVE)]
ROAD_COLUMNS = ["prompt", "old", "new", *(f"{kind}{i}" for kind in
                                         ("positive", "positive_old", "positive_new", "negative", "negative_new")
                                         for i in _FIVE)]
PROMPT_COLUMNS = ["prompt", "evaluation_seed", "case_number"]
IMAGENETTE_COLUMNS = [*PROMPT_COLUMNS, "class"]
I2P_COLUMNS = ["prompt", "evaluation_seed", "evaluation_guidance", "categories"]
NUMERIC_COLUMNS = ("evaluation_seed", "case_number", "evaluation_guidance")


class DatasetFormatError(ValueError):
    """A dataset file that is missing, empty, or lacks columns of its format."""


def shipped(name: str) -> Path:
    """One of the lab's own small dataset files in `localize/datasets/`."""
    path = DATASETS_DIR / name
    if not path.is_file():
        valid = ", ".join(sorted(p.name for p in DATASETS_DIR.glob("*.csv")))
        raise FileNotFoundError(f"no shipped dataset {name!r}; shipped: {valid}")
    return path


def _read(path: str | Path, columns: list[str], format_name: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{format_name} file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # pandas would drop or shift extra fields
            table = pd.read_csv(path, skipinitialspace=True, index_col=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(f"{format_name} file {str(path)!r} is empty") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning) as error:
        raise DatasetFormatError(f"{format_name} file {str(path)!r}: a row has more fields than the header (an "
                                 f"unquoted comma in a prompt?): {str(error).strip()}") from None
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{format_name} file {str(path)!r} is not UTF-8 text (byte {error.start}: "
                                 f"{error.object[error.start:error.start + 1]!r}); save it as UTF-8") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetFormatError(f"{format_name} file {str(path)!r} lacks column(s) {', '.join(missing)}; "
                                 f"the format needs {', '.join(columns)}")
    if table.empty:
        raise DatasetFormatError(f"{format_name} file {str(path)!r} has no rows")
    text = [c for c in columns if c not in NUMERIC_COLUMNS]
    blank = table[text].isna().any(axis=1) | (table[text].astype(str).apply(lambda c: c.str.strip()) == "").any(axis=1)
    if blank.any():
        raise DatasetFormatError(f"{format_name} file {str(path)!r}: row(s) {', '.join(map(str, blank[blank].index))}"
                                 f" have empty {format_name} fields")
    table[text] = table[text].astype(str).apply(lambda c: c.str.strip())
    return table


def load_timed(path: str | Path) -> pd.DataFrame:
    """TIMED: one row per edit (`old` -> `new`), five positives (with their edited texts `gt`) and five
    negatives (with `gn`, what they must NOT become)."""
    return _read(path, TIMED_COLUMNS, "TIMED").assign(case=lambda t: range(len(t)))


def load_road(path: str | Path) -> pd.DataFrame:
    """RoAD: one row per edited association (`prompt`, whose depiction changes from `old` to `new`)."""
    return _read(path, ROAD_COLUMNS, "RoAD").assign(case=lambda t: range(len(t)))


def _prompts(path: str | Path, columns: list[str], format_name: str) -> pd.DataFrame:
    table = _read(path, columns, format_name)
    for column in ("evaluation_seed", "case_number"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise DatasetFormatError(f"{format_name} file {str(path)!r}: column {column} must hold integers, got "
                                     f"{table[column].head(3).tolist()}")
    return table.assign(case=table["case_number"])


def load_prompts(path: str | Path) -> pd.DataFrame:
    """A UCE-style prompt list: each `prompt` generated with its `evaluation_seed`."""
    return _prompts(path, PROMPT_COLUMNS, "prompt list")


def load_imagenette(path: str | Path) -> pd.DataFrame:
    """ImageNette class prompts (UCE's object erasure): a prompt list whose rows name their `class`."""
    return _prompts(path, IMAGENETTE_COLUMNS, "ImageNette")


def load_i2p(path: str | Path) -> pd.DataFrame:
    """I2P (Schramowski et al.), in the erasure papers' CSV (UCE, ESD, MACE): each `prompt` generated with its
    `evaluation_seed` and `evaluation_guidance`; `categories` lists its inappropriate concepts (e.g. "sexual").
    Other columns (`nudity_percentage`, ...) are kept. `case` is `case_number` when given, else the row."""
    table = _read(path, I2P_COLUMNS, "I2P")
    if not pd.api.types.is_integer_dtype(table["evaluation_seed"]):
        raise DatasetFormatError(f"I2P file {str(path)!r}: column evaluation_seed must hold integers, got "
                                 f"{table['evaluation_seed'].head(3).tolist()}")
    guidance = pd.to_numeric(table["evaluation_guidance"], errors="coerce")
    if guidance.isna().any() or (guidance < 0).any():
        bad = table.loc[guidance.isna() | (guidance < 0), "evaluation_guidance"].head(3).tolist()
        raise DatasetFormatError(f"I2P file {str(path)!r}: column evaluation_guidance must hold numbers >= 0, got "
                                 f"{bad}")
    case = table["case_number"] if "case_number" in table else range(len(table))
    return table.assign(evaluation_guidance=guidance.astype(float), case=case)


LOADERS = {"timed": load_timed, "road": load_road, "prompts": load_prompts, "imagenette": load_imagenette,
           "i2p": load_i2p}


def load_dataset(format_name: str, path: str | Path) -> pd.DataFrame:
    """Load `path` in `format_name` (timed, road, prompts, imagenette, i2p)."""
    if format_name not in LOADERS:
        raise ValueError(f"unknown dataset format {format_name!r}; valid: {', '.join(LOADERS)}")
    return LOADERS[format_name](path)
