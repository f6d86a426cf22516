"""The text-context cache: reused while the text weights stand, emptied when they change, bypassed under hooks."""

import pytest
import torch

from localize import random_model
from localize.conditioning import encode_contexts, text_contexts
from localize.context_cache import ContextCache
from locoedit import edit

PROMPTS = ["a photo of a dog", "a pack of roses", "a photo of a dog", "a red car"]


@pytest.fixture
def model():
    return random_model("sd1", "tiny", seed=0)


def test_cached_contexts_equal_fresh_encodings_and_encode_once(model):
    first = text_contexts(model, PROMPTS)
    assert model.context_cache.misses == 3 and len(model.context_cache) == 3  # the repeated prompt once
    again = text_contexts(model, ["a red car", "a photo of a dog"])
    assert model.context_cache.misses == 3 and model.context_cache.hits == 3  # 1 repeat + 2 cached
    with torch.no_grad():
        fresh = encode_contexts(model, PROMPTS)
    assert torch.allclose(first, fresh, atol=1e-6) and torch.equal(again, first[[3, 0]])


def test_a_text_encoder_edit_and_its_revert_invalidate_the_cache(model):
    before = text_contexts(model, PROMPTS)
    result = edit(model, "diffquickfix", source="a pack of roses", destination="a pack of tulips")
    with result.applied(model):
        edited = text_contexts(model, PROMPTS)
        with torch.no_grad():
            assert torch.allclose(edited, encode_contexts(model, PROMPTS), atol=1e-6)
    assert not torch.allclose(edited, before, atol=1e-4)
    assert torch.equal(text_contexts(model, PROMPTS), before)


def test_hooks_on_the_text_side_bypass_the_cache(model):
    text_contexts(model, PROMPTS)
    hits = model.context_cache.hits
    layer = model.text_encoder_layers[0].mlp
    handle = layer.register_forward_hook(lambda _module, _args, output: 3.0 * output)
    try:
        hooked = text_contexts(model, PROMPTS)
    finally:
        handle.remove()
    assert model.context_cache.hits == hits
    assert not torch.allclose(hooked, text_contexts(model, PROMPTS), atol=1e-3)


def test_least_recently_used_entries_go_first_beyond_the_byte_budget():
    row = torch.zeros(2, 4)  # 32 bytes
    cache = ContextCache(max_bytes=64)
    encode = lambda prompts: torch.stack([row + len(p) for p in prompts])  # noqa: E731
    cache.contexts(("state",), ["a", "bb"], encode)
    cache.contexts(("state",), ["a"], encode)  # "a" is now the most recent
    cache.contexts(("state",), ["ccc"], encode)
    assert len(cache) == 2 and cache.misses == 3
    cache.contexts(("state",), ["a", "ccc"], encode)
    assert cache.misses == 3  # "bb" was evicted, "a" and "ccc" kept
    cache.contexts(("other",), ["a"], encode)
    assert cache.misses == 4 and len(cache) == 1  # a new state starts empty
    with pytest.raises(ValueError, match="max_bytes"):
        ContextCache(max_bytes=-1)


def test_a_second_uce_edit_encodes_only_its_new_prompts(model):
    preserve = [f"a photo of object {i}" for i in range(20)]
    first = edit(model, "uce", concepts=["Van Gogh"], guides="", preserve=preserve)
    misses = model.context_cache.misses
    second = edit(model, "uce", concepts=["Van Gogh"], guides="", preserve=preserve, lam=1.0)
    assert model.context_cache.misses == misses
    third = edit(model, "uce", concepts=["Picasso"], guides="", preserve=preserve)
    assert model.context_cache.misses == misses + 1
    assert first.updates.keys() == second.updates.keys() == third.updates.keys()
