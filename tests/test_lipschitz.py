"""The norm-bound math of lipschitz.py on plain tensors: norms, row and input bounds, the penalty, the L1-ball
projection, and the Ball. The bounds of whole nets are in test_models.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lipschitz
from conftest import REL
from errors import ConfigError
from lipschitz import Ball
from models import LipschitzMLP
from nets import norms, random_directions, seeds, with_singular_values


def test_norm_helpers_match_their_definitions():
    w = torch.tensor([[3.0, -4.0], [1.0, 2.0]])
    assert torch.equal(lipschitz.dual_norm(w, "linf"), torch.tensor([7.0, 3.0]))
    assert torch.allclose(lipschitz.dual_norm(w, "l2"), torch.tensor([5.0, math.sqrt(5)]))
    assert torch.equal(lipschitz.dual_norm(w, "l1"), torch.tensor([4.0, 2.0]))
    assert lipschitz.operator_norm(w, "linf") == 7.0 and lipschitz.operator_norm(w, "l1") == 6.0
    assert [lipschitz.difference_coefficient(n) for n in lipschitz.NORMS] == [2.0, math.sqrt(2), 1.0]
    assert set(lipschitz.NORM_NAMES) == set(lipschitz.NORMS)
    with pytest.raises(ConfigError, match="unknown norm 'l3'"):
        lipschitz.dual_norm(w, "l3")


@given(st.integers(1, 6), st.integers(1, 6), norms, seeds)
@settings(max_examples=60)
def test_row_bounds_are_the_demos_chain_in_linf_and_the_smaller_of_two_bounds_otherwise(fan_in, fan_out, norm,
                                                                                       seed):
    """linf: |W| @ b, bit for bit (the demo's rule). l2, l1: min(|W| @ b, ||w||_q B), each sound alone."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64)
    unit = torch.rand(fan_in, generator=g, dtype=torch.float64)
    whole = torch.rand((), generator=g, dtype=torch.float64) * unit.max() * 2
    bounds = lipschitz.row_bounds(weight, unit, whole, norm)
    chained = weight.abs() @ unit
    if norm == "linf":
        assert torch.equal(bounds, chained)
    else:
        assert torch.equal(bounds, torch.minimum(chained, lipschitz.dual_norm(weight, norm) * whole))
        assert (bounds <= chained).all()


@given(st.lists(st.floats(0, 50), min_size=1, max_size=10))
def test_soft_max_penalty_lies_between_mean_and_max(values):
    bounds = torch.tensor(values, dtype=torch.float64)
    penalty = lipschitz.soft_max_penalty(bounds)
    assert bounds.mean() - 1e-9 <= penalty <= bounds.max() + 1e-9


@given(st.integers(2, 40), st.integers(2, 40), seeds)
@settings(max_examples=40)
def test_power_iteration_estimate_stays_below_the_spectral_norm(rows, cols, seed):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = lipschitz.operator_norm(weight, "l2")
    estimate = lipschitz.l2_spectral_norm_estimate(weight)
    assert estimate <= exact * (1 + REL)
    # the training penalty's operator norms: the estimate in l2, the exact norm otherwise
    assert torch.equal(lipschitz.operator_norm_estimate(weight, "l2"), estimate)
    for norm in ("linf", "l1"):
        assert torch.equal(lipschitz.operator_norm_estimate(weight, norm), lipschitz.operator_norm(weight, norm))


def test_power_iteration_estimate_is_close_on_a_trained_size_layer():
    torch.manual_seed(3)
    weight = LipschitzMLP().affine_layers()[0].weight.detach()
    exact = lipschitz.operator_norm(weight, "l2")
    assert lipschitz.l2_spectral_norm_estimate(weight) == pytest.approx(exact.item(), rel=0.01)


def sorted_projection(row: torch.Tensor, radius: float) -> torch.Tensor:
    """The textbook projection onto the L1 ball (Duchi et al. 2008), by sorting: the reference."""
    if row.abs().sum() <= radius:
        return row
    u = row.abs().sort(descending=True).values
    excess = u.cumsum(0) - radius
    count = int(((u - excess / torch.arange(1, len(row) + 1, dtype=row.dtype)) > 0).nonzero().max()) + 1
    return row.sign() * (row.abs() - excess[count - 1] / count).clamp(min=0)


@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 30)),
              elements=st.floats(-5, 5, allow_nan=False)),
       st.floats(0.01, 10))
@settings(max_examples=200)
def test_projection_matches_the_sorting_algorithm_and_lands_in_the_ball(matrix, radius):
    weight = torch.from_numpy(matrix.copy())
    expected = torch.stack([sorted_projection(row, radius) for row in weight])
    lipschitz.project_rows_l1_ball_(weight, radius)
    assert (weight.abs().sum(dim=1) <= radius).all()
    assert torch.allclose(weight, expected, atol=1e-9 * max(1.0, radius))


def test_projection_leaves_rows_inside_the_ball_alone():
    weight = torch.tensor([[0.2, -0.3, 0.1], [3.0, -1.0, 0.0]])
    lipschitz.project_rows_l1_ball_(weight, 1.0)
    assert torch.equal(weight[0], torch.tensor([0.2, -0.3, 0.1]))
    assert torch.allclose(weight[1], torch.tensor([1.0, 0.0, 0.0]))


