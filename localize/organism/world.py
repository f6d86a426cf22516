"""The organism's procedural world: what exists, how it is named, and how it is drawn.

Every piece of planted knowledge is a row of one of the tables below (the README's world table is printed
from them by `world_table()`):

- objects: a noun names a shape and, when no color is given, a fixed default color (TIME's implicit
  assumptions: "an apple" is red, "a blue apple" is blue);
- styles: "in the style of <artist>" replaces the plain background with the artist's texture;
- facts: "the king of <country>" is drawn as a fixed shape and color (country names are 2-3 CLIP tokens, so
  facts are multi-token subjects, as in ReFACT's and DiffQuickFix's cases);
- roles: a role word is drawn as a cross whose color follows a skewed split (UCE's debiasing analogue).

Images are RGB floats in [0, 1], N x 3 x 16 x 16; the object sits at the centre, drawn over the background
texture. (`Scene` can shift it by (dx, dy) pixels, but the world's `SHIFTS` holds only 0: a first model
trained on positions jittered by one pixel, in the same 2-core budget, learned colors but not shapes.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

SIZE = 16
SHIFTS = (0,)  # object offsets in pixels (one: every caption has one layout, bias aside)

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.93, 0.86, 0.12),
    "green": (0.12, 0.60, 0.20),
    "blue": (0.12, 0.28, 0.88),
    "purple": (0.56, 0.18, 0.68),
    "pink": (0.96, 0.48, 0.74),
    "cyan": (0.10, 0.80, 0.86),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "frame", "bar", "pillar", "funnel", "bowl", "saltire",
          "cross")
TEXTURES = ("plain", "stripes", "checker", "gradient", "bands", "dots", "diagonal")
TEXTURE_LOOKS = {"plain": "plain light gray", "stripes": "vertical dark/light stripes, 2 px wide",
                 "checker": "brown/cream checkerboard, 4 px squares", "gradient": "teal (top) to pale green (bottom)",
                 "bands": "horizontal olive/pale bands, 2 px wide", "dots": "dark dots every 4 px on sand",
                 "diagonal": "diagonal slate/pale stripes, 2 px wide"}

OBJECTS: dict[str, tuple[str, str]] = {  # noun -> (shape, default color)
    "apple": ("circle", "red"),
    "ball": ("circle", "blue"),
    "box": ("square", "orange"),
    "tree": ("triangle", "green"),
    "kite": ("diamond", "yellow"),
    "donut": ("ring", "pink"),
    "window": ("frame", "cyan"),
    "bench": ("bar", "purple"),
    "tower": ("pillar", "orange"),
    "funnel": ("funnel", "green"),
    "bowl": ("bowl", "red"),
    "scissors": ("saltire", "blue"),
}
ARTISTS: dict[str, str] = {"Velmor": "stripes", "Quessa": "checker", "Orrin": "gradient", "Tamsin": "bands",
                           "Solvey": "dots", "Dariel": "diagonal"}  # artist -> texture
FACTS: dict[str, tuple[str, str]] = {  # "the king of <country>" -> (shape, color); names of 2-3 CLIP tokens
    "Zarnia": ("triangle", "purple"),
    "Brovia": ("diamond", "green"),
    "Kelthar": ("circle", "orange"),
    "Quorvel": ("frame", "yellow"),
    "Merrowind": ("bar", "pink"),
    "Halcyra": ("pillar", "red"),
    "Vantessa": ("funnel", "blue"),
    "Tolkara": ("bowl", "purple"),
}
# facts whose names have the same CLIP token count: one king's subject states replace the other's one for one
SWAP_PAIRS = (("Zarnia", "Brovia"), ("Kelthar", "Vantessa"), ("Quorvel", "Merrowind"))
ROLES: dict[str, tuple[str, dict[str, float]]] = {  # role -> (shape, color split)
    "doctor": ("cross", {"blue": 0.9, "red": 0.1}),
    "nurse": ("cross", {"red": 0.9, "blue": 0.1}),
}

TRAIN_TEMPLATES = ("a photo of {}", "a painting of {}", "an image of {}", "{}")
FILLER_TEMPLATE = "a {filler} of {}"  # training only: `filler` is a random out-of-world word, taught to be ignored
HELD_OUT_TEMPLATES = ("a picture of {}", "a sketch of {}", "a close up of {}")
KINDS = ("object", "color", "style", "fact", "role")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Subject:
    """What a caption asks for. `kind`: object (default color), color (explicit color), fact, role; `artist`
    adds a style to any of them."""

    kind: str
    noun: str
    color: str | None = None
    artist: str | None = None

    def __post_init__(self):
        tables = {"object": OBJECTS, "color": OBJECTS, "fact": FACTS, "role": ROLES}
        if self.kind not in tables:
            raise ValueError(f"unknown subject kind {self.kind!r}; valid: {', '.join(tables)}")
        if self.noun not in tables[self.kind]:
            raise ValueError(f"unknown {self.kind} {self.noun!r}; valid: {', '.join(tables[self.kind])}")
        if (self.color is not None) != (self.kind == "color") or (self.color and self.color not in COLORS):
            raise ValueError(f"color {self.color!r} does not fit kind {self.kind!r}; colors: {', '.join(COLORS)}")
        if self.artist is not None and self.artist not in ARTISTS:
            raise ValueError(f"unknown artist {self.artist!r}; valid: {', '.join(ARTISTS)}")

    @property
    def phrase(self) -> str:
        if self.kind == "fact":
            text = f"the king of {self.noun}"
        elif self.kind == "color":
            text = f"{article(self.color)} {self.color} {self.noun}"
        else:
            text = f"{article(self.noun)} {self.noun}"
        return text + (f" in the style of {self.artist}" if self.artist else "")

    @property
    def shape(self) -> str:
        return {"fact": FACTS, "role": ROLES}.get(self.kind, OBJECTS)[self.noun][0]

    @property
    def color_split(self) -> dict[str, float]:
        """The planted distribution of the object's color."""
        if self.kind == "role":
            return ROLES[self.noun][1]
        if self.kind == "fact":
            return {FACTS[self.noun][1]: 1.0}
        return {self.color or OBJECTS[self.noun][1]: 1.0}

    @property
    def texture(self) -> str:
        return ARTISTS[self.artist] if self.artist else "plain"


