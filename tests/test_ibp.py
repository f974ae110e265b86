"""Interval bound propagation: each rule holds every point of its box and is tight where it should be, the gap
bounds through a whole net are sound, and exact at radius 0, and the rounding errors carried beside the boxes
bound the float32 network."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import allowance
import ibp
import lipschitz
from conftest import REL
from lipschitz import Ball
from mnist_data import PIXEL_RANGE
from models import LipschitzMLP, MLPConfig
from nets import ball_vertices, norms, random_directions, random_nets, seeds
from operators import Affine, Linear


def random_layer_and_box(fan_in: int, fan_out: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A float64 layer (weight, bias), a random box lower <= upper (one row), and 500 of the box's corners."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64)
    bias = torch.randn(fan_out, generator=g, dtype=torch.float64)
    lower = torch.randn(1, fan_in, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(1, fan_in, generator=g, dtype=torch.float64)
    corners = torch.where(torch.rand(500, fan_in, generator=g) < 0.5, lower, upper)
    return weight, bias, lower, upper, corners


@given(st.integers(1, 6), st.integers(1, 6), seeds)
@settings(max_examples=60)
def test_interval_of_a_linear_layer_holds_every_point_and_is_attained(fan_in, fan_out, seed):
    weight, bias, lower, upper, corners = random_layer_and_box(fan_in, fan_out, seed)
    low, high = Linear.of(weight, bias).interval(lower, upper)
    out = corners @ weight.T + bias
    assert (low <= out + REL).all() and (out <= high + REL).all()
    corner = torch.where(weight < 0, upper, lower)  # for each row, the corner where it is smallest
    assert torch.allclose(low[0], (corner * weight).sum(dim=1) + bias)


@given(st.integers(1, 6), st.integers(2, 5), seeds)
@settings(max_examples=60)
def test_gap_interval_holds_every_point_is_attained_and_beats_subtracting_intervals(fan_in, fan_out, seed):
    weight, bias, lower, upper, corners = random_layer_and_box(fan_in, fan_out, seed)
    gap_lower = Linear.of(weight, bias).pairs().interval(lower, upper)[0][0].unflatten(0, (fan_out, fan_out))
    out = corners @ weight.T + bias
    assert (gap_lower <= (out[:, :, None] - out[:, None, :]) + REL).all()
    rows = weight[:, None] - weight[None]  # the worst corner of each gap's row attains the bound
    worst = torch.where(rows < 0, upper, lower)
    assert torch.allclose(gap_lower, (worst * rows).sum(dim=2) + bias[:, None] - bias[None])
    low, high = Linear.of(weight, bias).interval(lower, upper)
    assert (gap_lower >= (low[0][:, None] - high[0][None]) - REL).all()


@given(norms, st.integers(1, 6), st.integers(1, 4), seeds)
@settings(max_examples=60)
def test_ball_range_is_the_exact_range_over_the_p_ball(norm, d, units, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(units, d, generator=g, dtype=torch.float64)
    bias = torch.randn(units, generator=g, dtype=torch.float64)
    center = torch.rand(3, d, generator=g, dtype=torch.float64)
    radius = torch.rand(3, generator=g, dtype=torch.float64)
    low, high = Linear.of(rows, bias).ball_range(center, Ball(norm, radius))
    points = torch.cat([center[:, None] + radius[:, None, None] * random_directions(3 * 100, d, norm, g).view(3, 100, d),
                        ball_vertices(center, radius, norm)], dim=1)
    out = points @ rows.T + bias
    assert (low[:, None] <= out + REL).all() and (out <= high[:, None] + REL).all()
    middle = center @ rows.T + bias  # Hoelder: attained, so the range is w . c + b +- eps ||w||_q exactly
    spread = radius[:, None] * lipschitz.dual_norm(rows, norm)
    assert torch.allclose(low, middle - spread) and torch.allclose(high, middle + spread)


@given(random_nets(convs=True), norms, st.booleans(), seeds)
@settings(max_examples=60, deadline=None)
def test_gap_lower_bounds_hold_at_every_sampled_point_of_the_ball(model, norm, pixels, seed):
    g = torch.Generator().manual_seed(seed)
    d = model.config.in_features
    x = torch.rand(8, d, generator=g, dtype=torch.float64)
    eps = torch.rand(8, generator=g, dtype=torch.float64)
    ball = Ball(norm, eps, PIXEL_RANGE if pixels else None)
    with torch.no_grad():
        lower = ibp.gap_lower_bounds(model, x, ball)
        points = torch.cat([x[:, None] + eps[:, None, None] * random_directions(8 * 64, d, norm, g).view(8, 64, d),
                            ball_vertices(x, eps, norm)], dim=1)
        if pixels:
            points = points.clamp(*PIXEL_RANGE)
        logits = model(points.flatten(0, 1)).view(8, points.shape[1], -1)
    gaps = logits[:, :, :, None] - logits[:, :, None, :]
    assert lower.shape == (8, model.config.out_features, model.config.out_features)
    assert (lower[:, None] <= gaps + REL * (1 + gaps.abs())).all()


@given(random_nets(convs=True), norms, seeds)
@settings(max_examples=30, deadline=None)
def test_gap_lower_bounds_at_radius_zero_are_the_gaps(model, norm, seed):
    x = torch.rand(8, model.config.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        lower = ibp.gap_lower_bounds(model, x, Ball(norm, 0.0))
    assert torch.allclose(lower, logits[:, :, None] - logits[:, None, :], atol=1e-9)


def hidden(model, x: torch.Tensor) -> torch.Tensor:
    """h, the input of the last Linear layer, as the model computes it in its own precision."""
    with torch.no_grad():
        return model.layers[:-1](model.normalise(x))


def linear_outputs(model, boxes: list) -> list:
    """The boxes of `ibp.propagate` after each hidden Linear layer (the pixel box and the normalised one come
    first, then a Linear layer's and an activation's in turn)."""
    return boxes[2::2]


@given(random_nets(convs=True), norms, st.booleans(), st.sampled_from([0.0, 1e4]), seeds)
@settings(max_examples=60, deadline=None)
def test_hidden_box_errors_bound_the_float32_network_and_the_box_itself(model, norm, pixels, shift, seed):
    """At sampled float32 points of the ball: h computed in float32 is within errors[0] of h in float64
    (exact but for some 1e-13 relative), which lies in the float64 box widened by errors[1]."""
    domain = PIXEL_RANGE if pixels else None
    with torch.no_grad():
        for layer in model.affine_layers():
            layer.bias.add_(shift)
    g = torch.Generator().manual_seed(seed)
    n, d = 8, model.config.in_features
    x = torch.rand(n, d, generator=g).double()
    eps = torch.rand(n, generator=g, dtype=torch.float64)
    boxes = ibp.propagate(model, x, Ball(norm, eps, domain), torch.float32, apart=True)
    box = boxes[-1]
    points = x[:, None] + eps[:, None, None] * random_directions(n * 16, d, norm, g).view(n, 16, d)
    points = torch.cat([points, ball_vertices(x, eps, norm), x[:, None]], dim=1)
    if domain is not None:
        points = points.clamp(*domain)
    points = points.float().double()  # the float32 inputs, nudged back inside the ball where rounding left it
    inside = lipschitz.vector_norm(points - x[:, None], norm) <= eps[:, None]
    points = torch.where(inside[..., None], points, x[:, None])
    exact = hidden(model, points.flatten(0, 1)).view(n, points.shape[1], -1)
    check_group_differences(model, boxes, points, norm)
    computed = hidden(model.float(), points.float().flatten(0, 1)).double().view_as(exact)
    slack = 1e-12 * (1 + exact.abs())
    assert ((computed - exact).abs() <= box.errors[0][:, None] + slack).all()
    assert (exact >= box.lower[:, None] - box.errors[1][:, None] - slack).all()
    assert (exact <= box.upper[:, None] + box.errors[1][:, None] + slack).all()
    assert (exact.abs() <= box.magnitude[:, None] + slack).all()
    if box.magnitude_norm is not None:  # deep nets in L2 and L1: the exact and computed h's L2 norms, their
        at_x = exact[:, -1:]            # distance from h at x (the last point), and h at x itself
        low, high = box.near_x()
        assert (at_x >= low[:, None] - slack[:, -1:]).all() and (at_x <= high[:, None] + slack[:, -1:]).all()
        for values in (exact, computed):
            assert (torch.linalg.vector_norm(values, dim=2) <= box.magnitude_norm[:, None] * (1 + 1e-12)).all()
            distance = torch.linalg.vector_norm(values - at_x, dim=2)
            assert (distance <= box.spread[:, None] * (1 + 1e-12) + 1e-12 * (1 + at_x.abs().sum(dim=2))).all()


def check_group_differences(model, boxes: list, points: torch.Tensor, norm: str) -> None:
    """Every GroupSort's inputs z at the points (n, k, d): z_a - z_b <= the box's bound for a, b in a group,
    and in L-inf the bound is never above U_a - L_b from the units' own intervals (widened by their errors),
    which come from the same box. In L2 and L1 those intervals are also cut: in the first layer to the ball,
    deeper by the units' Lipschitz bounds (`operators.cut_to_reach`)."""
    z = model.normalise(points.flatten(0, 1))
    n, k = points.shape[:2]
    with torch.no_grad():
        for index, (layer, box) in enumerate(zip(model.layers[:-1], boxes[2:])):
            z = layer(z)
            if not isinstance(layer, Affine):  # an activation's box, or downsampling's
                continue
            bound, lower, upper, errors = box.apart, box.lower, box.upper, box.errors
            if bound is None:
                assert not hasattr(model.layers[index + 1], "group_size") or model.layers[index + 1].group_size == 1
                continue
            size = bound.shape[-1]
            groups = z.view(n, k, -1, size)
            seen = groups[..., :, None] - groups[..., None, :]  # (n, k, groups, size, size)
            assert (seen <= bound[:, None] + 1e-12 * (1 + groups.abs().amax())).all()
            high, low = (upper + errors[1]).view(n, -1, size), (lower - errors[1]).view(n, -1, size)
            own = high[..., :, None] - low[..., None, :]
            if norm == "linf":
                assert (bound <= own + 1e-9 * (1 + own.abs())).all()


