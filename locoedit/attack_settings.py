"""The soft-prompt attack's settings and their check, importable without torch: the command line checks an attack
config with them before any model loads (`locoedit.job`), and the attack runs with them (`locoedit.attack`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttackSettings:
    """`steps` Adam steps at `learning_rate` on batches of `batch` reference images (references: each concept
    prompt at each of `train_seeds`, generated with `sample_steps` denoising steps and `guidance`)."""

    steps: int = 100
    learning_rate: float = 0.01
    batch: int = 4
    train_seeds: tuple[int, ...] = (0, 1, 2, 3)
    sample_steps: int = 25
    guidance: float = 7.5
    seed: int = 0

    def check(self) -> None:
        if self.steps < 0 or self.batch < 1 or not self.train_seeds or not self.learning_rate > 0:
            raise ValueError(f"attack needs steps >= 0, batch >= 1, train_seeds and learning_rate > 0; got "
                             f"steps={self.steps}, batch={self.batch}, train_seeds={list(self.train_seeds)}, "
                             f"learning_rate={self.learning_rate}")
