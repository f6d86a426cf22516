"""The shipped organism: its weight files (float16 safetensors in `weights/`) and how they load.

Files: `organism.json` (UNet, text-encoder and scheduler configs, and the seed of the untrained token rows),
`unet.safetensors`, `text_encoder.safetensors`, and the CLIP scorer's `scorer.safetensors` with its open_clip
model config `organism-clip.json` (registered with open_clip under that name); `sha256.json` holds the sha256
of each file the training script exported, checked on every read (a flipped byte is an error naming the file).
The scorer and the text encoder are one CLIP (`localize.organism.shared_clip`); both files store their token
embedding sparsely. `scripts/train_organism.py` writes them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import diffusers
import open_clip
import torch
from diffusers import UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from localize.organism.pipeline import OrganismPipeline
from localize.organism.shared_clip import HF_EMBEDDING, OPEN_CLIP_EMBEDDING, unpack_embedding
from localize.results import atomic_write
from localize.vocab import clip_tokenizer

WEIGHTS_DIR = Path(__file__).parent / "weights"
CONFIG_FILE, UNET_FILE, TEXT_ENCODER_FILE = "organism.json", "unet.safetensors", "text_encoder.safetensors"
SCORER_NAME, SCORER_FILE = "organism-clip", "scorer.safetensors"
SCORER_CONFIG_FILE = f"{SCORER_NAME}.json"  # open_clip names a registered config after its file
CHECKSUM_FILE = "sha256.json"
_RETRAIN = "reinstall localize-lab or retrain it with `python scripts/train_organism.py`"


class OrganismWeightsError(RuntimeError):
    """A weight or config file of the organism is missing, unreadable or does not fit its model."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_checksum(path: Path) -> None:
    """Add `path`'s sha256 to its directory's `sha256.json` (the training script, after each export)."""
    manifest = path.parent / CHECKSUM_FILE
    sums = json.loads(manifest.read_text()) if manifest.is_file() else {}
    sums[path.name] = _digest(path)
    atomic_write(manifest, lambda tmp: tmp.write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n"))


def _existing(path: Path) -> Path:
    """`path`, present and, when its directory's `sha256.json` lists it, with that checksum."""
    if not path.is_file():
        raise OrganismWeightsError(f"the organism's file {path} is missing; {_RETRAIN}")
    manifest = path.parent / CHECKSUM_FILE
    expected = json.loads(manifest.read_text()).get(path.name) if manifest.is_file() else None
    if expected is not None and _digest(path) != expected:
        raise OrganismWeightsError(f"the organism's file {path} is corrupted: its sha256 differs from the one in "
                                   f"{manifest}; {_RETRAIN}")
    return path


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(_existing(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise OrganismWeightsError(f"the organism's weights file {path} is corrupted ({err}); {_RETRAIN}") from err


def read_json(path: Path) -> dict:
    try:
        return json.loads(_existing(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OrganismWeightsError(f"the organism's config file {path} is corrupted ({err}); {_RETRAIN}") from err


def _load_into(module: torch.nn.Module, path: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    try:
        module.load_state_dict(read_tensors(path) if tensors is None else tensors)
    except RuntimeError as err:
        raise OrganismWeightsError(f"{path} does not fit the organism's config ({err}); {_RETRAIN}") from err


def embedding_seed(config: dict, path: Path) -> int:
    if "token_embedding_seed" not in config:
        raise OrganismWeightsError(f"{path} has no token_embedding_seed; {_RETRAIN}")
    return int(config["token_embedding_seed"])


def text_encoder(weights_dir: Path = WEIGHTS_DIR) -> CLIPTextModel:
    """The organism's frozen CLIP text encoder, float32 on the CPU."""
    weights_dir = Path(weights_dir)
    config = read_json(weights_dir / CONFIG_FILE)
    text_config = CLIPTextConfig(**config["text_encoder"])
    path = weights_dir / TEXT_ENCODER_FILE
    tensors = unpack_embedding(read_tensors(path), HF_EMBEDDING, text_config.vocab_size, text_config.hidden_size,
                               embedding_seed(config, weights_dir / CONFIG_FILE))
    model = CLIPTextModel(text_config)
    _load_into(model, path, tensors)
    return model.eval()


def organism_pipeline(weights_dir: Path = WEIGHTS_DIR) -> OrganismPipeline:
    """The trained organism as a float32 CPU `OrganismPipeline`."""
    weights_dir = Path(weights_dir)
    config = read_json(weights_dir / CONFIG_FILE)
    unet = UNet2DConditionModel.from_config(config["unet"])
    _load_into(unet, weights_dir / UNET_FILE)
    scheduler_config = dict(config["scheduler"])
    scheduler = getattr(diffusers, scheduler_config.pop("_class_name")).from_config(scheduler_config)
    pipeline = OrganismPipeline(unet=unet.eval(), scheduler=scheduler, text_encoder=text_encoder(weights_dir),
                                tokenizer=clip_tokenizer())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def register_scorer_config(weights_dir: Path = WEIGHTS_DIR) -> None:
    """Make `organism-clip` an open_clip model name."""
    open_clip.add_model_config(_existing(Path(weights_dir) / SCORER_CONFIG_FILE))


def load_scorer_into(model: torch.nn.Module, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Load the scorer's weights into an open_clip `organism-clip` model (errors name the file)."""
    weights_dir = Path(weights_dir)
    path = weights_dir / SCORER_FILE
    tensors = read_tensors(path)
    seed = embedding_seed(read_json(weights_dir / CONFIG_FILE), weights_dir / CONFIG_FILE)
    vocab_size, width = model.token_embedding.weight.shape
    _load_into(model, path, unpack_embedding(tensors, OPEN_CLIP_EMBEDDING, vocab_size, width, seed))
