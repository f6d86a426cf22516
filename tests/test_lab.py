"""The lab around the methods: reports, the demo, sweeps (skip finished jobs, launchers) and the published
experiments, each run end to end on a tiny model of its family."""

import base64
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pandas as pd
import pytest
from test_cli import localize

from localize.cli import finished, quoted
from localize.report import EmptyReportError, build_report, write_report
from localize.results import MANIFEST, OutputNotWritableError, fresh_outputs

matplotlib.use("Agg")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def _fake_run(path, kind_file=None):
    import matplotlib.pyplot as plt

    path.mkdir(parents=True)
    pd.DataFrame({"x": [1, 2]}).to_parquet(path / "results.parquet")
    (path / "config.yaml").write_text("seeds: [0]\n")
    (path / "summary.txt").write_text("a <summary> & more\n")
    figure = plt.figure(figsize=(1, 1))
    figure.savefig(path / "curve.png")
    plt.close(figure)
    if kind_file:
        pd.DataFrame({"window": [0], "layers": [[0, 1]], "score": [1.0], "effect": [2.0], "effect_ci_low": [1.0],
                      "effect_ci_high": [3.0], "chosen": [True]}).to_parquet(path / kind_file)


def test_report_is_self_contained_and_escapes_text(tmp_path):
    _fake_run(tmp_path / "sweep" / "a=1")
    _fake_run(tmp_path / "sweep" / "a=2", "windows.parquet")
    (tmp_path / "sweep" / "a=2" / ".hydra").mkdir()
    (tmp_path / "sweep" / "a=2" / ".hydra" / "overrides.yaml").write_text("- a=2\n")
    page, runs = build_report(tmp_path / "sweep")
    assert [run.kind for run in runs] == ["layers", "locogen"]
    parser = _Page()
    parser.feed(page)
    assert len(parser.images) == 2 and not [link for link in parser.links if not link.startswith("#")]
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a &lt;summary&gt; &amp; more" in page and "windows (LOCOGEN)" in page and "<code>a=2</code>" in page


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`.ci/run` installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    """Chromium opens the report and its screenshot shows the embedded figure: a pure-red square that only the
    decoded PNG can put on the page."""
    import matplotlib.pyplot as plt
    from PIL import Image

    run = tmp_path / "run"
    _fake_run(run)
    figure = plt.figure(figsize=(2, 2), dpi=100)
    figure.figimage([[[1.0, 0.0, 0.0]] * 200] * 200)
    figure.savefig(run / "red.png")
    plt.close(figure)
    report, _ = write_report(run)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,4000",
                    f"--screenshot={shot}", report.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = Image.open(shot).convert("RGB").getdata()
    red = sum(r > 240 and g < 15 and b < 15 for r, g, b in pixels)
    assert red >= 100 * 100, red  # the 200 x 200 figure, whatever the page scales it to
    assert sum(max(pixel) < 100 for pixel in pixels) > 500  # dark text: the page rendered, not a blank screen


def test_report_errors_leave_nothing_behind(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyReportError, match="no finished run under"):
        write_report(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        write_report(tmp_path / "missing")
    _fake_run(tmp_path / "run")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputNotWritableError, match="its directory is not writable"):
        write_report(tmp_path / "run", tmp_path / "a_file" / "report.html")
    assert not (tmp_path / "run" / "report.html").exists()