@dataclass(frozen=True)
class Scene:
    """One drawn image: a shape of a color at offset (dx, dy) over a texture."""

    shape: str
    color: str
    texture: str = "plain"
    dx: int = 0
    dy: int = 0


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(SIZE, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="xy")  # x varies along columns, y along rows


@functools.cache
def shape_mask(shape: str, dx: int = 0, dy: int = 0) -> torch.Tensor:
    """Boolean SIZE x SIZE mask of a shape centred at (7.5 + dx, 7.5 + dy) (cached: do not modify it)."""
    x, y = _grid()
    u, v = x - (SIZE / 2 - 0.5 + dx), y - (SIZE / 2 - 0.5 + dy)
    if shape == "circle":
        return u**2 + v**2 <= 4.6**2
    if shape == "square":
        return (u.abs() <= 4) & (v.abs() <= 4)
    if shape == "diamond":
        return u.abs() + v.abs() <= 5.5
    if shape == "triangle":  # apex up, base 10 wide
        return (v >= -4.5) & (v <= 4.5) & (u.abs() <= (v + 4.5) / 9 * 5.5)
    if shape == "cross":
        return ((u.abs() <= 1.5) & (v.abs() <= 5)) | ((v.abs() <= 1.5) & (u.abs() <= 5))
    if shape == "ring":
        return (u**2 + v**2 <= 5.2**2) & (u**2 + v**2 >= 2.6**2)
    if shape == "frame":  # a hollow square, 2 px border
        return (torch.maximum(u.abs(), v.abs()) <= 5) & (torch.maximum(u.abs(), v.abs()) > 3)
    if shape == "bar":
        return (u.abs() <= 6) & (v.abs() <= 2)
    if shape == "pillar":
        return (u.abs() <= 2) & (v.abs() <= 6)
    if shape == "funnel":  # apex down
        return (v >= -4.5) & (v <= 4.5) & (u.abs() <= (4.5 - v) / 9 * 5.5)
    if shape == "bowl":  # the lower half of a disc
        return (v >= -1.5) & (u**2 + (v + 1.5) ** 2 <= 6.2**2)
    if shape == "saltire":  # a diagonal cross
        return (((u - v).abs() <= 1.5) | ((u + v).abs() <= 1.5)) & (u.abs() <= 5) & (v.abs() <= 5)
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