@given(random_nets(convs=True), norms, st.sampled_from([1e-300, 1e-20, 1e-15, 1e-9]), seeds)
@settings(max_examples=40, deadline=None)
def test_intervals_never_invert_at_tiny_radii(model, norm, eps, seed):
    """The first layer's box is cut to the ball's exact range; at tiny radii both are nearly a point and
    rounding can cross them: the cut box is kept as a (possibly single-point) interval."""
    x = torch.rand(16, model.config.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for precision in (torch.float64, torch.float32):
        net = model.to(precision)
        for box in ibp.propagate(net, x.to(precision), Ball(norm, eps, PIXEL_RANGE)):
            assert (box.lower <= box.upper).all()


def test_deeper_boxes_in_l2_are_cut_to_the_units_lipschitz_reach():
    """In an orthonormal 1-Lipschitz net at a large L2 radius, plain IBP's boxes grow with each layer, while
    each unit moves by at most its certified Lipschitz bound times the radius: the certified box is cut to
    that reach around the unit's value at x, and so its magnitude, and its rounding allowance, stay small."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=64, hidden=(64, 64, 64), out_features=10, group_size=2)).double()
    with torch.no_grad():
        for layer in model.affine_layers():
            torch.nn.init.orthogonal_(layer.weight)
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ball = Ball("l2", 1.5)
    boxes, plain_boxes = ibp.propagate(model, x, ball, torch.float32), ibp.propagate(model, x, ball)
    box, plain = boxes[-1], plain_boxes[-1]
    slopes = model.certified_slopes("l2").units
    for index, (cut, uncut) in enumerate(zip(linear_outputs(model, boxes), linear_outputs(model, plain_boxes))):
        if index == 0:  # cut to the ball itself, as before
            continue
        reach = slopes[2 * index + 1] * 1.5
        assert (cut.upper - cut.lower <= 2 * (reach + cut.errors[0]) * (1 + 1e-9)).all()
        assert ((cut.upper - cut.lower) < (uncut.upper - uncut.lower) / 2).all()
    plain_magnitude = torch.maximum(plain.lower.abs(), plain.upper.abs())
    assert (box.magnitude < plain_magnitude / 2).all()  # what the rounding allowances grow with
    # the error vector's L2 norm, carried through the orthonormal layers, keeps the allowance from
    # growing some sqrt(64) times per layer, as the per-unit rule alone lets it
    norm = box.error_norm[:, None]
    assert (box.errors[0] <= norm).all() and (norm < box.errors[0].sum(dim=1, keepdim=True)).all()
    assert allowance.logit_allowance(model, x, ball).max() < 5e-3


def test_the_lipschitz_cut_holds_where_a_unit_moves_by_its_whole_reach():
    """With groups of 1 (GroupSort as the identity) and orthonormal weights the net is linear and each
    unit's certified L2 bound, 1, is attained: moving x by r along the unit's gradient moves it by r.
    That point must stay in the cut box, and the box's end sits right there."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=16, hidden=(16, 16), out_features=4, group_size=1)).double()
    with torch.no_grad():
        for layer in model.affine_layers():
            torch.nn.init.orthogonal_(layer.weight)
    x = torch.full((1, 16), 0.5, dtype=torch.float64)
    second = linear_outputs(model, ibp.propagate(model, x, Ball("l2", 0.3), torch.float32))[1]
    lower, upper, errors = second.lower, second.upper, second.errors  # the second Linear layer's units
    gradients = model.affine_layers()[1].weight @ model.affine_layers()[0].weight  # (16, 16), orthonormal rows
    for unit in range(16):
        for sign in (1.0, -1.0):
            moved = x + sign * 0.3 * gradients[unit] / gradients[unit].norm()
            value = model.layers[:3](model.normalise(moved))[0, unit]
            assert lower[0, unit] - errors[1][0, unit] <= value <= upper[0, unit] + errors[1][0, unit]
    centre = model.layers[:3](model.normalise(x))[0]
    assert torch.allclose(upper[0] - centre, torch.full((16,), 0.3, dtype=torch.float64), atol=1e-5)


def test_a_deep_boxs_l2_norm_is_attained_where_the_input_moves_along_itself():
    """In the linear orthonormal net above (groups of 1), h = Q (x - mean) / std + c with Q orthonormal and zero
    biases: moving x by r along its normalised self moves h's L2 norm by r / std exactly, which the bound of
    ||h||_2 over the ball (`ibp.whole_norms`) must cover, up to the rounding allowances it adds."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=16, hidden=(16, 16), out_features=4, group_size=1)).double()
    with torch.no_grad():
        for layer in model.affine_layers():
            torch.nn.init.orthogonal_(layer.weight)
            layer.bias.zero_()
    x = torch.full((1, 16), 0.5, dtype=torch.float64)
    radius = 0.3
    boxes = ibp.propagate(model, x, Ball("l2", radius), torch.float32)
    along = model.normalise(x) / model.normalise(x).norm()
    moved = x + radius * along  # the normalisation is x / std shifted, so h moves along h(x) / ||h(x)||
    for index, box in enumerate(linear_outputs(model, boxes)):
        value = model.layers[:2 * index + 1](model.normalise(moved))[0]
        slack = box.errors[0].norm() + box.error_norm[0]
        assert value.norm() <= box.magnitude_norm[0]
        assert box.magnitude_norm[0] <= value.norm() + 4 * slack + 1e-9


def extended_precision_logits(model, points: torch.Tensor) -> np.ndarray:
    """The model's logits at `points` in numpy's extended precision (a 64-bit significand here, 11 bits more than
    float64): a reference for the float64 network's own rounding errors."""
    h = (points.numpy().astype(np.longdouble) - np.longdouble(model.config.mean)) / np.longdouble(model.config.std)
    for layer in model.layers:
        if isinstance(layer, Linear):
            weight = layer.weight.detach().numpy().astype(np.longdouble)
            h = h @ weight.T + layer.bias.detach().numpy().astype(np.longdouble)
        elif hasattr(layer, "group_size"):
            h = np.sort(h.reshape(len(h), -1, layer.group_size), axis=-1).reshape(len(h), -1)
        else:
            h = np.maximum(h, 0)
    return h


@given(random_nets(), norms, seeds)
@settings(max_examples=40, deadline=None)
def test_the_float64_allowance_bounds_the_network_run_in_float64(model, norm, seed):
    """`--runs-in float64`: at sampled points of the ball, each float64 logit is within the float64 allowance
    (`allowance.logit_allowance` with runs_in float64) of the logit in extended precision."""
    assert np.finfo(np.longdouble).nmant >= 63, "this test needs an extended-precision long double"
    g = torch.Generator().manual_seed(seed)
    n, d = 4, model.config.in_features
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    eps = torch.rand(n, generator=g, dtype=torch.float64)
    ball = Ball(norm, eps, PIXEL_RANGE)
    bound = allowance.logit_allowance(model, x, ball, torch.float64).detach().numpy()
    points = x[:, None] + eps[:, None, None] * random_directions(n * 8, d, norm, g).view(n, 8, d)
    points = torch.cat([points, ball_vertices(x, eps, norm), x[:, None]], dim=1).clamp(*PIXEL_RANGE)
    with torch.no_grad():
        computed = model(points.flatten(0, 1)).view(n, points.shape[1], -1).numpy().astype(np.longdouble)
    exact = extended_precision_logits(model, points.flatten(0, 1)).reshape(computed.shape)
    slack = 1e-17 * (1 + np.abs(exact))  # the reference's own rounding, some 2^-64 of its magnitudes per step
    assert (np.abs(computed - exact) <= bound[:, None] + slack).all()


def test_a_deep_orthonormal_critic_run_in_float64_keeps_an_allowance_near_its_roundoff():
    """A critic of 24 MaxMin layers of dense orthonormal matrices, at points (radius 0, in L2) as
    `wasserstein.certify` takes it: the float64 walk's own interval errors grow through |W| a layer to more than
    a logit unit, while the float64 forward pass is one of the computations that the network's own errors bound,
    carried through the layers' L2 norms, so the allowance stays near float64's roundoff, and still bounds the
    float64 output against extended precision."""
    torch.manual_seed(0)
    config = MLPConfig(in_features=64, hidden=(64,) * 24, out_features=1, activation="maxmin", mean=0.0, std=1.0)
    model = LipschitzMLP(config).double()
    with torch.no_grad():
        for layer in model.affine_layers():
            torch.nn.init.orthogonal_(layer.weight)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    point = Ball("l2", 0.0)
    assert ibp.propagate(model, x, point, torch.float64)[-1].errors[1].max() > 1  # |W| products: no use
    bound = allowance.logit_allowance(model, x, point, torch.float64).detach()
    assert bound.max() < 1e-9
    with torch.no_grad():
        computed = model(x).numpy().astype(np.longdouble)
    assert (np.abs(computed - extended_precision_logits(model, x)) <= bound.numpy()).all()


def test_one_hidden_layer_in_l2_carries_the_norms_too():
    """The error vector's and the values' L2 norms are carried for a net with a single hidden layer as well:
    over a large L2 ball (whole, as the Lipschitz methods take it) a wide orthonormal layer's per-unit
    magnitudes each reach the whole radius, and the rounding bounded from them alone is some 2.5 times what
    the norms give (0.0055 against 0.0022 logit units on this net)."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=256, hidden=(256,), out_features=10, group_size=2)).double()
    with torch.no_grad():
        for layer in model.affine_layers():
            torch.nn.init.orthogonal_(layer.weight)
    x = torch.rand(8, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ball = Ball("l2", 1.5)
    box = ibp.propagate(model, x, ball, torch.float32)[-1]
    assert box.error_norm is not None and box.magnitude_norm is not None
    assert allowance.logit_allowance(model, x, ball).max() < 3e-3
