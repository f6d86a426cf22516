"""Job outputs: tidy tables and the resolved config, written atomically into the job's output directory.

A job's directory lists what its last run wrote in `.outputs` (paths relative to it; Hydra's own `.hydra/` and
`*.log` files aside), so the next run there first removes exactly those files: no stale figure or table of an
earlier config survives, and no file the job did not write is touched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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


MANIFEST = ".outputs"
FINISHED_MARKERS = ("results.parquet", "config.yaml")


def _stamps(out_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Each file under `out_dir` a job may have written (no hidden part, no top-level log): its inode, size and
    modification time."""
    stamps = {}
    for path in out_dir.rglob("*"):
        name = path.relative_to(out_dir)
        if path.is_file() and not any(part.startswith(".") for part in name.parts) and not (
                len(name.parts) == 1 and name.suffix == ".log"):
            stat = path.stat()
            stamps[name.as_posix()] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return stamps


@contextmanager
def fresh_outputs(out_dir: Path) -> Iterator[None]:
    """Run a job in `out_dir`: first remove what the previous run there wrote (its `.outputs` list, and the
    finished markers results.parquet and config.yaml), then, however the job ends, list what it wrote."""
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    previous = manifest.read_text().splitlines() if manifest.is_file() else []
    for name in {*previous, *FINISHED_MARKERS}:
        path = out_dir / name
        if path.resolve().is_relative_to(out_dir.resolve()):
            path.unlink(missing_ok=True)
    before = _stamps(out_dir) if out_dir.is_dir() else {}

    def list_written() -> None:
        if out_dir.is_dir():
            written = sorted(name for name, stamp in _stamps(out_dir).items() if before.get(name) != stamp)
            atomic_write(manifest, lambda tmp: tmp.write_text("".join(f"{name}\n" for name in written)))

    try:
        yield
    except BaseException:
        with suppress(OSError):  # the job's own error is the one to see
            list_written()
        raise
    list_written()


def config_columns(cfg: DictConfig) -> dict:
    """The resolved config flattened to dotted keys, for the config-value columns of a results table."""
    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".")
    return {key: value for key, value in flat.iloc[0].items() if not isinstance(value, list)}


def write_results(table: pd.DataFrame, cfg: DictConfig, out_dir: Path) -> Path:
    """`results.parquet` (the table plus one column per config value) and `config.yaml` (resolved)."""
    table = table.assign(**{key: value for key, value in config_columns(cfg).items() if key not in table})
    atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True)))
    return atomic_write(out_dir / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))


def listed(values) -> str:
    """A list cell of a results table (a list, or the array parquet reads it back as) as text: "6, 7"."""
    return ", ".join(map(str, values))