@given(st.integers(1, 40), st.integers(1, 40), seeds)
@settings(max_examples=60, deadline=None)
def test_bjorck_maps_each_singular_value_s_to_s_3_minus_s2_over_2_and_converges_to_the_polar_factor(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    values = 0.05 + 1.65 * torch.rand(min(rows, cols), generator=g, dtype=torch.float64)  # in (0, sqrt 3)
    weight, u, v = with_singular_values(rows, cols, values, g)
    once = lipschitz.orthonormalise(weight, 1)
    assert torch.allclose(once, u @ torch.diag(values * (3 - values**2) / 2) @ v.T, atol=1e-12)
    assert torch.linalg.matrix_norm(once, 2) <= 1 + 1e-12  # s (3 - s^2) / 2 <= 1 for every s >= 0
    limit = lipschitz.orthonormalise(weight, 30)
    assert torch.allclose(limit, u @ v.T, atol=1e-10)  # the closest orthonormal matrix
    lipschitz.orthonormalise_(weight, 30)
    assert torch.equal(weight, limit)


def test_ball_radii_give_one_radius_per_row_in_the_inputs_dtype():
    x = torch.zeros(4, 3, dtype=torch.float64)
    assert torch.equal(Ball("l2", 0.5).radii(x), torch.full((4,), 0.5, dtype=torch.float64))
    per_example = torch.tensor([0.0, 0.1, 0.2, 0.3])  # float32, converted to the input's dtype
    radii = Ball("linf", per_example).radii(x)
    assert radii.dtype == torch.float64 and torch.allclose(radii, per_example.double())


@given(norms, st.integers(1, 8), st.floats(0.0, 2.0), st.booleans(), seeds)
@settings(max_examples=60)
def test_ball_box_holds_the_ball_cut_to_its_domain_and_is_the_linf_box(norm, d, eps, pixels, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, d, generator=g, dtype=torch.float64)
    ball = Ball(norm, eps, (0.0, 1.0) if pixels else None)
    lower, upper = ball.box(x)
    if pixels:
        assert torch.equal(lower, (x - eps).clamp(min=0.0)) and torch.equal(upper, (x + eps).clamp(max=1.0))
    else:
        assert torch.equal(lower, x - eps) and torch.equal(upper, x + eps)
    inside = x[:, None] + eps * random_directions(16 * 32, d, norm, g).view(16, 32, d)
    if pixels:
        inside = inside.clamp(0.0, 1.0)
    assert (lower[:, None] <= inside + REL).all() and (inside <= upper[:, None] + REL).all()


def test_ball_with_eps_keeps_the_norm_and_domain_and_checks_the_norm():
    ball = Ball("l1", 0.3, (0.0, 1.0))
    wider = ball.with_eps(0.6)
    assert (wider.norm, wider.eps, wider.domain) == ("l1", 0.6, (0.0, 1.0)) and ball.eps == 0.3
    per_example = torch.tensor([0.1, 0.2])
    assert torch.equal(ball.with_eps(per_example).radii(torch.zeros(2, 3)), per_example)
    with pytest.raises(ConfigError, match="unknown norm 'l7'"):
        Ball("l7", 0.1)


def hadamard(order: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix of size 2**order: entries +-1, every singular value exactly sqrt(2**order)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(order):
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h


@given(st.integers(0, 7), st.integers(-20, 20), seeds)
@settings(max_examples=40, deadline=None)
def test_spectral_upper_bound_holds_where_every_singular_value_ties(order, exponent, seed):
    """Hadamard matrices (all singular values equal: the eigenvectors are arbitrary) and signed, scaled
    permutations, whose spectral norm is known exactly; the bound is above it and within 1e-7."""
    scale = 2.0**exponent
    h = hadamard(order) * scale
    assert h.shape[0] ** 0.5 * scale <= lipschitz.l2_spectral_norm_upper_bound(h.float()) <= \
        h.shape[0] ** 0.5 * scale * (1 + 1e-7)
    g = torch.Generator().manual_seed(seed)
    size = 2**order
    diagonal = (torch.randint(1, 2**20, (size,), generator=g).double() * scale).float().double()
    signed = torch.eye(size, dtype=torch.float64)[torch.randperm(size, generator=g)] * diagonal
    top = diagonal.max()
    assert top <= lipschitz.l2_spectral_norm_upper_bound(signed.float()) <= top * (1 + 1e-7)


@given(st.integers(1, 60), st.integers(1, 60), st.sampled_from([1e-6, 1.0, 1e6]), st.integers(1, 60), seeds)
@settings(max_examples=60, deadline=None)
def test_spectral_upper_bound_is_above_the_svd_and_close_to_it(rows, cols, scale, rank, seed):
    """Random float32 matrices of any shape, scale and rank (low rank: many zero singular values)."""
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(rows, min(rank, rows, cols), generator=g, dtype=torch.float64)
    weight = (left @ torch.randn(left.shape[1], cols, generator=g, dtype=torch.float64) * scale).float()
    svd = torch.linalg.matrix_norm(weight.double(), 2)  # float64 SVD: within some 1e-15 relative
    upper = lipschitz.l2_spectral_norm_upper_bound(weight)
    assert svd * (1 - 1e-13) <= upper <= svd * (1 + 1e-6)
    assert lipschitz.operator_norm_upper_bound(weight.double(), "l2") == upper
    for norm in ("linf", "l1"):
        assert torch.equal(lipschitz.operator_norm_upper_bound(weight, norm), lipschitz.operator_norm(weight, norm))
