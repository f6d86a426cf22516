"""Job outputs: tidy tables and the resolved config, written atomically into the job's output directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf


class OutputNotWritableError(OSError):
    """An output file whose directory cannot be created or written."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it into place (never half-written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise OutputNotWritableError(f"cannot write {str(path)!r}: its directory is not writable "
                                     f"({error.strerror})") from None
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's private mode would survive the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def config_columns(cfg: DictConfig) -> dict:
    """The resolved config flattened to dotted keys, for the config-value columns of a results table."""
    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".")
    return {key: value for key, value in flat.iloc[0].items() if not isinstance(value, list)}


def write_results(table: pd.DataFrame, cfg: DictConfig, out_dir: Path) -> Path:
    """`results.parquet` (the table plus one column per config value) and `config.yaml` (resolved)."""
    table = table.assign(**{key: value for key, value in config_columns(cfg).items() if key not in table})
    atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True)))
    return atomic_write(out_dir / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
