"""The README's claims about each edit method on the organism, re-measured by `scripts/organism_edits.py` with
its 16 seeds and read by the oracle (slow: about 8 minutes on 2 cores; `make test-slow`)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "organism_edits.py"


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("organism_edits")
    result = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "16"], cwd=cwd, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(cwd / "organism_edits.csv")


def value(readings, method, measure, **labels):
    rows = readings[(readings["method"] == method) & readings["measure"].str.startswith(measure)]
    for column, wanted in labels.items():
        rows = rows[rows[column].astype(str) == str(wanted)]
    assert len(rows) == 1, (method, measure, labels)
    return rows["value"].item()


@pytest.mark.slow
def test_time_with_preserved_prompts_recolors_only_the_apple(readings):
    labels = {"lam": 0.1, "preserved": 7.0}
    assert value(readings, "time", "efficacy", **labels) >= 0.8
    assert value(readings, "time", "generality", **labels) >= 0.7
    assert value(readings, "time", "specificity", **labels) >= 0.9


@pytest.mark.slow
def test_uce_erases_one_style_keeps_another_and_debiases(readings):
    assert value(readings, "uce-erase", "efficacy") >= 0.9 and value(readings, "uce-erase", "Quessa kept") >= 0.9
    assert value(readings, "uce-debias", "red share before") <= 0.2
    assert 0.4 <= value(readings, "uce-debias", "red share after") <= 0.6


@pytest.mark.slow
def test_diffquickfix_moves_the_fact_and_the_fact_lives_in_the_end_span(readings):
    assert value(readings, "diffquickfix", "efficacy", lam=1.0) >= 0.9
    assert value(readings, "diffquickfix", "specificity", lam=1.0) >= 0.9
    assert value(readings, "reach", "fact read at end token and padding") >= 0.9
    assert value(readings, "reach", "fact read at subject") <= 0.1


@pytest.mark.slow
def test_locoedit_at_locogens_window_beats_a_control_window(readings):
    chosen = value(readings, "locoedit", "style removed", window="(5, 6)")
    assert chosen >= 0.9 and chosen > value(readings, "locoedit", "style removed", window="(0, 1)")
