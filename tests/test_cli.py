"""The `localize` command: the layers job end to end, its outputs, and config errors."""

import subprocess
import sys

import pandas as pd
import pytest
import yaml


def localize(*args, cwd):
    command = [sys.executable, "-c", "from localize.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_layers_job_prints_the_table_and_writes_results(tmp_path):
    out = tmp_path / "run"
    result = localize("layers", "model=random_sdxl_full", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "70 cross-attention layers" in result.stdout
    assert "up_blocks.0.attentions.1.transformer_blocks.1.attn2" in result.stdout
    table = pd.read_parquet(out / "results.parquet")
    assert table["index"].tolist() == list(range(70))
    assert table.loc[45, "name"] == "up_blocks.0.attentions.1.transformer_blocks.1.attn2"
    assert (table["model.family"] == "sdxl").all()
    assert "family: sdxl" in (out / "config.yaml").read_text()
    assert not list(out.glob(".*.parquet*"))  # no temporary file left behind


def test_config_typos_and_unknown_jobs_are_errors(tmp_path, capsys):
    from localize.cli import main

    with pytest.raises(SystemExit, match="famly"):
        main(["layers", "model.famly=sd1", f"hydra.run.dir={tmp_path / 'x'}"])
    with pytest.raises(SystemExit, match="jobs: attack, demo, edit, evaluate, layers, locogen, report, trace"):
        main(["layerz"])
    with pytest.raises(SystemExit) as exit_:  # in-process: the same exit and message as the command line's
        main(["layers", "model=random_sd15_tiny", "model.family=sd4", f"hydra.run.dir={tmp_path / 'y'}"])
    assert exit_.value.code != 0 and "unknown model family 'sd4'" in capsys.readouterr().err


def test_layers_job_on_the_organism(tmp_path):
    result = localize("layers", "model=organism", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 10 and (table["model.family"] == "organism").all()


def test_trace_job_writes_results_effects_heatmaps_and_summary(tmp_path):
    out = tmp_path / "run"
    result = localize("trace", "prompts=organism_facts", "seeds=[0]", "steps=2", "unet_kinds=[cross_attn,ff]",
                      "text_kinds=[self_attn]", "min_drop=0", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "causal tracing: organism_facts (fact) on organism" in result.stdout
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["prompt"]) == {f"a photo of the king of {c}" for c in ("Zarnia", "Brovia", "Kelthar")}
    assert (table["prompts.name"] == "organism_facts").all() and (table["steps"] == 2).all()
    assert set(table["kind"]) == {"cross_attn", "ff", "self_attn"}
    effects = pd.read_parquet(out / "effects.parquet")
    assert set(effects["key"]) == set(table["key"])
    for name in ("heatmap_unet.png", "heatmap_text_encoder_0.png", "heatmap_text_encoder_0_prompt_2.png", "summary.txt",
                 "config.yaml"):
        assert (out / name).stat().st_size > 0
    assert sorted(path.name for path in out.glob(".*")) == [".hydra", ".outputs"]  # no temporary file left behind
    assert "heatmap_unet.png" in (out / ".outputs").read_text().split()  # what the next run there removes first


def test_trace_and_locogen_take_the_organisms_own_defaults_only_on_the_organism(capsys):
    from localize.cli import main

    def job_config(*args: str) -> dict:  # in-process: `localize JOB ... --cfg job` prints the composed config
        main([*args, "--cfg", "job"])
        return yaml.safe_load(capsys.readouterr().out)

    for job, steps in (("trace", 3), ("locogen", 8)):
        organism = job_config(job)
        assert (organism["seeds"], organism["steps"]) == ([0, 1], steps)
        other = job_config(job, "model=random_sd15_tiny")
        assert (other["seeds"], other["steps"]) == ([0, 1, 2, 3], 25)
        chosen = job_config(job, "seeds=[5]", "steps=5")
        assert (chosen["seeds"], chosen["steps"]) == ([5], 5)


def test_trace_job_rejects_bad_settings_before_loading_anything(tmp_path):
    """One bad value through a real process (its exit code and message); every other bad value of every job is
    checked in-process in test_config_checks.py."""
    result = localize("trace", "steps=5", "step_range=[0,9]", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert result.returncode != 0 and "step range [0, 9] outside the schedule of 5 steps" in result.stderr
    assert not (tmp_path / "a" / "results.parquet").exists()


def test_locogen_job_writes_the_chosen_window_curve_and_summary(tmp_path, organism):
    out = tmp_path / "run"
    result = localize("locogen", "prompts=organism_facts", "seeds=[0]", "steps=2", "m=3", "neurons.ks=[1,8]",
                      "neurons.random_draws=1", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "objective: raise the CLIP score" in result.stdout
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 3 * (10 - 3 + 1) and (table["m"] == 3).all()
    chosen = {tuple(layers) for layers in table.loc[table["chosen"], "layers"]}  # a list column
    assert len(chosen) == 1 and len(next(iter(chosen))) == 3
    layers = list(next(iter(chosen)))
    assert f"chosen window: layers {', '.join(map(str, layers))}" in result.stdout
    windows = pd.read_parquet(out / "windows.parquet")
    assert list(windows.loc[windows["chosen"], "layers"].iloc[0]) == layers
    for name in ("layer_curve.png", "neuron_curve.png", "summary.txt", "config.yaml"):
        assert (out / name).stat().st_size > 0
    neurons = pd.read_parquet(out / "neurons.parquet")
    assert len(neurons) == 3 * 2 * 2 and set(neurons["k"]) == {1, 8}
    scores = pd.read_parquet(out / "neuron_scores.parquet")
    width = sum(organism.cross_attention_layers[k].key.out_features for k in layers)
    assert set(scores["layer"]) == set(layers) and len(scores) == 2 * width  # to_k and to_v
    first = scores.iloc[0]
    assert first["address"] == f"cross_attn.{first['layer']}.{first['projection']}:{first['index']}"


def test_locogen_job_rejects_a_window_larger_than_the_model(tmp_path):
    result = localize("locogen", "m=11", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert result.returncode != 0 and "window size m=11 must be an integer in 1..10" in result.stderr


def test_edit_job_saves_the_edit_its_lora_images_and_readings(tmp_path):
    out = tmp_path / "run"
    result = localize("edit", "evaluate=[an apple]", "seeds=[0]", "steps=4", "lora=true", "progress=false",
                      f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "method: time" in result.stdout and "rank:" in result.stdout
    for name in ("edit.safetensors", "lora.safetensors", "images.png", "summary.txt", "results.parquet"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table["phase"]) == ["after", "before"] and {"color", "shape", "texture"} <= set(table.columns)
    from locoedit import load_edit

    assert load_edit(out / "edit.safetensors").params["destination"] == "a blue apple"


def test_edit_job_runs_uces_joint_edit(tmp_path):
    """`method=uce_joint`: erase, moderate and debias terms in one solve; the debias search's shares are reported."""
    out = tmp_path / "run"
    result = localize("edit", "method=uce_joint", "evaluate=[a doctor]", "seeds=[0]", "steps=2", "progress=false",
                      "+params.seeds=[0,1]", "+params.steps=2", "+params.rounds=1", f"hydra.run.dir={out}",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "method: uce" in result.stdout and "'shares'" in result.stdout
    from locoedit import load_edit

    saved = load_edit(out / "edit.safetensors")
    assert saved.params["mode"] == "joint" and saved.params["concept"] == "a doctor"


def test_edit_job_rejects_an_unknown_method_before_loading(tmp_path):
    result = localize("edit", "method=rome", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0 and "Could not find 'method/rome'" in result.stderr and "uce" in result.stderr
