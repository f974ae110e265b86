"""The logit bounds are theorems: |f_k(x) - f_k(x')| <= L_k ||x - x'||_inf, on any net."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lipschitz
from models import LipschitzMLP, MLPConfig
from nets import random_nets

REL = 1e-9  # float64 slack for rounding only


def random_pairs(model: LipschitzMLP, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.config.in_features, generator=g, dtype=torch.float64)
    radius = torch.rand(n, 1, generator=g, dtype=torch.float64)
    x_other = x + radius * (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)
    return x, x_other


def input_jacobian(model: LipschitzMLP, x: torch.Tensor) -> torch.Tensor:
    """d f_k / d x for every example: shape (n, out, in)."""
    return torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x)


@given(random_nets(max_hidden_layers=3), st.integers(0, 2**31 - 1))
@settings(max_examples=150, deadline=None)
def test_logit_changes_never_exceed_bound_times_linf_distance(model, seed):
    bounds = model.linf_logit_bounds()
    x, x_other = random_pairs(model, 64, seed)
    with torch.no_grad():
        change = (model(x) - model(x_other)).abs()
    distance = (x - x_other).abs().amax(dim=1, keepdim=True)
    assert (change <= bounds * distance * (1 + REL) + REL).all()


@given(random_nets(max_hidden_layers=3), st.integers(0, 2**31 - 1))
@settings(max_examples=150, deadline=None)
def test_gradient_sign_steps_cannot_beat_the_bound(model, seed):
    """The steepest L-inf step, eps * sign(grad f_k), moves f_k by at most L_k * eps."""
    bounds = model.linf_logit_bounds()
    x, _ = random_pairs(model, 16, seed)
    eps = 0.05
    jacobian = input_jacobian(model, x)
    with torch.no_grad():
        for k in range(model.config.out_features):
            step = eps * jacobian[:, k].sign()
            change = (model(x + step)[:, k] - model(x)[:, k]).abs()
            assert (change <= bounds[k] * eps * (1 + REL) + REL).all()


@given(random_nets(max_hidden_layers=3), st.integers(0, 2**31 - 1))
@settings(max_examples=150, deadline=None)
def test_gradient_l1_norm_never_exceeds_bound(model, seed):
    """||grad f_k(x)||_1 is the local L-inf Lipschitz constant of f_k, so L_k must cover it."""
    bounds = model.linf_logit_bounds()
    x, _ = random_pairs(model, 32, seed)
    local = input_jacobian(model, x).abs().sum(dim=2)
    assert (local <= bounds * (1 + REL)).all()


def test_bound_is_exact_for_one_linear_layer():
    """No hidden layer: L_k is row k's L1 norm, attained by the gradient, so nothing is lost."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=7, hidden=(), out_features=3)).double()
    local = input_jacobian(model, torch.rand(1, 7, dtype=torch.float64)).abs().sum(dim=2)[0]
    assert torch.allclose(model.linf_logit_bounds(), local)
    assert torch.allclose(local, model.layers[0].weight.abs().sum(dim=1))


def test_bound_is_the_product_of_norms_for_a_positive_relu_net():
    """Positive weights and inputs keep every ReLU active: the bound equals the gradient's L1 norm."""
    torch.manual_seed(1)
    model = LipschitzMLP(MLPConfig(in_features=5, hidden=(6, 4), out_features=3, activation="relu", mean=0.0))
    model.double()
    with torch.no_grad():
        for layer in model.linear_layers():
            layer.weight.abs_()
            layer.bias.abs_()
    local = input_jacobian(model, torch.rand(1, 5, dtype=torch.float64)).abs().sum(dim=2)[0]
    assert torch.allclose(model.linf_logit_bounds(), local)


def test_bound_scales_with_one_over_std():
    """Bounds are in pixel units: normalising by std multiplies every bound by 1 / std."""
    torch.manual_seed(2)
    model = LipschitzMLP(MLPConfig(in_features=9, hidden=(6,), out_features=4, group_size=3))
    halved = LipschitzMLP(MLPConfig(in_features=9, hidden=(6,), out_features=4, group_size=3, std=0.5))
    halved.load_state_dict(model.state_dict())
    assert torch.allclose(halved.linf_logit_bounds(), 2 * model.linf_logit_bounds())


def test_initialisation_gives_every_row_unit_l1_norm():
    model = LipschitzMLP(MLPConfig(hidden=(500, 100)))
    for layer in model.linear_layers():
        assert torch.allclose(layer.weight.abs().sum(dim=1), torch.ones(layer.out_features))
    # With unit rows and 1-Lipschitz activations every logit starts 1-Lipschitz.
    assert torch.allclose(model.linf_logit_bounds(), torch.ones(10))


def test_bounds_are_differentiable_for_the_penalty():
    model = LipschitzMLP()
    lipschitz.soft_max_penalty(model.linf_logit_bounds()).backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
               for layer in model.linear_layers())


@given(st.lists(st.floats(0, 50), min_size=1, max_size=10))
def test_soft_max_penalty_lies_between_mean_and_max(values):
    bounds = torch.tensor(values, dtype=torch.float64)
    penalty = lipschitz.soft_max_penalty(bounds)
    assert bounds.mean() - 1e-9 <= penalty <= bounds.max() + 1e-9


def test_margin_bound_is_twice_the_largest_logit_bound():
    assert lipschitz.linf_margin_bound(torch.tensor([1.0, 3.5, 2.0])) == pytest.approx(7.0)
