"""The one ridge equation behind every closed-form edit (TIME, UCE, LOCOEDIT, DiffQuickFix, ReFACT):

    W' = (lam W + sum_i v*_i k_i^T + s_p sum_j W k_j k_j^T) (lam I + sum_i k_i k_i^T + s_p sum_j k_j k_j^T)^-1

the minimizer of lam |W' - W|^2 + sum_i |W' k_i - v*_i|^2 + s_p sum_j |W' k_j - W k_j|^2.

Conventions: a weight is [out, in] (torch's `nn.Linear`); keys are rows, [n, in]; targets are rows, [n, out];
preserved keys [m, in], or their summed outer products `preserve_gram` = K_p^T K_p [in, in] (a key covariance,
as ReFACT/ROME use). The Gram matrix G = lam I + K^T K + s_p K_p^T K_p depends only on the keys, so
`RidgeProblem` factors it once (Cholesky, float64) and solves for every weight that shares the keys (all to_k
and to_v of a TIME edit). It is solved, never inverted; an ill-conditioned G is an error, not garbage weights.

The update is low-rank: W' G - W G = (V - K W^T)^T K, so W' - W = R^T D with residuals R = V - K W^T [n, out]
and D = K G^-1 [n, in], shared by every weight with these keys. Its rank is at most n, and (R^T, D) is an
exact LoRA of the edit.
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
    preserve_gram: torch.Tensor | None = None
    max_condition: float = MAX_CONDITION
    _cholesky: torch.Tensor | None = field(default=None, init=False, repr=False)
    _down: torch.Tensor | None = field(default=None, init=False, repr=False)
    condition: float | None = field(default=None, init=False)

    def __post_init__(self):
        if self.keys.ndim != 2 or len(self.keys) == 0:
            raise ValueError(f"keys must be a non-empty [n, in] matrix, got shape {tuple(self.keys.shape)}")
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, got {self.lam!r}")
        if self.preserve_keys is not None and self.preserve_keys.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"preserved keys have {self.preserve_keys.shape[-1]} features, keys {self.keys.shape[-1]}")
        dim = self.keys.shape[-1]
        if self.preserve_gram is not None and tuple(self.preserve_gram.shape) != (dim, dim):
            raise ValueError(f"preserve_gram must be [{dim}, {dim}], got {tuple(self.preserve_gram.shape)}")
        if self.preserve_scale < 0:
            raise ValueError(f"preserve_scale must be >= 0, got {self.preserve_scale!r}")

    @property
    def gram(self) -> torch.Tensor:
        """G = lam I + K^T K + s_p (K_p^T K_p + preserve_gram), float64 [in, in]."""
        keys = self.keys.double()
        gram = self.lam * torch.eye(keys.shape[1], dtype=torch.float64, device=keys.device) + keys.T @ keys
        if self.preserve_scale > 0:
            if self.preserve_keys is not None:
                preserved = self.preserve_keys.double().to(keys.device)
                gram = gram + self.preserve_scale * preserved.T @ preserved
            if self.preserve_gram is not None:
                gram = gram + self.preserve_scale * self.preserve_gram.double().to(keys.device)
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

    @property
    def down(self) -> torch.Tensor:
        """D = K G^-1, float64 [n, in]: the update's right factor, shared by every weight with these keys."""
        if self._down is None:
            cholesky = self.factor()
            self._down = torch.cholesky_solve(self.keys.double().to(cholesky.device).T, cholesky).T
        return self._down

    def input_residuals(self, weight: torch.Tensor, target_inputs: torch.Tensor) -> torch.Tensor:
        """R for targets that are the weight applied to other inputs (V = T W^T, TIME's v* = W c_dest), computed
        as (T - K) W^T [n, out]: one product, and no cancellation where the two inputs agree."""
        if target_inputs.shape != self.keys.shape:
            raise ValueError(f"target inputs must match the keys' shape {tuple(self.keys.shape)}, got "
                             f"{tuple(target_inputs.shape)}")
        work = torch.promote_types(weight.dtype, torch.float32)
        difference = target_inputs.to(weight.device, work) - self.keys.to(weight.device, work)
        return difference @ weight.to(work).T

    def linear_residuals(self, linear: torch.nn.Linear, target_inputs: torch.Tensor, bias: str = "once"
                         ) -> torch.Tensor:
        """`input_residuals` of a linear layer's weight. `bias="twice"`: the targets are taken as the layer's outputs,
        bias included (the DiffQuickFix release notebook's and UCE's FLUX code's convention), so the bias joins
        every residual and the edited layer adds it twice at the keys; `"once"` leaves it to the layer."""
        residuals = self.input_residuals(linear.weight, target_inputs)
        if bias == "twice" and linear.bias is not None:
            residuals = residuals + linear.bias.to(residuals)
        return residuals

    def factors(self, residuals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The update W' - W = up @ down as (up [out, n], down [n, in]) in the residuals' dtype and device."""
        return residuals.T, self.down.to(residuals.device, residuals.dtype)

    def solve(self, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """W' for one weight [out, in] and its targets [n, out], computed in float64, in the weight's dtype."""
        self._check(weight, targets)
        w = weight.double()
        residuals = targets.double().to(w.device) - self.keys.double().to(w.device) @ w.T
        up, down = self.factors(residuals)
        return (w + up @ down).to(weight.dtype)

    def _check(self, weight: torch.Tensor, targets: torch.Tensor) -> None:
        if weight.ndim != 2 or weight.shape[1] != self.keys.shape[1]:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not take {self.keys.shape[1]}-dim keys")
        if targets.shape != (len(self.keys), weight.shape[0]):
            raise ValueError(f"targets must be [{len(self.keys)}, {weight.shape[0]}] (one per key), got "
                             f"{tuple(targets.shape)}")