def test_report_command_takes_a_bare_directory_with_spaces(tmp_path):
    run = tmp_path / "sweep" / "prompts=my run's \\dir\\"  # as a sweep job's directory is named, and worse
    _fake_run(run)
    result = localize("report", str(run), f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run / "report.html").is_file() and "report of 1 run(s)" in result.stdout
    result = localize("report", str(tmp_path), f"hydra.run.dir={tmp_path / 'job2'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "report of 1 run(s)" in result.stdout  # the earlier report run in job/ is not a run to show


def test_quoted_values_read_back_unchanged_by_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in ["plain", "a b", "it's", "a\\b", "ends\\", "a\\'b", "\\\\'x'\\\\", "k=v/w", ""]:
        assert parser.parse_override(f"key={quoted(value)}").value() == value, value


def test_a_job_removes_what_its_previous_run_wrote_and_nothing_else(tmp_path):
    (tmp_path / "keep.txt").write_text("the user's")
    with fresh_outputs(tmp_path):
        (tmp_path / "old.png").write_text("a figure of an earlier config")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "results.parquet").write_text("a stage")
        (tmp_path / "results.parquet").write_text("finished")
    assert (tmp_path / MANIFEST).read_text().splitlines() == ["old.png", "results.parquet", "sub/results.parquet"]
    with pytest.raises(RuntimeError, match="crash"), fresh_outputs(tmp_path):
        assert not (tmp_path / "old.png").exists() and not (tmp_path / "sub" / "results.parquet").exists()
        (tmp_path / "new.png").write_text("half a run")
        raise RuntimeError("crash")
    assert (tmp_path / MANIFEST).read_text() == "new.png\n" and (tmp_path / "keep.txt").exists()
    with fresh_outputs(tmp_path):
        pass
    assert not (tmp_path / "new.png").exists() and (tmp_path / "keep.txt").read_text() == "the user's"


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = localize("demo", "common=['steps=2', 'seeds=[0]']", "progress=false", f"hydra.run.dir={out}",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stages = pd.read_parquet(out / "results.parquet")
    assert stages["stage"].tolist() == ["trace", "locogen", "locoedit", "time", "uce", "evaluate"]
    chosen = list(pd.read_parquet(out / "locogen" / "windows.parquet").query("chosen")["layers"].iloc[0])
    from locoedit import load_edit

    locoedit = load_edit(out / "locoedit" / "edit.safetensors")
    layers = set(chosen)
    edited = {address.split(".attentions")[0] for address in locoedit.updates}
    assert len(edited) >= 1 and locoedit.params["results"].endswith("locogen/results.parquet")
    assert f"LOCOGEN chose cross-attention layers {', '.join(map(str, chosen))}" in result.stdout
    assert len(layers) == 2
    assert ("s): uce on the ImageNette-format cases; images that draw their class, before -> after the edit: the "
            "class the edit names square " in result.stdout)
    assert f"report: {(out / 'report.html').resolve()}" in result.stdout
    page = (out / "report.html").read_text()
    assert page.count("<section") == 7 and page.count("data:image/png;base64,") >= 8


def test_the_demo_says_an_edit_formats_outcome_in_words(tmp_path):
    from localize.jobs.demo import evaluation_in_words
    pd.DataFrame({"prompt": ["the king of Zarnia"], "class": [None], "edit": ["refact"],
                  "dataset.format": ["road"]}).to_parquet(tmp_path / "results.parquet")
    rows = [(metric, "", measure) for metric in ("efficacy", "specificity") for measure in ("zero_shot", "oracle")]
    index = pd.MultiIndex.from_tuples(rows, names=["metric", "class", "measure"])
    wide = pd.DataFrame({"before": [0.0, 0.0, 1.0, 1.0], "after": [1.0, 0.75, 0.5, 0.25]}, index=index)
    assert evaluation_in_words(tmp_path, wide) == (
        "refact on the RoAD-format cases; after the edit, read by the oracle: the edited prompts draw the new text in "
        "75% of images (before the edit 0%); the other prompts keep their own in 25% of images (before the edit 100%)")
    assert evaluation_in_words(tmp_path, wide[["before"]]) == ""  # no edit, nothing to say


def test_sweep_reruns_only_unfinished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("layers", "-m", "model=random_sd15_tiny,random_sd21_tiny", f"hydra.sweep.dir={sweep}")
    result = localize(*args, "hydra/launcher=local", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == {"model=random_sd15_tiny", "model=random_sd21_tiny"}
    (sweep / "model=random_sd21_tiny" / "results.parquet").unlink()
    result = localize(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"skipping {sweep / 'model=random_sd15_tiny'}" in result.stdout and "sd2: UNet" in result.stdout
    assert "sd1: UNet" not in result.stdout and (sweep / "model=random_sd21_tiny" / "results.parquet").is_file()


def test_a_finished_job_is_the_same_config_whatever_its_display_keys(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seeds": [0, 1], "lambda": 1e-5, "progress": True, "model": {"name": "m"}})
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (tmp_path / "results.parquet").write_text("")
    assert finished(cfg, tmp_path) and finished(OmegaConf.merge(cfg, {"progress": False}), tmp_path)
    assert not finished(OmegaConf.merge(cfg, {"seeds": [0]}), tmp_path)
    (tmp_path / "results.parquet").unlink()
    assert not finished(cfg, tmp_path)


def test_slurm_launcher_config_composes(tmp_path):
    result = localize("layers", "hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout


TINY = ["model.device=null", "model.dtype=null", "scorer=organism", "steps=2", "seeds=[0]", "progress=false"]
EXPERIMENTS = {
    "locogen_sd15": ("locogen", "random_sd15_tiny", ["neurons.ks=[1]", "neurons.random_draws=1"]),
    "locogen_sd21": ("locogen", "random_sd21_tiny", ["neurons.ks=[1]", "neurons.random_draws=1"]),
    "locogen_openjourney": ("locogen", "random_sd15_tiny", ["neurons.ks=[1]", "neurons.random_draws=1"]),
    "locogen_sdxl": ("locogen", "random_sdxl_tiny", ["m=66", "neurons.enabled=false"]),
    "locogen_deepfloyd": ("locogen", "random_if_tiny", ["neurons.enabled=false"]),
    "trace_sd15": ("trace", "random_sd15_tiny", ["unet_kinds=[cross_attn]", "text_kinds=[mlp]"]),
    "diffquickfix_sd15": ("edit", "random_sd15_tiny", ["evaluate=[a house in the style of Van Gogh]"]),
    "time_timed_sd14": ("evaluate", "random_sd15_tiny", ["dataset.path=${shipped:organism_timed.csv}",
                                                         "dataset.cases=[0]"]),
    "uce_imagenette_sd14": ("evaluate", "random_sd15_tiny", ["dataset.path=${shipped:organism_shapes.csv}",
                                                             "dataset.cases=[0,1]", "classifier=null"]),
    "locogen_flux": ("locogen", "random_flux_tiny", ["prompts=organism_styles", "m=18"]),
    "locogen_sd35": ("locogen", "random_sd3_tiny", ["prompts=organism_styles", "m=37"]),
    "uce_flux": ("edit", "random_flux_tiny", ["evaluate=[a painting by Van Gogh]"]),
    "locoedit_flux": ("edit", "random_flux_tiny", ["+params.layers=[1]", "params.key_seeds=[0]",
                                                   "params.held_out_seeds=[4]", "evaluate=[a house]"]),
}


NARROWER_IN_BF16 = {"trace_sd15": ["text_kinds=[]", "prompts=facts"]}  # bf16 matmuls are slow on CPUs


@pytest.mark.parametrize("experiment", ["trace_sd15", "locogen_sd15", "diffquickfix_sd15", "time_timed_sd14"])
def test_each_job_runs_in_bfloat16_on_cpu(experiment, tmp_path):
    """trace, locogen, edit and evaluate with every model weight in bf16."""
    job, model, overrides = EXPERIMENTS[experiment]
    out = tmp_path / "run"
    result = localize(job, f"+experiment={experiment}", f"model={model}", *TINY, "model.dtype=bf16", *overrides,
                      *NARROWER_IN_BF16.get(experiment, ()), f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = pd.read_parquet(out / "results.parquet")
    numbers = results.select_dtypes("number")
    measured = numbers[[c for c in numbers.columns if c.startswith(("score", "clip_score", "value", "effect"))]]
    assert len(results) and measured.shape[1] and np.isfinite(measured.to_numpy(float)).all()
    assert (out / "config.yaml").read_text().count("dtype: bf16") == 1


SLOW_EXPERIMENTS = {"locogen_flux", "locogen_sd35", "locoedit_flux"}  # DiTs' methods also run in-process in
# test_dit.py


@pytest.mark.parametrize("experiment", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW_EXPERIMENTS else e
                                        for e in sorted(EXPERIMENTS)])
def test_published_experiment_runs_on_the_tiny_model_of_its_family(experiment, tmp_path):
    job, model, overrides = EXPERIMENTS[experiment]
    out = tmp_path / "run"
    result = localize(job, f"+experiment={experiment}", f"model={model}", *TINY, *overrides,
                      f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "results.parquet").is_file() and (out / "config.yaml").is_file()
