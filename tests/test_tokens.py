"""Token positions and TIME's alignment, on the real CLIP vocabulary."""

import pytest

from localize.tokens import align_tokens, eos_span, last_subject_token, phrase_positions, token_ids
from localize.vocab import clip_tokenizer


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_phrase_positions_count_the_start_token(tok):
    prompt = "a painting of a starry night in the style of van gogh"
    assert phrase_positions(tok, prompt, "van gogh") == [11, 12]
    assert tok.convert_ids_to_tokens([token_ids(tok, prompt)[p] for p in (11, 12)]) == ["van</w>", "gogh</w>"]
    assert last_subject_token(tok, prompt, "van gogh") == 12
    assert phrase_positions(tok, "the king of zubrovia", "zubrovia") == [4, 5, 6]  # a word of three BPE tokens
    assert phrase_positions(tok, "a dog and a dog", "dog", occurrence=1) == [5]


def test_eos_span_runs_to_the_encoder_length(tok):
    span = eos_span(tok, "a red rose")
    assert span[0] == 4 and span[-1] == 76


def test_missing_phrase_names_it(tok):
    with pytest.raises(ValueError, match="phrase 'blue' occurs not at all in prompt 'a red rose'"):
        phrase_positions(tok, "a red rose", "blue")


def test_too_long_prompt_is_an_error(tok):
    with pytest.raises(ValueError, match="at most 77"):
        token_ids(tok, "rose " * 80)


def test_time_alignment_skips_inserted_words(tok):
    mapping = align_tokens(tok, "a pack of roses", "a pack of blue roses")
    assert len(mapping) == 77
    # source: <sot> a pack of roses <eot> ... ; destination: <sot> a pack of blue roses <eot>
    assert mapping[:6] == [0, 1, 2, 3, 5, 6]
    assert mapping[6:9] == [7, 8, 9] and mapping[-1] == 76
    assert align_tokens(tok, "an apple", "a green apple")[:4] == [0, 1, 3, 4]


def test_alignment_error_names_the_token(tok):
    with pytest.raises(ValueError, match="roses"):
        align_tokens(tok, "a pack of roses", "a pack of tulips")
