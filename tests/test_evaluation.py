"""Dataset loaders, evaluation metrics, and the evaluate job end to end on the organism."""

import pandas as pd
import pytest
import torch
from test_cli import localize

from localize.classifiers import IMAGENETTE, imagenet_top1, imagenette_names
from localize.data import (
    TIMED_COLUMNS,
    DatasetFormatError,
    load_dataset,
    load_imagenette,
    load_road,
    load_timed,
    shipped,
)
from localize.metrics import mean_intervals, zero_shot_success
from localize.organism.oracle import expected_reading, oracle_success
from localize.organism.world import Scene, Subject, parse_subject, render
from localize.scoring import image_features_input, trained_with_quick_gelu
from locoedit.evaluate import SHOWN, Probe, edit_probes, shown


def test_shipped_files_load_in_their_published_formats():
    timed = load_timed(shipped("organism_timed.csv"))
    assert list(timed.columns[:len(TIMED_COLUMNS)]) == TIMED_COLUMNS and timed["case"].tolist() == [0, 1]
    assert load_road(shipped("organism_road.csv"))["new"].tolist() == ["a blue box"]
    shapes = load_imagenette(shipped("organism_shapes.csv"))
    assert shapes["case"].tolist() == shapes["case_number"].tolist() and "class" in shapes
    assert len(load_dataset("prompts", shipped("organism_styles.csv"))) == 8


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "timed.csv"
    table = load_timed(shipped("organism_timed.csv")).drop(columns=["gt3", "gn5", "case"])
    table.to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match="lacks column\\(s\\) gt3, gn5"):
        load_timed(path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetFormatError, match="is empty"):
        load_timed(tmp_path / "empty.csv")
    (tmp_path / "seeds.csv").write_text("prompt,evaluation_seed,case_number\na box,x,0\n")
    with pytest.raises(DatasetFormatError, match="evaluation_seed must hold integers"):
        load_dataset("prompts", tmp_path / "seeds.csv")
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_road(tmp_path / "nope.csv")
    rows = shipped("organism_timed.csv").read_text().splitlines()
    for name, extra in (("one.csv", [rows[1] + ",x"]), ("every.csv", [row + ",x" for row in rows[1:]])):
        (tmp_path / name).write_text("\n".join([rows[0], *extra]) + "\n")  # every row: pandas would shift them
        with pytest.raises(DatasetFormatError, match="a row has more fields than the header"):
            load_timed(tmp_path / name)
    (tmp_path / "latin1.csv").write_bytes("prompt,evaluation_seed,case_number\na caf\u00e9,0,0\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="is not UTF-8 text .*save it as UTF-8"):
        load_dataset("prompts", tmp_path / "latin1.csv")
    with pytest.raises(ValueError, match="unknown dataset format 'coco'; valid: timed, road, prompts, imagenette"):
        load_dataset("coco", path)
    with pytest.raises(FileNotFoundError, match="shipped: .*organism_road.csv"):
        shipped("TIMED.csv")


def test_parse_subject_reads_the_world_captions():
    assert parse_subject("a sketch of a blue apple in the style of Orrin") == Subject("color", "apple", "blue", "Orrin")
    assert parse_subject("a photo of the king of Zarnia") == Subject("fact", "Zarnia")
    assert parse_subject("a photo of") is None
    assert expected_reading("a doctor") == {"shape": "cross", "color": "blue", "texture": "plain"}
    with pytest.raises(ValueError, match="names no subject"):
        expected_reading("a purple triangle")


def test_openai_clip_scorers_get_the_activation_their_weights_were_trained_with():
    assert trained_with_quick_gelu("ViT-L-14", "openai") and trained_with_quick_gelu("ViT-B-32", "openai")
    assert not trained_with_quick_gelu("ViT-H-14", "laion2b_s32b_b79k")
    assert not trained_with_quick_gelu("ViT-L-14", None)


def test_half_precision_images_are_resized_for_the_scorer(scorer):
    images = torch.rand(2, 3, 32, 32)
    full = image_features_input(scorer.model, images)
    half = image_features_input(scorer.model, images.half())
    assert half.dtype == torch.float16 and half.shape == full.shape
    torch.testing.assert_close(half.float(), full, rtol=0, atol=2e-2)


def test_zero_shot_and_oracle_metrics_on_rendered_images(scorer):
    images = render([Scene("circle", "blue"), Scene("circle", "red"), Scene("square", "orange", "stripes")])
    texts = ["a blue apple", "an apple", "a box in the style of Velmor"]
    assert oracle_success(images, texts).tolist() == [1.0, 1.0, 1.0]
    assert oracle_success(images, ["an apple", "a blue apple", "a box"]).tolist() == [0.0, 0.0, 0.0]
    match, mismatch = ["a blue apple", "a red apple", "a box"], ["a red apple", "a blue apple", "a tree"]
    success = zero_shot_success(scorer, images, match, mismatch)
    cos = scorer.image_features(images) @ scorer.text_features(match + mismatch).T
    independent = [float(cos[i, i] > cos[i, 3 + i]) for i in range(3)]
    assert success.tolist() == independent
    with pytest.raises(ValueError, match="one match and one mismatch text per image"):
        zero_shot_success(scorer, images, match[:2], mismatch)


def test_mean_intervals_per_group():
    table = pd.DataFrame({"metric": ["a"] * 4 + ["b"] * 2, "value": [1, 0, 1, 1, 0, 0]})
    summary = mean_intervals(table, ["metric"], resamples=200)
    assert summary["mean"].tolist() == [0.75, 0.0] and summary["n"].tolist() == [4, 2]
    assert summary.loc[0, "ci_low"] <= 0.75 <= summary.loc[0, "ci_high"]


def test_imagenette_names_from_an_imagenet_network():
    from torchvision.models import resnet50

    network = resnet50(weights=None).eval()
    classes = imagenet_top1(network, torch.rand(2, 3, 32, 32))
    assert classes.shape == (2,) and set(imagenette_names(classes)) <= {*IMAGENETTE.values(), "other"}
    assert imagenette_names(torch.tensor([497, 3])) == ["church", "other"]


def test_images_png_shows_each_prompt_of_the_first_case_once():
    probes = edit_probes(load_timed(shipped("organism_timed.csv")).iloc[0], "timed", list(range(24)))
    picked = shown(probes)
    assert len(probes) == 11 * 24 and len(picked) == 11  # efficacy, 5 positives, 5 negatives; 24 seeds each
    assert {probes[i].seed for i in picked} == {0} and len({probes[i].prompt for i in picked}) == 11
    many = [Probe(0, "prompt", f"prompt {i}", i, f"prompt {i}") for i in range(100)]
    assert shown(many) == list(range(SHOWN))


def test_evaluate_job_timed_case_before_and_after_time(tmp_path):
    out = tmp_path / "run"
    result = localize("evaluate", "dataset.cases=[0]", "seeds=[0]", "steps=4", "quality.lpips=off", "progress=false",
                      "side_effects.prompts=${shipped:organism_others.csv}", "side_effects.top=3",
                      f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 11 * 1 * (2 * 2 + 2)  # probes x seeds x (phases x (zero_shot, oracle) + after: ssim, psnr)
    assert set(table["metric"]) == {"efficacy", "generality", "specificity"} and set(table["case"]) == {0}
    assert set(table["measure"]) == {"zero_shot", "oracle", "ssim", "psnr"}
    assert table.loc[table["measure"].isin(["zero_shot", "oracle"]), "value"].isin([0.0, 1.0]).all()
    assert (table["rank"] > 0).all() and (table["dataset.format"] == "timed").all()
    metrics = pd.read_parquet(out / "metrics.parquet")
    efficacy = metrics.set_index(["metric", "measure", "phase"])["mean"]
    assert efficacy[("efficacy", "oracle", "before")] == 0.0  # an apple is red before the edit
    assert efficacy[("efficacy", "oracle", "after")] == 1.0  # and blue after it
    assert (out / "images.png").stat().st_size > 0 and "specificity" in (out / "summary.txt").read_text()
    ssim = table[table["measure"] == "ssim"].groupby("metric")["value"].mean()  # each image against its before
    assert ssim["efficacy"] < ssim["specificity"]  # the edited prompt changed more than the unrelated ones
    side = pd.read_parquet(out / "side_effects.parquet")  # what else changed, on prompts the edit did not target
    assert len(side) == 36 and set(side["case"]) == {0} and side["rank"].tolist() == list(range(1, 37))
    assert "what else changed" in result.stdout and "case 0:" in result.stdout


def test_evaluate_job_prompt_list_with_an_erasure_and_a_classifier(tmp_path):
    out = tmp_path / "run"
    result = localize("evaluate", "dataset.format=imagenette", "dataset.path=${shipped:organism_shapes.csv}",
                      "dataset.cases=[0,1,2]", "edit=uce", "+params.concepts=[a photo of a box]",
                      "+params.guides=[a photo of an apple]", "classifier=organism", "steps=4", "quality.lpips=off",
                      "progress=false",
                      f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["measure"]) == {"clip_score", "class_accuracy", "oracle", "ssim", "psnr"}
    assert len(table) == 3 * (3 * 2 + 2)  # prompts x (3 measures x 2 phases + after: ssim, psnr)
    accuracy = table[table["measure"] == "class_accuracy"].set_index(["prompt", "phase"])["value"]
    assert accuracy[("a photo of a box", "before")] == 1.0 and accuracy[("a photo of a box", "after")] == 0.0
    metrics = pd.read_parquet(out / "metrics.parquet")  # per class: the erased square apart from the others
    per_class = metrics[metrics["measure"] == "class_accuracy"].set_index(["class", "phase"])["mean"]
    assert per_class[("square", "after")] == 0.0 and per_class[("circle", "after")] == 1.0
    assert "square" in (out / "summary.txt").read_text()
