"""The ridge solver against an independent least-squares computation, its shared factorization, and its errors."""

import pytest
import torch

from locoedit.solver import IllConditionedError, RidgeProblem


def _problem(seed=0, n=5, m=7, d_in=12, d_out=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d_out, d_in, generator=g), torch.randn(n, d_in, generator=g),
            torch.randn(n, d_out, generator=g), torch.randn(m, d_in, generator=g))


def _stacked_least_squares(weight, keys, targets, lam, preserved, scale):
    """min lam|X - W|^2 + |X K^T - V^T|^2 + s|X P^T - W P^T|^2 as one stacked least-squares problem in X^T."""
    eye = torch.eye(weight.shape[1], dtype=torch.float64)
    a = torch.cat([lam**0.5 * eye, keys.double(), scale**0.5 * preserved.double()])
    kept = preserved.double() @ weight.double().T
    b = torch.cat([lam**0.5 * weight.double().T, targets.double(), scale**0.5 * kept])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize("lam, scale", [(0.1, 0.0), (0.01, 1.0), (1.0, 10.0)])
def test_solution_equals_stacked_least_squares(lam, scale):
    weight, keys, targets, preserved = _problem()
    problem = RidgeProblem(keys, lam, preserved, scale)
    expected = _stacked_least_squares(weight, keys, targets, lam, preserved, scale)
    assert torch.allclose(problem.solve(weight, targets).double(), expected, atol=1e-5)


def test_one_factorization_serves_every_weight_sharing_the_keys(monkeypatch):
    weight, keys, targets, preserved = _problem()
    problem = RidgeProblem(keys, 0.1, preserved, 1.0)
    calls = []
    original = torch.linalg.cholesky
    monkeypatch.setattr(torch.linalg, "cholesky", lambda g: calls.append(1) or original(g))
    other_weight, other_targets = _problem(seed=1)[0], _problem(seed=1)[2]
    first, second = problem.solve(weight, targets), problem.solve(other_weight, other_targets)
    assert len(calls) == 1
    expected = _stacked_least_squares(other_weight, keys, other_targets, 0.1, preserved, 1.0)
    assert torch.allclose(second.double(), expected, atol=1e-5)
    assert not torch.allclose(first, second)


def test_exact_targets_are_met_when_the_keys_dominate():
    weight, keys, targets, _ = _problem(n=4)
    solved = RidgeProblem(keys, 1e-9).solve(weight, targets)
    assert torch.allclose(keys @ solved.T, targets, atol=1e-4)  # 4 keys in 12 dims: interpolated exactly


def test_targets_equal_to_the_current_outputs_change_nothing():
    weight, keys, _, preserved = _problem()
    solved = RidgeProblem(keys, 0.1, preserved, 2.0).solve(weight, keys @ weight.T)
    assert torch.allclose(solved, weight, atol=1e-5)


def test_singular_gram_without_lambda_is_an_error():
    weight, keys, targets, _ = _problem(n=3)
    with pytest.raises(IllConditionedError, match="3 keys in 12 dimensions with lambda=0"):
        RidgeProblem(keys, 0.0).solve(weight, targets)


@pytest.mark.parametrize("kwargs, message", [
    ({"lam": -1.0}, "lambda must be >= 0"),
    ({"preserve_scale": -1.0}, "preserve_scale must be >= 0"),
])
def test_bad_parameters(kwargs, message):
    _, keys, _, preserved = _problem()
    with pytest.raises(ValueError, match=message):
        RidgeProblem(keys, **{"lam": 0.1, "preserve_keys": preserved, **kwargs})


def test_mismatched_shapes_are_errors():
    weight, keys, targets, _ = _problem()
    problem = RidgeProblem(keys, 0.1)
    with pytest.raises(ValueError, match="does not take 12-dim keys"):
        problem.solve(weight[:, :5], targets)
    with pytest.raises(ValueError, match=r"targets must be \[5, 9\]"):
        problem.solve(weight, targets[:2])


def test_result_keeps_the_weight_dtype():
    weight, keys, targets, _ = _problem()
    solved = RidgeProblem(keys, 0.1).solve(weight.half(), targets)
    assert solved.dtype == torch.float16
