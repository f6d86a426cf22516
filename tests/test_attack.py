"""Does an erased concept come back: the soft prompt's positions and gradients, the no-step identity, and the
`localize attack` job on the organism."""

import pandas as pd
import pytest
import torch
from test_cli import localize

from localize import generate
from localize.report import find_runs
from locoedit import edit
from locoedit.attack import AttackSettings, SoftPrompt, generate_soft, optimize, soft_positions
from locoedit.job import attack_pairs


def test_the_soft_prompt_replaces_the_words_the_guide_lacks(organism):
    assert soft_positions(organism, "an apple in the style of Velmor", "an apple") == [[3, 4, 5, 6, 7, 8]]  # in..mor
    king = soft_positions(organism, "the king of Zarnia", "the king of Brovia")[0]
    assert king[0] == 4 and len(king) == len(organism.tokenizer("Zarnia", add_special_tokens=False).input_ids)
    with pytest.raises(ValueError, match="has no word its guide 'an apple' lacks"):
        soft_positions(organism, "an apple", "an apple")
    assert attack_pairs("uce", {"concepts": ["a", "b"], "guides": "c"}) == [("a", "c"), ("b", "c")]
    assert attack_pairs("diffquickfix", {"source": "s", "destination": "d"}) == [("s", "d")]
    assert attack_pairs("neurons", {"neurons": ["cross_attn.5.to_v:0"]}, ["a", "b"], None) == [("a", ""), ("b", "")]


def test_an_unfitted_soft_prompt_is_the_prompt_itself_and_fitting_lowers_the_loss(organism):
    concept, seeds = "an apple in the style of Velmor", [100, 101]
    soft = SoftPrompt(organism, concept, "an apple")
    plain = generate(organism, [concept] * 2, seeds, steps=8)
    assert torch.equal(generate_soft(organism, soft, seeds, steps=8, guidance=7.5), plain)
    references = generate(organism, [concept] * 4, [0, 1, 2, 3], steps=8)
    result = edit(organism, "uce", concepts=[concept], guides=["an apple"])
    before = [v.detach().clone() for v in soft.vectors]
    with result.applied(organism):
        losses = optimize(organism, soft, references, AttackSettings(steps=30, learning_rate=0.05, batch=4))
    assert not torch.equal(soft.vectors[0], before[0])  # only the vectors learned
    assert sum(losses[-10:]) < sum(losses[:10])
    assert all(not p.requires_grad or p.grad is None for p in organism.unet.parameters())


def test_attack_job_reports_original_edited_and_attacked_success(tmp_path):
    out = tmp_path / "run"
    result = localize("attack", "attack.steps=0", "attack.train_seeds=[0,1]", "seeds=[100,101]", "steps=4",
                      "progress=false",
                      f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["condition"]) == {"original", "edited", "attacked"} and len(table) == 2 * 2 * 3
    by = table.pivot_table(index=["concept", "seed"], columns="condition", values="success")
    assert (by["attacked"] == by["edited"]).all()  # no step: the soft prompt is the erased prompt itself
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert set(metrics["concept"]) == {"all", "an apple in the style of Velmor", "a box in the style of Velmor"}
    assert "original" in result.stdout and (out / "images.png").stat().st_size > 0
    assert find_runs(out)[0].kind == "attack"  # the report shows it as an attack, not an evaluation
