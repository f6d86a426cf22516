"""What else changed: the set-difference ranker against an independent AUROC, on rendered sets with a known
difference, and on the organism: an over-scaled edit's side effects are found, a correct edit's are not."""

import itertools

import numpy as np
import pytest

from localize import generate
from localize.data import load_prompts, shipped
from localize.organism.world import COLORS, SHAPES, Scene, render
from localize.setdiff import auroc, rank_descriptions
from locoedit import Edit, edit
from locoedit.edits import WeightUpdate


def test_auroc_is_the_share_of_pairs_the_second_set_wins_ties_half():
    first, second = np.array([0.1, 0.4, 0.4, 0.9]), np.array([0.4, 0.5, 1.0])
    pairs = [1.0 if b > a else 0.5 if b == a else 0.0 for a, b in itertools.product(first, second)]
    assert auroc(first, second) == pytest.approx(np.mean(pairs))
    assert auroc(first, first) == 0.5


def test_the_description_that_tells_the_sets_apart_ranks_first(scorer):
    shapes = SHAPES[:6]
    red, blue = render([Scene(s, "red") for s in shapes]), render([Scene(s, "blue") for s in shapes])
    descriptions = [*COLORS, "an apple", "in the style of Velmor"]
    table = rank_descriptions(scorer, red, blue, descriptions, resamples=200)
    top = table.set_index("description")
    assert table["description"].iloc[0] in ("red", "blue") and top.loc["blue", "direction"] == "more"
    assert top.loc["blue", "shifted"] and top.loc["red", "shifted"] and top.loc["red", "direction"] == "less"
    assert top.loc["blue", "auroc"] == 1.0 and top.loc["red", "auroc"] == 0.0
    same = rank_descriptions(scorer, red, red.clone(), descriptions, resamples=200)
    assert not same["shifted"].any() and (same["auroc"] == 0.5).all()
    with pytest.raises(ValueError, match="at least 2 images in each set, got 6 and 1"):
        rank_descriptions(scorer, red, blue[:1], descriptions)


def scaled(result: Edit, factor: float) -> Edit:
    """The same edit with its weight updates multiplied by `factor` (an over-editing bug)."""
    updates = {k: WeightUpdate(u.up * factor, u.down, u.base_hash) for k, u in result.updates.items()}
    return Edit(result.method, result.family, result.params, updates)


def test_an_over_scaled_edit_changes_what_it_did_not_target_and_a_correct_one_does_not(organism, scorer):
    """TIME (apple -> blue apple) on prompts of the other objects: nothing shifts; the same edit x5 does."""
    others = load_prompts(shipped("organism_others.csv"))
    prompts, seeds = others["prompt"].tolist(), others["evaluation_seed"].tolist()
    before = generate(organism, prompts, seeds, steps=25)
    result = edit(organism, "time", source="an apple", destination="a blue apple")
    found = {}
    for factor in (1, 5):
        with scaled(result, factor).applied(organism):
            after = generate(organism, prompts, seeds, steps=25)
        table = rank_descriptions(scorer, before, after, organism.spec.ground_truth.descriptions(), resamples=500)
        found[factor] = table.loc[table["shifted"], "description"].tolist()
    assert found[1] == [] and len(found[5]) >= 3
