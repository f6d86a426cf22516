"""`scripts/train_organism.py`: a run interrupted after a checkpoint and resumed exports the same weights
as an uninterrupted run."""

import importlib.util
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

SCRIPT = Path(__file__).parents[1] / "scripts" / "train_organism.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_organism", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def config(train, workdir: Path):
    cfg = OmegaConf.structured(train.TrainConfig(workdir=str(workdir), export_dir=str(workdir / "export"),
                                                 checkpoint_every=2))
    cfg.diffusion.steps, cfg.diffusion.batch_size, cfg.diffusion.warmup = 4, 4, 1
    cfg.clip.steps, cfg.clip.batch_size, cfg.clip.warmup = 4, 8, 1
    return cfg


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stage", ["clip", "diffusion"])
def test_resumed_training_equals_uninterrupted_training(train, tmp_path, monkeypatch, stage):
    stage_fn = {"clip": train.train_clip, "diffusion": train.train_diffusion}[stage]
    straight, resumed = config(train, tmp_path / "straight"), config(train, tmp_path / "resumed")
    if stage == "diffusion":  # it trains on the CLIP stage's exported, frozen text encoder
        for cfg in (straight, resumed):
            train.train_clip(cfg, Path(cfg.workdir), Path(cfg.export_dir), train.torch.device("cpu"))
    stage_fn(straight, Path(straight.workdir), Path(straight.export_dir), train.torch.device("cpu"))

    save = train.Checkpoint.save

    def save_then_crash(self, state):
        save(self, state)
        raise Interrupted

    monkeypatch.setattr(train.Checkpoint, "save", save_then_crash)
    with pytest.raises(Interrupted):
        stage_fn(resumed, Path(resumed.workdir), Path(resumed.export_dir), train.torch.device("cpu"))
    assert train.Checkpoint(Path(resumed.workdir), stage).load()["step"] == 2
    monkeypatch.setattr(train.Checkpoint, "save", save)
    stage_fn(resumed, Path(resumed.workdir), Path(resumed.export_dir), train.torch.device("cpu"))

    files = sorted(p.name for p in Path(straight.export_dir).glob("*.safetensors"))
    assert files
    for name in files:
        a, b = load_file(Path(straight.export_dir) / name), load_file(Path(resumed.export_dir) / name)
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), name
