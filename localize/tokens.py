"""Token positions in encoded prompts, and TIME's source -> destination alignment.

Positions index the padded sequence the text encoder sees (CLIP: 0 is `<|startoftext|>`; T5 has no start
token), so they can be used directly as a patch's `tokens`.
"""

from __future__ import annotations

from collections.abc import Callable


class EncoderTokenizer:
    """A tokenizer as the family's encoding uses it: `model_max_length` is the length it encodes (IF's pipeline
    fixes 77 whatever its T5 tokenizer says), and each text first becomes what the encoder receives
    (`prompt_text`: IF lowercases it), so positions computed through it index what the encoder sees. Everything
    else is the wrapped tokenizer's."""

    def __init__(self, tokenizer, model_max_length: int, prompt_text: Callable[[str], str] | None = None):
        self.tokenizer, self.model_max_length, self.prompt_text = tokenizer, model_max_length, prompt_text

    def __call__(self, text, *args, **kwargs):
        if self.prompt_text is not None:
            text = self.prompt_text(text) if isinstance(text, str) else [self.prompt_text(t) for t in text]
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


SPAN_PAIRINGS = ("last", "trim")  # `subject_span`: a longer source end span paired with the last position, or cut


def token_ids(tokenizer, prompt: str, limit: int | None = None) -> list[int]:
    """The prompt's ids with special tokens, unpadded; an error if it is longer than the encoder takes.

    `limit` defaults to the tokenizer's `model_max_length` (77 for every family's text encoder).
    """
    ids = tokenizer(prompt, add_special_tokens=True, verbose=False).input_ids
    limit = limit or tokenizer.model_max_length
    if len(ids) > limit:
        raise ValueError(f"prompt {prompt!r} is {len(ids)} tokens long; the text encoder takes at most {limit}")
    return ids


def _phrase_ids(tokenizer, phrase: str) -> list[int]:
    ids = tokenizer(phrase, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"phrase {phrase!r} has no tokens")
    return ids


def phrase_positions(tokenizer, prompt: str, phrase: str, occurrence: int = 0) -> list[int]:
    """Positions of all tokens of `phrase` in `prompt` (its `occurrence`-th appearance, 0-based)."""
    ids, needle = token_ids(tokenizer, prompt), _phrase_ids(tokenizer, phrase)
    starts = [i for i in range(len(ids) - len(needle) + 1) if ids[i : i + len(needle)] == needle]
    if occurrence >= len(starts):
        found = f"{len(starts)} time(s)" if starts else "not at all"
        raise ValueError(f"phrase {phrase!r} occurs {found} in prompt {prompt!r} (as whole tokens); "
                         f"occurrence {occurrence} requested")
    return list(range(starts[occurrence], starts[occurrence] + len(needle)))


def last_subject_token(tokenizer, prompt: str, subject: str) -> int:
    """Position of the last token of `subject`'s first appearance in `prompt`."""
    return phrase_positions(tokenizer, prompt, subject)[-1]


def eos_span(tokenizer, prompt: str) -> list[int]:
    """Positions of the end-of-text token and all padding after it, up to the encoder's length."""
    ids = token_ids(tokenizer, prompt)
    return list(range(len(ids) - 1, tokenizer.model_max_length))


def align_tokens(tokenizer, source: str, destination: str) -> list[int]:
    """TIME's alignment: for each of the encoder's positions in `source`, the `destination` position it maps to.

    The source's tokens (start and end tokens included) are matched in order to their first unused equal
    token in the destination ("an" counts as "a"), so "a pack of roses" -> "a pack of blue roses" sends
    "roses" to "roses" and skips "blue"; positions after the source's end map to consecutive destination
    positions, clamped to the last one. Returns `model_max_length` destination positions.
    """
    length = tokenizer.model_max_length
    article = tokenizer("a", add_special_tokens=False).input_ids
    an = tokenizer("an", add_special_tokens=False).input_ids

    def normalized(ids: list[int]) -> list[int]:
        return [article[0] if [t] == an else t for t in ids]

    src, dst = normalized(token_ids(tokenizer, source)), normalized(token_ids(tokenizer, destination))
    mapping, j = [], 0
    for token in src:
        while j < len(dst) and dst[j] != token:
            j += 1
        if j == len(dst):
            raise ValueError(f"cannot align source {source!r} to destination {destination!r}: token "
                             f"{tokenizer.convert_ids_to_tokens(token)!r} has no match in order; the destination "
                             "must contain the source's words in the same order")
        mapping.append(j)
        j += 1
    mapping += [min(p, length - 1) for p in range(j, j + length - len(mapping))]
    return mapping


def final_span(tokenizer, source: str, destination: str, length: int | None = None) -> tuple[list[int], list[int]]:
    """UCE's alignment: each prompt's last word token and everything after it (end token, padding), trimmed to a
    common length; returns (source positions, destination positions), paired in order."""
    length = length or tokenizer.model_max_length
    starts = [len(token_ids(tokenizer, prompt)) - 2 for prompt in (source, destination)]
    if min(starts) < 0:
        raise ValueError(f"prompt {(source, destination)[starts.index(min(starts))]!r} has no word token")
    size = length - max(starts)
    return list(range(starts[0], starts[0] + size)), list(range(starts[1], starts[1] + size))


def subject_span(tokenizer, source: str, destination: str, source_subject: str | None = None,
                 destination_subject: str | None = None, length: int | None = None, pairing: str = "trim"
                 ) -> tuple[list[int], list[int]]:
    """DiffQuickFix's positions: the last subject token (the last word token when no subject is given), then the
    end token and the padding after it, in each prompt; returns (source positions, destination positions),
    paired in order. Where the source's end span is the longer (a shorter source prompt), `pairing="last"` (the
    DiffQuickFixRelease notebook's) keeps all of it and pairs its extra positions with the destination's last
    position; `"trim"` drops them. A longer destination span is trimmed to the source's either way."""
    if pairing not in SPAN_PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; valid: {', '.join(SPAN_PAIRINGS)}")
    length = length or tokenizer.model_max_length
    ends = [len(token_ids(tokenizer, prompt)) - 1 for prompt in (source, destination)]
    subjects = [end - 1 if subject is None else last_subject_token(tokenizer, prompt, subject)
                for prompt, subject, end in ((source, source_subject, ends[0]),
                                             (destination, destination_subject, ends[1]))]
    source_span = list(range(ends[0], length))
    destination_span = list(range(ends[1], length))[:len(source_span)]
    if pairing == "trim":
        source_span = source_span[:len(destination_span)]
    destination_span += [length - 1] * (len(source_span) - len(destination_span))
    return [subjects[0], *source_span], [subjects[1], *destination_span]