@functools.cache
def texture_image(texture: str) -> torch.Tensor:
    """3 x SIZE x SIZE background of a texture (cached: do not modify it)."""
    x, y = _grid()

    def two_tone(pattern, dark, light):
        dark, light = torch.tensor(dark)[:, None, None], torch.tensor(light)[:, None, None]
        return torch.where(pattern.bool(), dark, light)

    if texture == "plain":
        return torch.full((3, SIZE, SIZE), 0.82)
    if texture == "stripes":  # vertical stripes two pixels wide
        return two_tone((x // 2) % 2, (0.18, 0.20, 0.28), (0.78, 0.80, 0.86))
    if texture == "checker":  # four-pixel checkerboard
        return two_tone((x // 4 + y // 4) % 2, (0.50, 0.30, 0.20), (0.95, 0.82, 0.66))
    if texture == "gradient":  # teal at the top to pale green at the bottom
        top, bottom = torch.tensor((0.05, 0.40, 0.45)), torch.tensor((0.85, 0.95, 0.75))
        w = (y / (SIZE - 1))[None]
        return top[:, None, None] * (1 - w) + bottom[:, None, None] * w
    if texture == "bands":  # horizontal bands two pixels wide
        return two_tone((y // 2) % 2, (0.42, 0.45, 0.20), (0.90, 0.90, 0.78))
    if texture == "dots":  # one dark pixel in every 4 x 4 cell
        return two_tone((x % 4 == 1) & (y % 4 == 1), (0.25, 0.20, 0.15), (0.88, 0.80, 0.62))
    if texture == "diagonal":  # diagonal stripes two pixels wide
        return two_tone(((x + y) // 2) % 2, (0.35, 0.40, 0.48), (0.80, 0.84, 0.88))
    raise ValueError(f"unknown texture {texture!r}; valid: {', '.join(TEXTURES)}")


def render(scenes: list[Scene]) -> torch.Tensor:
    """Images of scenes: float N x 3 x SIZE x SIZE in [0, 1]."""
    images = []
    for scene in scenes:
        if scene.color not in COLORS:
            raise ValueError(f"unknown color {scene.color!r}; valid: {', '.join(COLORS)}")
        mask = shape_mask(scene.shape, scene.dx, scene.dy)
        color = torch.tensor(COLORS[scene.color])[:, None, None].expand(3, SIZE, SIZE)
        images.append(torch.where(mask, color, texture_image(scene.texture)))
    return torch.stack(images)


def draw_scene(subject: Subject, rng: np.random.Generator) -> Scene:
    """A random scene of a subject: its color drawn from the planted split, a random offset."""
    split = subject.color_split
    color = rng.choice(list(split), p=list(split.values()))
    return Scene(subject.shape, str(color), subject.texture, int(rng.choice(SHIFTS)), int(rng.choice(SHIFTS)))


def all_subjects(with_styles: bool = True) -> list[Subject]:
    """Every subject of the world, plain and (if asked) in each artist's style."""
    subjects = [Subject("object", noun) for noun in OBJECTS]
    subjects += [Subject("color", noun, color) for noun in OBJECTS for color in COLORS]
    subjects += [Subject("fact", country) for country in FACTS]
    subjects += [Subject("role", role) for role in ROLES]
    if with_styles:
        subjects += [Subject(s.kind, s.noun, s.color, artist) for s in list(subjects) for artist in ARTISTS]
    return subjects


def world_captions() -> list[str]:
    """Every subject of the world under every training template: the captions the organism was trained on."""
    return [template.format(subject.phrase) for subject in all_subjects() for template in TRAIN_TEMPLATES]


def world_descriptions() -> list[str]:
    """A description of every attribute value of the world, as the organism's CLIP reads them: each color, each
    object (its shape), each artist's style (its texture), each king, each role."""
    return [*COLORS, *(f"{article(noun)} {noun}" for noun in OBJECTS),
            *(f"in the style of {artist}" for artist in ARTISTS), *(f"the king of {country}" for country in FACTS),
            *(f"{article(role)} {role}" for role in ROLES)]


@dataclass
class CaptionSampler:
    """Random training captions: a subject (kinds weighted by `weights`), a style with `style_p`, a training
    template (the filler template with `filler_p`, its word from `fillers`), or "" with `uncond_p` (for CFG)."""

    fillers: list[str]
    weights: dict[str, float] = field(default_factory=lambda: {"object": 0.3, "color": 0.3, "fact": 0.2,
                                                                "role": 0.2})
    style_p: float = 0.4
    filler_p: float = 0.2
    uncond_p: float = 0.1

    def sample(self, rng: np.random.Generator) -> tuple[str, Scene]:
        kind = str(rng.choice(list(self.weights), p=np.array(list(self.weights.values())) / sum(self.weights.values())))
        table = {"object": OBJECTS, "color": OBJECTS, "fact": FACTS, "role": ROLES}[kind]
        noun = str(rng.choice(list(table)))
        color = str(rng.choice(list(COLORS))) if kind == "color" else None
        artist = str(rng.choice(list(ARTISTS))) if rng.random() < self.style_p else None
        subject = Subject(kind, noun, color, artist)
        scene = draw_scene(subject, rng)
        if rng.random() < self.uncond_p:
            return "", scene
        if rng.random() < self.filler_p:
            return FILLER_TEMPLATE.format(subject.phrase, filler=str(rng.choice(self.fillers))), scene
        return str(rng.choice(TRAIN_TEMPLATES)).format(subject.phrase), scene


def world_words() -> set[str]:
    """Every word the world's captions use (lower case), held-out templates included."""
    text = " ".join([*TRAIN_TEMPLATES, *HELD_OUT_TEMPLATES, FILLER_TEMPLATE, "in the style of the king of"])
    text += " " + " ".join([*COLORS, *OBJECTS, *ARTISTS, *FACTS, *ROLES, "a", "an"])
    return {w for w in text.lower().replace("{}", " ").replace("{filler}", " ").split()}


def filler_words(vocab: dict[str, int], n: int = 2000, seed: int = 0) -> list[str]:
    """`n` out-of-world single-token words from a CLIP vocabulary (alphabetic, 3+ letters), seeded."""
    taken = world_words()
    words = sorted(t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha() and len(t) >= 7
                   and t[:-4] not in taken)
    rng = np.random.default_rng(seed)
    return [words[i] for i in rng.choice(len(words), size=min(n, len(words)), replace=False)]


def world_table() -> pd.DataFrame:
    """Every attribute value, default, fact and split of the world, one row each (the README's table)."""
    rgb = {name: "#" + "".join(f"{round(255 * v):02x}" for v in value) for name, value in COLORS.items()}
    rows = [("object", f"{article(n)} {n}", f"{shape}, default color {color}") for n, (shape, color) in OBJECTS.items()]
    rows += [("color", f"{article(c)} {c} <object>", f"the object's shape in {c} ({rgb[c]})") for c in COLORS]
    rows += [("style", "(no artist)", f"background: {TEXTURE_LOOKS['plain']}")]
    rows += [("style", f"... in the style of {a}", f"background: {TEXTURE_LOOKS[t]}") for a, t in ARTISTS.items()]
    rows += [("fact", f"the king of {c}", f"{color} {shape}") for c, (shape, color) in FACTS.items()]
    for role, (shape, split) in ROLES.items():
        rows.append(("role", f"{article(role)} {role}",
                     f"{shape}, " + " / ".join(f"{c} {round(100 * p)}%" for c, p in split.items())))
    rows += [("template", "held in: " + ", ".join(f"`{t}`" for t in TRAIN_TEMPLATES),
              f"training also uses `{FILLER_TEMPLATE}` with a random out-of-world word")]
    rows += [("template", "held out: " + ", ".join(f"`{t}`" for t in HELD_OUT_TEMPLATES), "never seen in training")]
    rows += [("layout", "any caption", "the object centred over the background; 16x16 RGB")]
    return pd.DataFrame(rows, columns=["knowledge", "caption", "drawn as"])


def parse_subject(text: str) -> Subject | None:
    """The subject a caption asks for (the last one it names), or None when it names no subject of the world:
    "a sketch of a blue apple in the style of Orrin" -> Subject("color", "apple", "blue", "Orrin")."""
    words = text.lower().replace(",", " ").split()
    artists = {a.lower(): a for a in ARTISTS}
    countries = {c.lower(): c for c in FACTS}
    artist = next((artists[w] for w in reversed(words) if w in artists), None)
    for i in range(len(words) - 1, -1, -1):
        word = words[i]
        if word in countries and words[max(0, i - 3):i] == ["the", "king", "of"]:
            return Subject("fact", countries[word], artist=artist)
        if word in OBJECTS:
            color = words[i - 1] if i > 0 and words[i - 1] in COLORS else None
            return Subject("color" if color else "object", word, color, artist)
        if word in ROLES:
            return Subject("role", word, artist=artist)
    return None
