"""The model's logit bounds are theorems in every norm: they cover observed changes, gradients and Jacobians on
any net, are exact where the net allows it, and are the demo's own numbers in L-inf."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import lipschitz
from certificates import LIPSCHITZ_METHODS, thresholds
from checkpoints import load_checkpoint
from conftest import REL
from groupsort import GroupSort
from models import BatchNormMLP, LipschitzMLP, MLPConfig
from nets import input_jacobian, net_from_weights, norms, random_directions, random_nets, seeds

MATRIX_ORD = {"linf": math.inf, "l2": 2, "l1": 1}


def pair_differences(values: torch.Tensor) -> torch.Tensor:
    """v_i - v_j along dimension 1: (n, out, ...) -> (n, out, out, ...)."""
    return values[:, :, None] - values[:, None, :]


def demo_linf_logit_bounds(model: LipschitzMLP) -> torch.Tensor:
    """The original demo's chain, written out: 1/std per pixel, |W| @ b per Linear, the group max per GroupSort."""
    bound = torch.full((model.config.in_features,), 1 / model.config.std,
                       dtype=model.affine_layers()[0].weight.dtype)
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            bound = layer.weight.abs() @ bound
        elif isinstance(layer, GroupSort):
            groups = bound.unflatten(-1, (-1, layer.group_size))
            bound = groups.amax(dim=-1, keepdim=True).expand_as(groups).flatten(-2)
    return bound


@given(random_nets(max_hidden_layers=3), seeds)
@settings(max_examples=40, deadline=None)
def test_linf_bounds_are_the_demos_bit_for_bit(model, seed):
    """In L-inf the generic chain, the penalty's bounds and the global threshold are the demo's numbers exactly."""
    for net in (model, model.float()):
        demo = demo_linf_logit_bounds(net)
        bounds = net.logit_bounds("linf")
        assert torch.equal(bounds.per_logit, demo)
        assert torch.equal(net.logit_bounds("linf", estimate=True).per_logit, demo)
        assert torch.equal(bounds.output, demo.max())
        assert torch.equal(thresholds(bounds, "global"), (2 * demo.max()).expand(len(demo), len(demo)))


