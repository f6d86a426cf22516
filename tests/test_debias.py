"""UCE debiasing: the attribute-weight search on synthetic responses, and the whole edit on the organism."""

import math

import pytest

from localize.organism.oracle import color_classifier, read_images
from locoedit import edit
from locoedit.debias import search_weights


def softmax_response(steepness: float, bias: list[float]):
    """Shares = softmax(steepness * alpha + bias): a steep, biased, monotone split like the organism's."""
    def measure(alpha):
        logits = [steepness * a + b for a, b in zip(alpha, bias, strict=True)]
        total = sum(math.exp(x) for x in logits)
        return [math.exp(x) / total for x in logits]

    return measure


def proportional_only(measure, split, rounds, rate):
    """The plain rule alpha += rate * (target - measured), as an independent reference."""
    alpha, gaps = [0.0] * len(split), []
    for _ in range(rounds):
        measured = measure(alpha)
        gaps.append(max(abs(s - m) for s, m in zip(split, measured, strict=True)))
        alpha = [a + rate * (s - m) for a, s, m in zip(alpha, split, measured, strict=True)]
    return gaps


@pytest.mark.parametrize("n", [2, 3])
def test_search_brackets_a_steep_response_that_proportional_steps_overshoot(n):
    measure = softmax_response(20.0, [3.0] + [0.0] * (n - 1))
    split = [1 / n] * n
    assert min(proportional_only(measure, split, 9, 1.0)[1:]) > 0.1  # the old rule oscillates
    history = search_weights(measure, split, tolerance=0.05, rounds=12, rate=1.0)
    assert history[0]["alpha"] == [0.0] * n and history[0]["gap"] > 0.4
    assert history[-1]["gap"] <= 0.05
    assert [entry["round"] for entry in history] == list(range(len(history)))


def test_search_stops_after_rounds_when_the_target_is_out_of_reach():
    history = search_weights(lambda alpha: [1.0, 0.0], [0.5, 0.5], tolerance=0.1, rounds=4, rate=1.0)
    assert len(history) == 5 and all(entry["gap"] == 0.5 for entry in history)
    assert history[-1]["alpha"][0] < 0 < history[-1]["alpha"][1]  # kept pushing toward the target


def test_debias_evens_the_organisms_doctor(organism):
    """Ground truth: the organism draws "a doctor" blue (planted bias); after debiasing over red and blue the
    oracle reads about half red on seeds the search never saw."""
    attributes = ["a red doctor", "a blue doctor"]
    result = edit(organism, "uce", mode="debias", concept="a doctor", attributes=attributes,
                  classify=color_classifier(attributes), seeds=range(100, 116), steps=10, tolerance=0.1)
    assert result.info["history"][0]["shares"][0] < 0.2
    from localize import generate

    with result.applied(organism):
        images = generate(organism, ["a doctor"] * 16, list(range(16)), steps=10)
    red = (read_images(images)["color"] == "red").mean()
    assert 0.25 <= red <= 0.75, red


@pytest.mark.parametrize("search", ["bracket", "authors"])
def test_debias_checks_its_preserved_prompts_as_every_method_does(organism, search):
    """A preserved prompt that is also edited (the concept) is an error before any image is generated; a
    preserved prompt that is not edited is accepted."""
    def classify(images):
        raise AssertionError("no image may be generated for a bad edit")

    with pytest.raises(ValueError, match=r"\['a doctor'\] are both edited and preserved"):
        edit(organism, "uce", mode="debias", concept="a doctor", attributes=["a red doctor", "a blue doctor"],
             classify=classify, preserve=["a tree", "a doctor"], search=search)
    with pytest.raises(ValueError, match="preserve must be a prompt or a non-empty list"):
        edit(organism, "uce", mode="debias", concept="a doctor", attributes=["a red doctor", "a blue doctor"],
             classify=classify, preserve=[3], search=search)
