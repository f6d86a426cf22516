"""Offline tokenizers: the real CLIP BPE vocabulary (shipped inside open_clip) and a T5 vocabulary derived from it.

No hub is reachable, so tokenizers are built from files already on disk:

- `clip_tokenizer(pad_token)` gives exactly `open_clip.tokenize`'s ids (up to the padding token: SD 1.x pads
  with `<|endoftext|>`, SD 2.x and SD-XL's second tokenizer with `!`, id 0, which is open_clip's padding;
  as in the published SD 2.x tokenizer, that pad token is special, so a literal `!!` splits into two `!`).
- `t5_tokenizer()` is a real `T5Tokenizer` (unigram model, T5's special ids: pad 0, eos 1, unk 2, 100
  sentinels) whose pieces come from the CLIP vocabulary, ranked by merge order. It is NOT DeepFloyd's
  32k SentencePiece vocabulary: ids differ from the published model, so it serves random models only.
"""

from __future__ import annotations

import functools
import gzip
import math

import open_clip
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTokenizer, T5Tokenizer

CLIP_MAX_LENGTH = 77
T5_VOCAB_SIZE = 32000  # pieces before the 100 sentinels, as in T5 v1.1


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The CLIP vocabulary (49408 entries, in id order) and its BPE merges, read from open_clip's file."""
    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1])
    byte_chars = list(bytes_to_unicode().values())
    vocab = (
        byte_chars
        + [c + "</w>" for c in byte_chars]
        + ["".join(pair) for pair in merges]
        + ["<|startoftext|>", "<|endoftext|>"]
    )
    return tuple(vocab), merges


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP tokenizer with the real BPE vocabulary; `pad_token` is SD 1.x's default or `"!"` (SD 2.x)."""
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=list(merges),
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


@functools.lru_cache(maxsize=1)
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    """Unigram pieces: word-initial pieces get SentencePiece's `\u2581` prefix; score -log(rank + 2) by merge rank."""
    vocab, _ = _clip_bpe()
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    pieces: dict[str, float] = {}
    for rank, token in enumerate(vocab[:-2]):
        word_final = token.endswith("</w>")
        body = token[: -len("</w>")] if word_final else token
        try:
            text = bytes(byte_decoder[c] for c in body).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not text.strip():
            continue
        score = -math.log(rank + 2.0)  # Zipf-like log-probability: frequent merges come first
        if len(text) == 1:
            candidates = ("\u2581" + text, text)
        else:
            candidates = ("\u2581" + text,) if word_final else (text,)
        for piece in candidates:
            pieces.setdefault(piece, score)
        if len(pieces) >= T5_VOCAB_SIZE - 3:
            break
    return tuple(pieces.items())


def t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer built offline (see the module docstring for how it differs from DeepFloyd's)."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    return T5Tokenizer(vocab=specials + list(_t5_pieces()), extra_ids=100, model_max_length=CLIP_MAX_LENGTH)
