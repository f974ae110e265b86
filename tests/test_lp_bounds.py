"""Every bound in every norm is a theorem: it covers observed changes, gradients and Jacobians on any net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lipschitz
from certify import LIPSCHITZ_METHODS, lp_pair_thresholds
from groupsort import GroupSort, ReLU
from models import LipschitzMLP, MLPConfig
from nets import input_jacobian, norms, random_directions, random_nets, seeds

REL = 1e-9  # float64 slack for rounding only
MATRIX_ORD = {"linf": math.inf, "l2": 2, "l1": 1}


def pair_differences(values: torch.Tensor) -> torch.Tensor:
    """v_i - v_j along dimension 1: (n, out, ...) -> (n, out, out, ...)."""
    return values[:, :, None] - values[:, None, :]


@given(random_nets(max_hidden_layers=3), seeds)
@settings(max_examples=40, deadline=None)
def test_generic_linf_bounds_are_the_demos_bit_for_bit(model, seed):
    for net in (model, model.float()):
        bounds = net.lp_bounds("linf")
        assert torch.equal(bounds.logits, net.linf_logit_bounds())
        assert torch.equal(net.lp_logit_bounds("linf"), net.linf_logit_bounds())
        assert torch.equal(net.lp_penalty_bounds("linf"), net.linf_logit_bounds())
        assert torch.equal(lipschitz.lp_margin_bound(bounds.logits, bounds.output, "linf"),
                           lipschitz.linf_margin_bound(bounds.logits))


@given(random_nets(), norms, seeds)
@settings(max_examples=60, deadline=None)
def test_every_bound_covers_observed_changes(model, norm, seed):
    """|df_k|, |d(f_i - f_j)| and ||df||_p never exceed their bounds times ||dx||_p."""
    g = torch.Generator().manual_seed(seed)
    d = model.config.in_features
    x = torch.rand(64, d, generator=g, dtype=torch.float64)
    distance = 2 * torch.rand(64, generator=g, dtype=torch.float64)
    x_other = x + distance[:, None] * random_directions(64, d, norm, g)
    bounds = model.lp_bounds(norm)
    with torch.no_grad():
        change = model(x) - model(x_other)
    scale = distance[:, None] * (1 + REL)
    assert (change.abs() <= bounds.logits * scale + REL).all()
    assert (pair_differences(change).abs() <= bounds.differences * scale[:, :, None] + REL).all()
    assert (lipschitz.lp_vector_norm(change, norm) <= bounds.output * scale[:, 0] + REL).all()
    for method in LIPSCHITZ_METHODS:
        assert (pair_differences(change).abs() <= lp_pair_thresholds(bounds, method) * scale[:, :, None] + REL).all()


@given(random_nets(), norms, seeds)
@settings(max_examples=60, deadline=None)
def test_every_bound_covers_the_local_lipschitz_constant(model, norm, seed):
    """The gradient's dual norm (and the Jacobian's p->p norm) is the local constant: bounds must cover it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, model.config.in_features, generator=g, dtype=torch.float64)
    jacobian = input_jacobian(model, x)
    bounds = model.lp_bounds(norm)
    slack = 1 + REL
    assert (lipschitz.lp_dual_norm(jacobian, norm) <= bounds.logits * slack + REL).all()
    assert (lipschitz.lp_dual_norm(pair_differences(jacobian), norm) <= bounds.differences * slack + REL).all()
    assert (torch.linalg.matrix_norm(jacobian, ord=MATRIX_ORD[norm]) <= bounds.output * slack + REL).all()
    for method in LIPSCHITZ_METHODS:
        local = lipschitz.lp_dual_norm(pair_differences(jacobian), norm)
        assert (local <= lp_pair_thresholds(bounds, method) * slack + REL).all()


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_bounds_are_exact_without_a_hidden_layer(norm):
    """f = W (x - mean) / std: every bound is a dual or operator norm of W / std, nothing lost."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=7, hidden=(), out_features=4, std=0.5)).double()
    weight = model.layers[0].weight / 0.5
    bounds = model.lp_bounds(norm)
    assert torch.allclose(bounds.logits, lipschitz.lp_dual_norm(weight, norm))
    assert torch.allclose(bounds.differences, lipschitz.lp_dual_norm(weight[:, None] - weight[None], norm))
    if norm != "linf":  # in linf the output bound is max_k L_k, which is the operator norm too
        assert torch.allclose(bounds.output, lipschitz.lp_operator_norm(weight, norm))
    local = lipschitz.lp_dual_norm(input_jacobian(model, torch.rand(1, 7, dtype=torch.float64))[0], norm)
    assert torch.allclose(bounds.logits, local)


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_bound_is_exact_for_a_maxmin_net_computing_an_absolute_value(norm):
    """h = sort(a, -a) = (-|a|, |a|) with a = w . x; f = |a|: the GroupSort rule loses nothing."""
    torch.manual_seed(1)
    model = LipschitzMLP(MLPConfig(in_features=6, hidden=(2,), out_features=2, group_size=2, mean=0.0)).double()
    w = torch.randn(6, dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.stack([w, -w]))
        model.layers[0].bias.zero_()
        model.layers[2].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
        model.layers[2].bias.zero_()
    bounds = model.lp_bounds(norm)
    local = lipschitz.lp_dual_norm(input_jacobian(model, torch.rand(3, 6, dtype=torch.float64)), norm)
    assert torch.allclose(local, lipschitz.lp_dual_norm(w, norm).expand(3, 2))
    assert torch.allclose(bounds.logits, local[0])
    assert torch.allclose(bounds.differences[0, 1], 2 * local[0, 0])  # f_0 - f_1 = 2|a|


def test_l2_bounds_are_exact_for_an_orthogonal_relu_net_in_its_linear_region():
    """All ReLUs on, first layer orthogonal: f = W2 Q x + c, and the spectral product is tight."""
    torch.manual_seed(2)
    model = LipschitzMLP(MLPConfig(in_features=6, hidden=(6,), out_features=3, activation="relu", mean=0.0))
    model.double()
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    with torch.no_grad():
        model.layers[0].weight.copy_(q)
        model.layers[0].bias.fill_(100.0)  # every unit stays active on [0, 1]^6
    w2 = model.layers[2].weight.detach()
    bounds = model.lp_bounds("l2")
    assert torch.allclose(bounds.logits, w2.norm(dim=1))
    assert torch.allclose(bounds.differences, (w2[:, None] - w2[None]).norm(dim=2))
    assert torch.allclose(bounds.output, torch.linalg.matrix_norm(w2, 2))
    jacobian = input_jacobian(model, torch.rand(2, 6, dtype=torch.float64))
    assert torch.allclose(torch.linalg.matrix_norm(jacobian, 2), bounds.output.expand(2))


@given(st.integers(1, 6), arrays(np.float64, (2, 12), elements=st.floats(-100, 100)), norms)
@settings(max_examples=80)
def test_sorting_is_a_contraction_in_every_p_norm(group_size, pair, norm):
    """||sort(a) - sort(a')||_p <= ||a - a'||_p: why a whole-vector bound passes GroupSort unchanged."""
    width = 12 - 12 % group_size
    a, b = torch.from_numpy(pair[:, :width])
    sort = GroupSort(group_size)
    moved = lipschitz.lp_vector_norm(sort(a) - sort(b), norm)
    assert moved <= lipschitz.lp_vector_norm(a - b, norm) * (1 + REL) + REL
    assert sort.propagate_lp_whole_bound(torch.tensor(2.5)) == 2.5
    assert ReLU().propagate_lp_whole_bound(torch.tensor(2.5)) == 2.5


@given(st.integers(1, 5), st.integers(1, 4), seeds)
@settings(max_examples=60)
def test_intervals_pass_through_activations_soundly(group_size, groups, seed):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, group_size * groups, generator=g, dtype=torch.float64)
    radius = torch.rand(1, group_size * groups, generator=g, dtype=torch.float64)
    lower, upper = centre - radius, centre + radius
    inside = lower + (upper - lower) * torch.rand(200, group_size * groups, generator=g, dtype=torch.float64)
    for activation in (GroupSort(group_size), ReLU()):
        low, high = activation.propagate_interval(lower, upper)
        out = activation(inside)
        assert (low <= out).all() and (out <= high).all()


@given(st.integers(1, 6), st.integers(1, 6), seeds)
@settings(max_examples=60)
def test_interval_of_a_linear_layer_holds_every_point_and_is_attained(fan_in, fan_out, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64)
    bias = torch.randn(fan_out, generator=g, dtype=torch.float64)
    lower = torch.randn(1, fan_in, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(1, fan_in, generator=g, dtype=torch.float64)
    low, high = lipschitz.interval_linear(weight, bias, lower, upper)
    corners = torch.where(torch.rand(500, fan_in, generator=g) < 0.5, lower, upper)
    out = corners @ weight.T + bias
    assert (low <= out + REL).all() and (out <= high + REL).all()
    corner = torch.where(weight < 0, upper, lower)  # for each row, the corner where it is smallest
    assert torch.allclose(low[0], (corner * weight).sum(dim=1) + bias)


@given(st.integers(2, 40), st.integers(2, 40), seeds)
@settings(max_examples=40)
def test_power_iteration_estimate_stays_below_the_spectral_norm(rows, cols, seed):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = lipschitz.lp_operator_norm(weight, "l2")
    estimate = lipschitz.l2_spectral_norm_estimate(weight)
    assert estimate <= exact * (1 + REL)


def test_power_iteration_estimate_is_close_on_a_trained_size_layer():
    torch.manual_seed(3)
    weight = LipschitzMLP().layers[0].weight.detach()
    exact = lipschitz.lp_operator_norm(weight, "l2")
    assert lipschitz.l2_spectral_norm_estimate(weight) == pytest.approx(exact.item(), rel=0.01)


@given(random_nets(), seeds)
@settings(max_examples=20, deadline=None)
def test_penalty_bounds_are_the_certified_bounds_except_for_the_l2_estimate(model, seed):
    assert torch.equal(model.lp_penalty_bounds("l1"), model.lp_logit_bounds("l1"))
    assert (model.lp_penalty_bounds("l2") <= model.lp_logit_bounds("l2") * (1 + REL)).all()


def test_norm_helpers_match_their_definitions():
    w = torch.tensor([[3.0, -4.0], [1.0, 2.0]])
    assert torch.equal(lipschitz.lp_dual_norm(w, "linf"), torch.tensor([7.0, 3.0]))
    assert torch.allclose(lipschitz.lp_dual_norm(w, "l2"), torch.tensor([5.0, math.sqrt(5)]))
    assert torch.equal(lipschitz.lp_dual_norm(w, "l1"), torch.tensor([4.0, 2.0]))
    assert lipschitz.lp_operator_norm(w, "linf") == 7.0 and lipschitz.lp_operator_norm(w, "l1") == 6.0
    assert [lipschitz.lp_difference_coefficient(n) for n in lipschitz.NORMS] == [2.0, math.sqrt(2), 1.0]
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        lipschitz.lp_dual_norm(w, "l3")
