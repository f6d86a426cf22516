"""The one ridge equation behind every closed-form edit (TIME, UCE, LOCOEDIT, DiffQuickFix, ReFACT):

    W' = (lam W + sum_i v*_i k_i^T + s_p sum_j W k_j k_j^T) (lam I + sum_i k_i k_i^T + s_p sum_j k_j k_j^T)^-1

the minimizer of lam |W' - W|^2 + sum_i |W' k_i - v*_i|^2 + s_p sum_j |W' k_j - W k_j|^2.

Conventions: a weight is [out, in] (torch's `nn.Linear`); keys are rows, [n, in]; targets are rows, [n, out];
preserved keys [m, in]. The Gram matrix G = lam I + K^T K + s_p K_p^T K_p depends only on the keys, so
`RidgeProblem` factors it once (Cholesky, float64) and solves for every weight that shares the keys (all to_k
and to_v of a TIME edit). It is solved, never inverted; an ill-conditioned G is an error, not garbage weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_CONDITION = 1e12  # float64 keeps about 16 digits; beyond this the solve keeps fewer than 4


class IllConditionedError(ValueError):
    """The Gram matrix is singular or too ill-conditioned for a trustworthy solve."""


@dataclass
class RidgeProblem:
    """The keys side of the equation: `keys` [n, in], `lam` > 0 unless the keys alone span the input space,
    optional `preserve_keys` [m, in] with scale `preserve_scale`."""

    keys: torch.Tensor
    lam: float
    preserve_keys: torch.Tensor | None = None
    preserve_scale: float = 1.0
    max_condition: float = MAX_CONDITION
    _cholesky: torch.Tensor | None = field(default=None, init=False, repr=False)
    condition: float | None = field(default=None, init=False)

    def __post_init__(self):
        if self.keys.ndim != 2 or len(self.keys) == 0:
            raise ValueError(f"keys must be a non-empty [n, in] matrix, got shape {tuple(self.keys.shape)}")
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, got {self.lam!r}")
        if self.preserve_keys is not None and self.preserve_keys.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"preserved keys have {self.preserve_keys.shape[-1]} features, keys {self.keys.shape[-1]}")
        if self.preserve_scale < 0:
            raise ValueError(f"preserve_scale must be >= 0, got {self.preserve_scale!r}")

    @property
    def gram(self) -> torch.Tensor:
        """G = lam I + K^T K + s_p K_p^T K_p, float64 [in, in]."""
        keys = self.keys.double()
        gram = self.lam * torch.eye(keys.shape[1], dtype=torch.float64, device=keys.device) + keys.T @ keys
        if self.preserve_keys is not None and self.preserve_scale > 0:
            preserved = self.preserve_keys.double().to(keys.device)
            gram = gram + self.preserve_scale * preserved.T @ preserved
        return gram

    def factor(self) -> torch.Tensor:
        """The Cholesky factor of G, computed once; an `IllConditionedError` if G cannot be trusted."""
        if self._cholesky is None:
            gram = self.gram
            eigenvalues = torch.linalg.eigvalsh(gram)
            smallest, largest = eigenvalues[0].item(), eigenvalues[-1].item()
            self.condition = largest / smallest if smallest > 0 else float("inf")
            if not self.condition <= self.max_condition:
                raise IllConditionedError(
                    f"the Gram matrix of {len(self.keys)} keys in {self.keys.shape[1]} dimensions with lambda="
                    f"{self.lam} is singular or ill-conditioned (condition number {self.condition:.3g} > "
                    f"{self.max_condition:.0e}); use lambda > 0 or more keys")
            self._cholesky = torch.linalg.cholesky(gram)
        return self._cholesky

    def solve(self, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """W' for one weight [out, in] and its targets [n, out], in the weight's dtype and device."""
        if weight.ndim != 2 or weight.shape[1] != self.keys.shape[1]:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not take {self.keys.shape[1]}-dim keys")
        if targets.shape != (len(self.keys), weight.shape[0]):
            raise ValueError(f"targets must be [{len(self.keys)}, {weight.shape[0]}] (one per key), got "
                             f"{tuple(targets.shape)}")
        cholesky = self.factor()
        device = cholesky.device
        w, keys = weight.double().to(device), self.keys.double().to(device)
        rhs = self.lam * w + targets.double().to(device).T @ keys
        if self.preserve_keys is not None and self.preserve_scale > 0:
            preserved = self.preserve_keys.double().to(device)
            rhs = rhs + self.preserve_scale * (w @ preserved.T) @ preserved
        # W' G = rhs and G is symmetric, so G W'^T = rhs^T
        solution = torch.cholesky_solve(rhs.T, cholesky).T
        return solution.to(weight.device, weight.dtype)
