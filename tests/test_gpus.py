"""One job per GPU: claims are exclusive, released when a job ends, waited for when every GPU is held; the launcher
`gpus` composes; `cuda:free` outside a job is a clear error."""

import threading
import time

import pytest
from omegaconf import OmegaConf
from test_cli import localize

import localize.gpus as gpus
from localize.jobs import Job


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    monkeypatch.setattr(gpus, "visible_gpus", lambda: 2)
    return tmp_path / "locks"


def test_claims_are_exclusive_and_released_when_the_job_ends(two_gpus):
    with gpus.claimed_gpu(two_gpus) as first:
        assert gpus.resolve_device(gpus.FREE) == first == "cuda:0"
        with gpus.claimed_gpu(two_gpus) as second:
            assert second == "cuda:1" and gpus.resolve_device(gpus.FREE) == "cuda:1"
        assert gpus.resolve_device(gpus.FREE) == "cuda:0"
    with gpus.claimed_gpu(two_gpus) as again:
        assert again == "cuda:0"
    assert gpus.resolve_device("cuda:1") == "cuda:1" and gpus.resolve_device(None) is None


def test_a_job_waits_while_every_gpu_is_held(two_gpus):
    got = []

    def third_job():
        with gpus.claimed_gpu(two_gpus, poll_seconds=0.01) as device:
            got.append(device)

    with gpus.claimed_gpu(two_gpus), gpus.claimed_gpu(two_gpus):
        waiting = threading.Thread(target=third_job)
        waiting.start()
        time.sleep(0.2)
        assert got == []  # both GPUs held
    waiting.join(timeout=5)
    assert got == ["cuda:0"]


def record_device(cfg, out_dir):
    from localize.loading import model_from_config  # noqa: F401 (what a job uses to build its model)
    return gpus.resolve_device(cfg.model.device), cfg.model.device


def test_a_job_with_cuda_free_runs_on_its_claimed_gpu_and_keeps_its_config(two_gpus, monkeypatch, tmp_path):
    monkeypatch.setattr(gpus, "LOCK_DIR", two_gpus)
    job = Job(dict, f"{__name__}:record_device")
    cfg = OmegaConf.create({"model": {"device": gpus.FREE}})
    with gpus.claimed_gpu(two_gpus):  # another job holds GPU 0
        assert job.run(cfg, tmp_path) == ("cuda:1", gpus.FREE)  # the saved config keeps cuda:free
    with pytest.raises(RuntimeError, match="claimed by a command-line job"):
        gpus.resolve_device(gpus.FREE)


def test_no_visible_gpu_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(gpus, "visible_gpus", lambda: 0)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible; use model.device=cpu"), gpus.claimed_gpu(tmp_path):
        pass


def test_the_gpus_launcher_runs_one_worker_per_visible_gpu(tmp_path):
    result = localize("layers", "hydra/launcher=gpus", "--cfg", "hydra", "--resolve", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher" in result.stdout
    assert "n_jobs: 1" in result.stdout  # no GPU here: one worker
