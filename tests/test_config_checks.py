"""Every job's config is checked before any model loads: a mistyped key or a bad value exits with an error that
names it, no `Model` is built, and nothing is written (not even Hydra's run directory).
Run in-process through the command line's `main`."""

import pytest

from localize.cli import main
from localize.model import Model

BAD = [  # (job and overrides, what the error names)
    (["layers", "model.nmae=x"], "nmae"),
    (["trace", "stepz=3"], "stepz"),
    (["trace", "steps=0"], "steps must be >= 1, got 0"),
    (["trace", "unet_kinds=[conv]"], "unknown denoiser state kind(s) ['conv']"),
    (["trace", "seeds=[]"], "seeds is empty"),
    (["trace", "confidence=95"], "confidence must be in (0, 1), got 95"),
    (["locogen", "m=0"], "window size m=0"),
    (["locogen", "objective=sideways"], "unknown objective 'sideways'"),
    (["locogen", "neurons.ablation=half"], "unknown ablation 'half'"),
    (["locogen", "blocks=triple"], "unknown blocks 'triple'; valid: dual, single"),
    (["edit", "method=uce", "+params.concept_tokens=first"], "concept_tokens"),
    (["edit", "+params.lamda=0.1"], "time takes no parameter(s) lamda"),
    (["edit", "method=tiem"], "Could not find 'method/tiem'"),
    (["edit", "steps=-1", "evaluate=[a box]"], "steps must be >= 1, got -1"),
    (["edit", "guidance=nan", "evaluate=[a box]"], "guidance must be a finite number >= 0"),
    (["trace", "seeds=[-1]"], "seeds must be integers in 0..2**63-1; got [-1]"),
    (["trace", "seeds=[abc]"], "seeds"),
    (["locogen", "seeds=[1.5]"], "seeds"),
    (["evaluate", "steps=2.5"], "steps"),
    (["edit", "seeds=[]", "evaluate=[a box]"], "seeds is empty"),
    (["edit", "method=uce", "~params.concepts"], "uce needs parameter(s) concepts"),
    (["edit", "method=uce", "+params.mode=erasee"], "UCE mode 'erasee'"),
    (["evaluate", "+params.lamda=0.1"], "time takes no parameter(s) lamda"),
    (["edit", "+params.lam=-1"], "lambda must be a finite number > 0, got -1"),
    (["edit", "params.source=''"], "an empty source prompt cannot be edited"),
    (["edit", "+params.preserve=[an apple]"], "prompts ['an apple'] are both edited and preserved"),
    (["edit", "method=uce", "+params.strength=0.5"], "erase maps concepts fully onto their guides"),
    (["edit", "method=diffquickfix", "+params.bias=thrice"], "unknown bias 'thrice'; valid: once, twice"),
    (["evaluate", "edit=locoedit", "+params.alignment=middle"], "unknown alignment 'middle'; valid: time, final"),
    (["evaluate", "edit=tiem"], "unknown edit method 'tiem'"),
    (["evaluate", "dataset.path=${shipped:organism_road.csv}"], "organism_road.csv' lacks column(s) gt1, gt2"),
    (["evaluate", "dataset.cases=[7]"], "dataset has no case(s) [7]; its cases: [0, 1]"),
    (["evaluate", "dataset.cases=[]"], "dataset.cases is empty: give some of its cases [0, 1]"),
    (["evaluate", "classifier=nomodule"], "give `organism` or `module:function`"),
    (["evaluate", "quality.fid=true", "quality.fid_weights=/no/inception.pth"],
     "FID needs its weights file /no/inception.pth, which is missing"),
    (["evaluate", "quality.lpips=maybe"], "unknown quality.lpips 'maybe'; valid: auto, on, off"),
    (["evaluate", "dataset.format=i2p", "dataset.path=${shipped:organism_i2p.csv}", "nudity.threshold=6"],
     "nudity threshold must be in (0, 1), got 6"),
    (["evaluate", "side_effects.prompts=/no/file.csv"], "side_effects.prompts: no file '/no/file.csv'"),
    (["evaluate", "side_effects.prompts=${shipped:organism_i2p.csv}"], "holds edited prompt(s) ['a box']"),
    (["attack", "seeds=[0,100]"], "attack.train_seeds and seeds share [0]"),
    (["attack", "method=neurons"], "attack needs erased concepts"),
    (["evaluate", "batch_size=0"], "batch_size must be 'auto' (from the device's free memory) or an integer >= 1"),
    (["trace", "batch_size=lots"], "integer >= 2 (a clean row and a restored row), got 'lots'"),
    (["locogen", "memory_budget=-2"], "memory_budget must be a number of GiB > 0"),
    (["report", "outptu=x"], "outptu"),
    (["report", "x" * 300], "is not a directory"),
    (["report", "run_dir=/no/such/run"], "run_dir '/no/such/run' is not a directory"),
    (["layers", "hydra.run.dir=/dev/null/run"], "/dev/null is a file, not a directory"),
    (["demo", "stages.0.job=trase"], "unknown job 'trase'"),
    (["demo", "common=['steps=0']"], "stage 'trace': steps must be >= 1, got 0"),
    (["demo", "stages.3.overrides=['+params.lamda=0.1']"], "stage 'time': time takes no parameter(s) lamda"),
]


