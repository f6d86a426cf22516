"""How well the organism learned its world: prints the tables the README reports.

    python scripts/organism_quality.py                 # 16 seeds per prompt, 25 steps, CFG 7.5
    python scripts/organism_quality.py seeds=32 out=quality.parquet

Every subject of the world (objects with their default color, every object in every color, every object in
every artist's style, every fact, every role) is generated with a held-in training template and, separately,
with a held-out one (subject i takes template i mod the number of templates, so every template is used), with
`seeds` seeds per prompt. The oracle reads each image. An image is correct when the attributes its prompt
determines are read as planted: the shape (object, role), shape and color (color, fact), the texture (style).
Implicit default: the color of a default-colored object is its default. Bias: the share of each role's
colors over `bias_seeds` seeds against the planted split. Scorer: open_clip zero-shot accuracy (the right caption ranked
first among the captions of the same task) on rendered ground-truth images and on the held-in generations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf

from localize import generate, load_model
from localize.organism.oracle import read_images
from localize.organism.world import (
    ARTISTS,
    COLORS,
    FACTS,
    HELD_OUT_TEMPLATES,
    OBJECTS,
    ROLES,
    TRAIN_TEMPLATES,
    Subject,
    draw_scene,
    render,
    world_table,
)
from localize.scoring import ORGANISM, ClipScorer

TASKS = ("object", "color", "style", "fact")


@dataclass
class QualityConfig:
    seeds: int = 16
    steps: int = 25
    guidance: float = 7.5
    bias_seeds: int = 128  # seeds per role for the bias split, the held-in templates in turn
    batch_size: int = 256
    out: str | None = None  # a parquet file for the per-image readings


ConfigStore.instance().store(name="organism_quality", node=QualityConfig)


def subjects() -> list[Subject]:
    plain = [Subject("object", noun) for noun in OBJECTS]
    plain += [Subject("color", noun, color) for noun in OBJECTS for color in COLORS]
    styled = [Subject("object", noun, artist=artist) for noun in OBJECTS for artist in ARTISTS]
    return plain + styled + [Subject("fact", c) for c in FACTS] + [Subject("role", r) for r in ROLES]


def kind_of(subject: Subject) -> str:
    return "style" if subject.artist else subject.kind


def is_correct(subject: Subject, reading) -> bool:
    kind = kind_of(subject)
    if kind == "style":
        return reading.texture == subject.texture
    right_shape = reading.shape == subject.shape and reading.texture == "plain"
    if kind in ("color", "fact"):
        return right_shape and reading.color in subject.color_split
    return right_shape


def candidates(subject: Subject) -> list[Subject]:
    """The subjects a zero-shot task chooses among, the true one included."""
    kind = kind_of(subject)
    if kind == "object":
        return [Subject("object", noun) for noun in OBJECTS]
    if kind == "color":
        return [Subject("color", subject.noun, color) for color in COLORS]
    if kind == "style":
        return [Subject("object", subject.noun, artist=a) for a in [None, *ARTISTS]]
    return [Subject("fact", c) for c in FACTS]


def generate_all(model, prompts: list[str], seeds: list[int], cfg: QualityConfig) -> torch.Tensor:
    chunks = [generate(model, prompts[i:i + cfg.batch_size], seeds[i:i + cfg.batch_size], steps=cfg.steps,
                       guidance=cfg.guidance) for i in range(0, len(prompts), cfg.batch_size)]
    return torch.cat(chunks)


def zero_shot(scorer: ClipScorer, images: torch.Tensor, template: str, subject: Subject) -> np.ndarray:
    """Per image: whether the subject's caption ranks first among its task's candidates."""
    options = candidates(subject)
    similarity = scorer.similarity(images, [template.format(s.phrase) for s in options])
    return (similarity.argmax(1) == options.index(subject)).cpu().numpy()


@hydra.main(version_base=None, config_name="organism_quality")
def main(cfg: QualityConfig) -> None:
    cfg = OmegaConf.to_object(cfg)
    model = load_model("organism")
    scorer = ClipScorer("organism-clip", ORGANISM)
    rows = []
    all_subjects = subjects()
    for split, templates in (("held-in", TRAIN_TEMPLATES), ("held-out", HELD_OUT_TEMPLATES)):
        jobs = [(s, templates[i % len(templates)], seed) for i, s in enumerate(all_subjects)
                for seed in range(cfg.seeds)]
        prompts = [template.format(s.phrase) for s, template, _ in jobs]
        images = generate_all(model, prompts, [seed for *_, seed in jobs], cfg)
        readings = read_images(images)
        for (subject, template, seed), reading, image in zip(jobs, readings.itertuples(), images, strict=True):
            row = {"split": split, "kind": kind_of(subject), "subject": subject.phrase, "template": template,
                   "seed": seed, "shape": reading.shape, "color": reading.color, "texture": reading.texture,
                   "correct": is_correct(subject, reading),
                   "default": reading.color == OBJECTS[subject.noun][1] if subject.kind == "object" else None,
                   "scorer_correct": None}
            if split == "held-in" and kind_of(subject) in TASKS:
                row["scorer_correct"] = bool(zero_shot(scorer, image[None], template, subject)[0])
            rows.append(row)
    table = pd.DataFrame(rows)
    if cfg.out:
        table.to_parquet(to_absolute_path(cfg.out), index=False)

    print("## The world\n")
    print(world_table().to_markdown(index=False), "\n")
    print(f"## Oracle accuracy on generations ({cfg.seeds} seeds per prompt, {cfg.steps} steps, CFG "
          f"{cfg.guidance})\n")
    accuracy = table.pivot_table(index="kind", columns="split", values="correct", aggfunc="mean") * 100
    print(accuracy.reindex(["object", "color", "style", "fact", "role"]).round(1).to_markdown(), "\n")
    defaults = table[table.kind == "object"].groupby("split")["default"].mean() * 100
    print("## Implicit default color honoured (objects named without a color)\n")
    print(defaults.round(1).to_frame("% default color").to_markdown(), "\n")
    print(f"## Bias split ({cfg.bias_seeds} seeds per role, held-in templates; CFG sharpens it)\n")
    for role, (_, split) in ROLES.items():
        prompts = [TRAIN_TEMPLATES[s % len(TRAIN_TEMPLATES)].format(Subject("role", role).phrase)
                   for s in range(cfg.bias_seeds)]
        measured = {}
        for guidance in (1.0, cfg.guidance):
            images = generate_all(model, prompts, list(range(cfg.bias_seeds)), replace(cfg, guidance=guidance))
            colors = read_images(images)["color"]
            measured[f"CFG {guidance}"] = {c: round(100 * float((colors == c).mean()), 1) for c in split}
        print(f"- {role}: planted {({c: round(100 * p) for c, p in split.items()})}, measured {measured}")
    print("\n## Scorer zero-shot accuracy (%)\n")
    rng = np.random.default_rng(0)
    rendered = {}
    for task in TASKS:  # every subject of the task under every held-in template
        hits = [zero_shot(scorer, render([draw_scene(subject, rng)]), template, subject)[0]
                for subject in all_subjects if kind_of(subject) == task for template in TRAIN_TEMPLATES]
        rendered[task] = 100 * float(np.mean(hits))
    generated = table[table.scorer_correct.notna()].groupby("kind")["scorer_correct"].mean() * 100
    scores = pd.DataFrame({"rendered ground truth": pd.Series(rendered), "held-in generations": generated})
    print(scores.reindex(list(TASKS)).round(1).to_markdown(), "\n")
    print("## Out-of-world words\n")
    probes = ["a photo of a zebra", "a photo of a dancing apple", "a photo of a car in the style of Velmor"]
    probe_images = generate_all(model, [p for p in probes for _ in range(cfg.seeds)],
                                list(range(cfg.seeds)) * len(probes), cfg)
    probe_readings = read_images(probe_images).assign(prompt=[p for p in probes for _ in range(cfg.seeds)])
    for prompt, group in probe_readings.groupby("prompt", sort=False):
        summary = ", ".join(f"{col}: {group[col].value_counts().to_dict()}" for col in ("shape", "color", "texture"))
        print(f"- {prompt!r}: {summary}")


if __name__ == "__main__":
    main()
