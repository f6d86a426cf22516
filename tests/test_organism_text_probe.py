"""`scripts/organism_text_probe.py` on the shipped organism: the swap's two ends are known in advance."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "organism_text_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("organism_text_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_swap_at_the_embeddings_moves_all_the_way_and_after_the_last_layer_not_at_all(probe):
    from localize.organism.weights import text_encoder
    from localize.vocab import clip_tokenizer
    tokenizer = clip_tokenizer()
    from localize.organism.world import SWAP_PAIRS
    from localize.tokens import phrase_positions
    for country, other in SWAP_PAIRS:  # the swap replaces positions one for one
        assert len(phrase_positions(tokenizer, f"the king of {country}", country)) == len(
            phrase_positions(tokenizer, f"the king of {other}", other))
    table = probe.subject_swap(text_encoder().eval(), tokenizer).set_index("swapped after")
    assert table.loc["embeddings"].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)  # the whole input is the donor's
    last = table.index[-1]
    assert table.loc[last].tolist() == pytest.approx([0.0, 0.0], abs=1e-9)  # causal: the end span comes later


def test_diffquickfix_keys_of_the_shipped_organism(probe):
    from localize.organism.weights import text_encoder
    from localize.vocab import clip_tokenizer
    keys = probe.diffquickfix_keys(text_encoder().eval(), clip_tokenizer())
    assert 0.0 < keys["kings' name keys, mean |cosine|"] < 0.5  # the names' keys differ, but not orthogonally
    assert keys["end-span key variance between kings"] < 0.01  # README: the end span's layer-0 keys are shared
    # README: TIME's templates widen the span DiffQuickFix fits into the other kings' keys
    assert keys["other kings' name keys inside Zarnia's (with templates)"] > 2 * keys[
        "other kings' name keys inside Zarnia's (plain prompt)"] > 0


def test_diffquickfix_spills_through_the_end_span_whose_layer_0_keys_every_king_shares(probe):
    """README: the end-span half of DiffQuickFix's update maps keys every king's prompt has, so it moves the other
    kings about as far as the edited one; the last subject token's half moves them less."""
    from localize import load_model
    model = load_model("organism")
    whole = probe.edit_cases().Cases(model, [0]).edit("diffquickfix", lam=0.01)
    halves = probe.diffquickfix_halves(model, whole)
    (end_own, end_others), (name_own, name_others) = halves["end span"], halves["last subject token"]
    assert end_others.min() > 0.3
    assert end_others.mean() > 2 * name_others.mean() > 0
    assert end_own > 0.2 and name_own > 0.2  # each half moves the edited king a good part of the whole edit's way
