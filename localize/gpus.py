"""One job per GPU on one machine: `model.device=cuda:free` makes a job claim a visible GPU that no other job of
this machine holds, for as long as it runs (`scorer.device=cuda:free` then means the same GPU).

A sweep with the local launcher (`hydra/launcher=gpus`: joblib, one worker per visible GPU) then spreads its
jobs over the GPUs, each job on its own, whichever worker runs it and in whatever order jobs finish. A claim is
an exclusive lock (`fcntl.flock`) on `<lock_dir>/gpu<i>.lock`; the operating system drops it when the job ends or
its process dies, so a crashed job never holds a GPU. With every GPU held, a job waits for one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

FREE = "cuda:free"
LOCK_DIR = Path(tempfile.gettempdir()) / f"localize-gpus-{os.getuid()}"
_claimed: ContextVar[str | None] = ContextVar("claimed_gpu", default=None)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@contextmanager
def claimed_gpu(lock_dir: Path | None = None, poll_seconds: float = 5.0) -> Iterator[str]:
    """Inside, the device "cuda:<i>" of a visible GPU this job holds alone (the lowest free index); locks in
    `lock_dir` (default `LOCK_DIR`)."""
    count = visible_gpus()
    if count == 0:
        raise RuntimeError(f"model.device={FREE} claims a GPU, but no CUDA GPU is visible; use model.device=cpu")
    lock_dir = lock_dir or LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "w")  # noqa: SIM115 (held until the job ends)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            token = _claimed.set(f"cuda:{index}")
            try:
                yield f"cuda:{index}"
            finally:
                _claimed.reset(token)
                handle.close()  # releases the lock
            return
        time.sleep(poll_seconds)


def resolve_device(device: str | None) -> str | None:
    """`device`, with `cuda:free` replaced by the GPU the running job claimed (the config keeps `cuda:free`, so a
    re-run sweep sees the same config whichever GPU ran it)."""
    if device != FREE:
        return device
    claimed = _claimed.get()
    if claimed is None:
        raise RuntimeError(f"device={FREE} is claimed by a command-line job (`localize JOB model.device={FREE}`); "
                           "in Python, wrap the work in `with localize.gpus.claimed_gpu() as device:`")
    return claimed