@pytest.mark.parametrize(("argv", "named"), BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_bad_config_is_an_error_before_any_model_loads(argv, named, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(Model, "__init__", no_model)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *([] if any(a.startswith("hydra.run.dir=") for a in argv) else [f"hydra.run.dir={out}"])])
    assert isinstance(exit_info.value.code, str)  # sys.exit(message): printed to stderr, exit status 1
    assert named in exit_info.value.code
    assert not out.exists()


def test_edit_methods_bring_the_organisms_example_only_to_the_organism():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="localize.conf", version_base="1.3"):
        for method in ("time", "uce", "uce_joint", "locoedit", "diffquickfix", "refact", "neurons"):
            organism = compose(config_name="edit", overrides=[f"method={method}"])
            other = compose(config_name="edit", overrides=[f"method={method}", "model=random_sd15_tiny"])
            assert organism.params and organism.evaluate, method
            assert dict(other.params) == ({"mode": "joint"} if method == "uce_joint" else {}), method
            assert list(other.evaluate) == [], method


def test_runtime_settings_are_built_from_the_config_keys_not_copied_by_hand():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from causal_tracing.job import settings_of
    from causal_tracing.settings import TraceSettings
    from localize.config import settings_from
    from locogen.job import neuron_settings_of

    with initialize_config_module(config_module="localize.conf", version_base="1.3"):
        trace = compose(config_name="trace", overrides=["steps=7", "noise.scale=2.5", "min_drop=0.5",
                                                        "step_range=[1,3]", "batch_size=9"])
        locogen = compose(config_name="locogen", overrides=["neurons.ks=[1,3]", "neurons.ablation=zero"])
    assert settings_of(trace) == TraceSettings(steps=7, guidance=trace.guidance, noise_scale=2.5, step_range=(1, 3),
                                               batch_size=9, min_drop=0.5)
    neurons = neuron_settings_of(locogen)
    assert (neurons.ks, neurons.ablation, neurons.steps) == ((1, 3), "zero", locogen.steps)
    with pytest.raises(KeyError, match="TraceSettings.min_drop: the config has no key 'min_drop'"):
        settings_from(OmegaConf.masked_copy(trace, ["steps", "guidance", "noise", "step_range", "batch_size",
                                                    "memory_budget"]), TraceSettings,
                      {"noise_scale": "noise.scale", "noise_std": "noise.std"})


def test_checking_a_config_imports_no_torch():
    """Every job's config check runs before torch, diffusers or a model is imported: a bad value fails in about
    two seconds, not the ten that importing the model stack takes."""
    import subprocess
    import sys

    code = ("import sys\nfrom localize.cli import main\n"
            "for argv in (['edit', '+params.lamda=0.1'], ['evaluate', 'edit=uce', '+params.mode=x'], "
            "['trace', 'steps=0'], ['locogen', 'm=0'], ['demo', 'common=[\"steps=0\"]']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exit:\n        print(exit.code)\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'open_clip') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 6 and "lamda" in lines[0] and "UCE mode 'x'" in lines[1], result.stdout + result.stderr
    assert lines[-1] == "[]"


def test_the_edit_parameter_table_reads_each_method_functions_own_signature():
    import inspect

    from locoedit.api import _function
    from locoedit.params import FUNCTIONS, parameters

    for method, entry in FUNCTIONS.items():
        for mode in entry if isinstance(entry, dict) else ["erase"]:
            signature = inspect.signature(_function(method, mode)).parameters
            found = parameters(*(entry[mode] if isinstance(entry, dict) else entry))
            assert found.names == tuple(name for name in signature if name != "model"), (method, mode)
            assert found.required == tuple(name for name, p in signature.items() if name != "model"
                                           and p.default is p.empty and p.kind not in (p.VAR_KEYWORD,)), (method, mode)
