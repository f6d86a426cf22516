"""The corrupted run: Gaussian noise on the token embeddings of the attribute's words, in every text encoder.

Noise std = `scale` x the empirical std of the encoder's token embeddings of the attribute phrases being
traced (all entries of their embedding vectors; ROME's convention: 3x the std of the subjects' embeddings),
or an absolute `std`. Measured over the attributes, not the whole vocabulary: in a model trained on a small
world (the organism) most vocabulary rows keep their initial scale, and the words in use are twice as large.
Each unit (prompt x seed) draws its own noise, seeded by its generation seed and the encoder's index, so a
unit's result never depends on the rest of the batch.
"""

from __future__ import annotations

from localize.model import Model
from localize.patches import Patch
from localize.tokens import phrase_positions


def embedding_std(model: Model, encoder: int, phrases) -> float:
    """Std of all entries of text encoder `encoder`'s token embeddings of the (distinct) `phrases`' tokens."""
    tokenizer = model.tokenizers[encoder]
    ids = [i for phrase in dict.fromkeys(phrases) for i in tokenizer(phrase, add_special_tokens=False).input_ids]
    if not ids:
        raise ValueError(f"no attribute tokens to measure the embedding std on (phrases {list(phrases)})")
    return model.text_encoder_embeddings(encoder).weight[ids].detach().float().std().item()


def noise_stds(model: Model, attributes, scale: float = 3.0, std: float | None = None) -> list[float]:
    """The noise std of each text encoder: `std` if given, else `scale` x the std of the attributes' embeddings."""
    for value, what in ((scale, "noise scale"), (std, "noise std")):
        if value is not None and not value > 0:
            raise ValueError(f"{what} must be > 0, got {value!r}")
    if std is not None:
        return [std] * len(model.text_encoders)
    return [scale * embedding_std(model, e, attributes) for e in range(len(model.text_encoders))]


def attribute_positions(model: Model, prompt: str, attribute: str) -> list[list[int]]:
    """The attribute's token positions in `prompt`, per text encoder (each with its own tokenizer)."""
    return [phrase_positions(tokenizer, prompt, attribute) for tokenizer in model.tokenizers]


def corruption_patches(positions: list[list[int]], stds: list[float], seed: int, rows) -> list[Patch]:
    """Noise on the embeddings of `positions[e]` of encoder e, in the prompt rows `rows` (conditional half)."""
    return [
        Patch(f"text_encoder.{e}.embeddings", "noise", tokens=tuple(tokens), std=std, seed=_noise_seed(seed, e),
              rows=tuple(rows), branch="cond")
        for e, (tokens, std) in enumerate(zip(positions, stds, strict=True))
    ]


def _noise_seed(seed: int, encoder: int) -> int:
    return (int(seed) * 1_000_003 + encoder) % 2**63
