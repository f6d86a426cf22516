"""The README's claims about each edit method on the organism, re-measured by `scripts/organism_edits.py` with
its 16 seeds and read by the oracle (slow: about 30 minutes on 2 cores; `make test-slow`)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "organism_edits.py"
BROKEN = ("update x 0.2", "update x 5", "random key directions", "no token alignment", "bias counted twice")


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("organism_edits")
    result = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "16"], cwd=cwd, capture_output=True, text=True,
                            timeout=7200)  # 26-55 min on the 2-core machines measured so far
    print(result.stdout)  # the table the claims are read from: shown with `pytest -s` or when a claim fails
    assert result.returncode == 0, result.stderr
    return {name: pd.read_csv(cwd / f"organism_edits{name}.csv") for name in ("", "_swap", "_reach")}


def row(table, method, variant):
    rows = table[(table["method"] == method) & (table["variant"] == variant)]
    assert len(rows) == 1, (method, variant)
    return rows.iloc[0]


@pytest.mark.slow
def test_every_broken_variant_is_caught(readings):
    table = readings[""]
    broken = table[table["variant"].isin(BROKEN)]
    assert len(broken) == 17 and broken["caught"].all(), broken


@pytest.mark.slow
def test_efficacy_tells_correct_time_and_diffquickfix_from_scaled_and_random_updates(readings):
    table = readings[""]
    for method in ("time", "diffquickfix"):
        assert row(table, method, "correct")["efficacy"] >= 0.8
        for variant in ("update x 0.2", "update x 5", "random key directions"):
            assert row(table, method, variant)["efficacy"] < 0.8, (method, variant)


@pytest.mark.slow
def test_diffquickfix_spills_through_its_template_augmentation(readings):
    """README: without TIME's templates DiffQuickFix keeps the other kings but no longer reaches the templated
    prompts; with them it reaches them and moves the other kings."""
    table = readings[""]
    plain, correct = row(table, "diffquickfix", "no template augmentation"), row(table, "diffquickfix", "correct")
    assert plain["specificity"] >= 0.8 > correct["specificity"]
    assert plain["efficacy"] < 0.8 <= correct["efficacy"]


@pytest.mark.slow
def test_uce_debias_brings_the_doctor_within_ten_points_of_50_50(readings):
    debias = row(readings[""], "uce-debias", "correct")
    assert debias["red before"] <= 0.1 and 0.4 <= debias["red after"] <= 0.6


@pytest.mark.slow
def test_time_and_refact_pass(readings):
    """TIME at its paper's settings; ReFACT with the conditioning objective (`REFACT_ORGANISM`)."""
    table = readings[""]
    for method in ("time", "refact"):
        assert not row(table, method, "correct")["caught"], row(table, method, "correct")


@pytest.mark.slow
def test_the_subject_reaches_the_image_through_half_the_text_layers(readings):
    swap = readings["_swap"].set_index("layer")["other king drawn"]
    assert swap["embeddings"] == 1.0
    layers = swap.drop("embeddings")
    assert (layers >= 0.8).sum() >= len(layers) / 2, swap