def pairs_at_known_distances(d: int, norm: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """64 pairs (x, x') and their p-distances: half on spheres of random radius up to 2 (cube corners in linf),
    half uniform in L-inf boxes of random radius up to 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, d, generator=g, dtype=torch.float64)
    sphere = 2 * torch.rand(32, 1, generator=g, dtype=torch.float64) * random_directions(32, d, norm, g)
    box = torch.rand(32, 1, generator=g, dtype=torch.float64) * (2 * torch.rand(32, d, generator=g,
                                                                                 dtype=torch.float64) - 1)
    x_other = x + torch.cat([sphere, box])
    return x, x_other, lipschitz.vector_norm(x - x_other, norm)


@given(random_nets(max_hidden_layers=3, convs=True), norms, seeds)
@settings(max_examples=150, deadline=None)
def test_every_bound_covers_observed_changes(model, norm, seed):
    """|df_k|, |d(f_i - f_j)|, ||df||_p and every method's threshold never fall short of the change per ||dx||_p."""
    x, x_other, distance = pairs_at_known_distances(model.config.in_features, norm, seed)
    bounds = model.logit_bounds(norm)
    with torch.no_grad():
        change = model(x) - model(x_other)
    scale = distance[:, None] * (1 + REL)
    assert (change.abs() <= bounds.per_logit * scale + REL).all()
    assert (pair_differences(change).abs() <= bounds.per_gap * scale[:, :, None] + REL).all()
    assert (lipschitz.vector_norm(change, norm) <= bounds.output * scale[:, 0] + REL).all()
    for method in LIPSCHITZ_METHODS:
        assert (pair_differences(change).abs() <= thresholds(bounds, method) * scale[:, :, None] + REL).all()


@given(random_nets(max_hidden_layers=3, convs=True), seeds)
@settings(max_examples=150, deadline=None)
def test_the_steepest_linf_step_cannot_beat_the_bound(model, seed):
    """The steepest L-inf step, eps * sign(grad f_k), moves f_k by at most L_k * eps."""
    bounds = model.logit_bounds("linf").per_logit
    x = torch.rand(16, model.config.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    eps = 0.05
    jacobian = input_jacobian(model, x)
    with torch.no_grad():
        for k in range(model.config.out_features):
            step = eps * jacobian[:, k].sign()
            change = (model(x + step)[:, k] - model(x)[:, k]).abs()
            assert (change <= bounds[k] * eps * (1 + REL) + REL).all()


@given(random_nets(max_hidden_layers=3), norms, seeds)
@settings(max_examples=100, deadline=None)
def test_every_bound_covers_the_local_lipschitz_constant(model, norm, seed):
    """The gradient's dual norm (||grad f_k||_1 in L-inf) and the Jacobian's p->p norm are local constants:
    the bounds must cover them."""
    x = torch.rand(16, model.config.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    jacobian = input_jacobian(model, x)
    bounds = model.logit_bounds(norm)
    slack = 1 + REL
    local = lipschitz.dual_norm(jacobian, norm)
    if norm == "linf":  # the demo's check, written out: ||grad f_k||_1 <= L_k
        assert (jacobian.abs().sum(dim=2) <= bounds.per_logit * slack).all()
    assert (local <= bounds.per_logit * slack + REL).all()
    assert (lipschitz.dual_norm(pair_differences(jacobian), norm) <= bounds.per_gap * slack + REL).all()
    assert (torch.linalg.matrix_norm(jacobian, ord=MATRIX_ORD[norm]) <= bounds.output * slack + REL).all()
    for method in LIPSCHITZ_METHODS:
        pair_local = lipschitz.dual_norm(pair_differences(jacobian), norm)
        assert (pair_local <= thresholds(bounds, method) * slack + REL).all()


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_bounds_are_exact_without_a_hidden_layer(norm):
    """f = W (x - mean) / std: every bound is a dual or operator norm of W / std (in L-inf, row L1 norms),
    attained by the gradient, so nothing is lost."""
    weight = torch.randn(4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = net_from_weights([weight], mean=0.1307, std=0.5)
    scaled = model.affine_layers()[0].weight / 0.5
    bounds = model.logit_bounds(norm)
    assert torch.allclose(bounds.per_logit, lipschitz.dual_norm(scaled, norm))
    assert torch.allclose(bounds.per_gap, lipschitz.dual_norm(scaled[:, None] - scaled[None], norm))
    if norm != "linf":  # in linf the output bound is max_k L_k, which is the operator norm too
        assert torch.allclose(bounds.output, lipschitz.operator_norm(scaled, norm))
    else:
        assert torch.allclose(bounds.per_logit, scaled.abs().sum(dim=1))
    local = lipschitz.dual_norm(input_jacobian(model, torch.rand(1, 7, dtype=torch.float64))[0], norm)
    assert torch.allclose(bounds.per_logit, local)


def test_linf_bound_is_the_product_of_norms_for_a_positive_relu_net():
    """Positive weights and inputs keep every ReLU active: the bound equals the gradient's L1 norm."""
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(6, 5, generator=g), torch.rand(4, 6, generator=g), torch.rand(3, 4, generator=g)]
    biases = [torch.rand(len(w), generator=g) for w in weights]
    model = net_from_weights(weights, biases, activation="relu")
    local = input_jacobian(model, torch.rand(1, 5, dtype=torch.float64)).abs().sum(dim=2)[0]
    assert torch.allclose(model.logit_bounds("linf").per_logit, local)


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_bound_is_exact_for_a_maxmin_net_computing_an_absolute_value(norm):
    """h = sort(a, -a) = (-|a|, |a|) with a = w . x; f = (|a|, -|a|): the GroupSort rule loses nothing."""
    w = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = net_from_weights([torch.stack([w, -w]), [[0.0, 1.0], [0.0, -1.0]]], group_size=2)
    bounds = model.logit_bounds(norm)
    local = lipschitz.dual_norm(input_jacobian(model, torch.rand(3, 6, dtype=torch.float64)), norm)
    assert torch.allclose(local, lipschitz.dual_norm(w, norm).expand(3, 2))
    assert torch.allclose(bounds.per_logit, local[0])
    assert torch.allclose(bounds.per_gap[0, 1], 2 * local[0, 0])  # f_0 - f_1 = 2|a|


def test_l2_bounds_are_exact_for_an_orthogonal_relu_net_in_its_linear_region():
    """All ReLUs on, first layer orthogonal: f = W2 Q x + c, and the spectral product is tight."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    w2 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    model = net_from_weights([q, w2], [100.0, None], activation="relu")  # every unit stays active on [0, 1]^6
    bounds = model.logit_bounds("l2")
    assert torch.allclose(bounds.per_logit, w2.norm(dim=1))
    assert torch.allclose(bounds.per_gap, (w2[:, None] - w2[None]).norm(dim=2))
    assert torch.allclose(bounds.output, torch.linalg.matrix_norm(w2, 2))
    jacobian = input_jacobian(model, torch.rand(2, 6, dtype=torch.float64))
    assert torch.allclose(torch.linalg.matrix_norm(jacobian, 2), bounds.output.expand(2))


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_bounds_scale_with_one_over_std(norm):
    """Bounds are in pixel units: normalising by std multiplies every bound by 1 / std."""
    torch.manual_seed(2)
    model = LipschitzMLP(MLPConfig(in_features=9, hidden=(6,), out_features=4, group_size=3))
    halved = LipschitzMLP(MLPConfig(in_features=9, hidden=(6,), out_features=4, group_size=3, std=0.5))
    halved.load_state_dict(model.state_dict())
    for name in ("per_logit", "per_gap", "output"):
        assert torch.allclose(getattr(halved.logit_bounds(norm), name), 2 * getattr(model.logit_bounds(norm), name))


def test_initialisation_gives_every_row_unit_l1_norm():
    model = LipschitzMLP(MLPConfig(hidden=(500, 100)))
    for layer in model.affine_layers():
        assert torch.allclose(layer.weight.abs().sum(dim=1), torch.ones(layer.out_features))
    # With unit rows and 1-Lipschitz activations every logit starts 1-Lipschitz.
    assert torch.allclose(model.logit_bounds("linf").per_logit, torch.ones(10))


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_penalty_bounds_are_differentiable(norm):
    model = LipschitzMLP()
    lipschitz.soft_max_penalty(model.logit_bounds(norm, estimate=True).per_logit).backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
               for layer in model.affine_layers())


@given(random_nets(), seeds)
@settings(max_examples=20, deadline=None)
def test_penalty_bounds_are_the_certified_bounds_except_for_the_l2_estimate(model, seed):
    assert torch.equal(model.logit_bounds("l1", estimate=True).per_logit, model.logit_bounds("l1").per_logit)
    assert (model.logit_bounds("l2", estimate=True).per_logit <= model.logit_bounds("l2").per_logit * (1 + REL)).all()


def test_normalise_flattens_images_and_is_what_the_first_layer_sees():
    torch.manual_seed(5)
    model = LipschitzMLP(MLPConfig(hidden=(20,), mean=0.2, std=0.4))
    images = torch.rand(3, 1, 28, 28)
    expected = (images.reshape(3, 784) - 0.2) / 0.4
    assert torch.equal(model.normalise(images), expected)
    assert torch.equal(model(images), model.layers(expected))
    assert torch.equal(model(images), model(images.reshape(3, 784)))


def test_l2_bounds_of_the_trained_net_use_the_spectral_product(l2_trained):
    """After L2 training the operator-norm bound is the active one: it must be exact, not estimated."""
    model = load_checkpoint(l2_trained[0]).model
    whole = model.hidden_bounds("l2").whole
    first = model.affine_layers()[0].weight
    assert whole <= lipschitz.operator_norm(first, "l2") * (1 + 1e-6)
    with torch.no_grad():
        assert torch.allclose(whole, torch.linalg.svdvals(first)[0])


@given(random_nets(), norms)
@settings(max_examples=30, deadline=None)
def test_certified_bounds_are_float64_upper_bounds_close_to_the_plain_ones(model, norm):
    """From float32 weights: never below the bounds computed in float64 (for l2 with float64 SVDs), above them
    by a relative 1e-6 at most, and the model itself is left in float32."""
    model = model.float()
    certified = model.certified_logit_bounds(norm)
    assert model.affine_layers()[0].weight.dtype == torch.float32
    plain = model.double().logit_bounds(norm)
    for name in ("per_logit", "per_gap", "output"):
        upper, reference = getattr(certified, name), getattr(plain, name).detach()
        assert upper.dtype == torch.float64
        assert (upper >= reference).all() and (upper <= reference * (1 + 1e-6)).all()


def test_certified_slopes_follow_the_weights_they_are_asked_about():
    """The proved spectral norms are remembered between calls, but never served for changed weights:
    scaling a layer in place, or asking in another norm, gives new bounds, each above the exact ones."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=20, hidden=(16, 16), out_features=4, group_size=2)).double()
    first = model.certified_slopes("l2")
    again = model.certified_slopes("l2")
    assert all(a is b for a, b in zip(again.operators, first.operators))  # the eigensolves are kept
    assert [a is None for a in first.operators] == [True, False, True, False, True]  # the hidden Linear layers'
    for operator, layer in zip(first.operators[1::2], model.affine_layers()):
        svd = torch.linalg.matrix_norm(layer.weight, 2)
        assert svd <= operator <= svd * (1 + 1e-6)
    plain = model.layer_bounds("l2")[-1].unit  # with SVD norms, not proved: the certified ones sit just above
    assert (plain <= first.units[-1] * (1 + 1e-12)).all() and (first.units[-1] <= plain * (1 + 1e-6)).all()
    with torch.no_grad():
        model.affine_layers()[1].weight.mul_(2)
    second = model.certified_slopes("l2")
    assert second.operators[3] == pytest.approx(2 * first.operators[3].item(), rel=1e-9)
    assert (second.units[-1] > first.units[-1]).any()
    assert not torch.equal(model.certified_slopes("l1").units[-1], second.units[-1])


@pytest.mark.parametrize("activation", ["groupsort", "relu"])
def test_batch_norm_folds_into_the_affine_layers_exactly(activation):
    """Folded with the running statistics, the MLP computes torch's batch-normed network in eval mode;
    folded with a batch, in training mode (float64, so only the order of the arithmetic differs)."""
    torch.manual_seed(3)
    model = BatchNormMLP(MLPConfig(hidden=(20, 10), activation=activation, group_size=5)).double()
    with torch.no_grad():
        for norm in model.norms:
            norm.weight.uniform_(-2, 2), norm.bias.normal_()
            norm.running_mean.normal_(), norm.running_var.uniform_(0.1, 3)
    layers = model.mlp.layers
    reference = nn.Sequential(layers[0], copy.deepcopy(model.norms[0]), layers[1], layers[2],
                              copy.deepcopy(model.norms[1]), layers[3], layers[4])
    x = torch.rand(32, 784, dtype=torch.float64)
    folded = model.folded()
    assert type(folded) is LipschitzMLP and all(not p.requires_grad or p.grad is None for p in folded.parameters())
    reference.eval()
    assert torch.allclose(folded(x), reference(model.mlp.normalise(x)), rtol=1e-12, atol=1e-12)
    reference.train()
    trained, logits = model.call_folded(lambda mlp, batch, logits: (mlp(batch), logits), x)
    expected = reference(model.mlp.normalise(x))
    assert torch.allclose(trained, expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(logits, expected, rtol=1e-12, atol=1e-12)  # handed to fn, computed with the statistics
    assert not torch.allclose(trained, folded(x))  # the batch's statistics are not the running ones
    for norm, reference_norm in zip(model.norms, (reference[1], reference[4])):  # updated as BatchNorm1d does
        assert torch.allclose(norm.running_mean, reference_norm.running_mean, rtol=1e-12, atol=1e-15)
        assert torch.allclose(norm.running_var, reference_norm.running_var, rtol=1e-12, atol=1e-15)
        assert norm.num_batches_tracked == reference_norm.num_batches_tracked == 1
    assert torch.equal(model.mlp.layers[0].weight, layers[0].weight)  # the folding changed a copy only
