"""Interval bound propagation (IBP): lower bounds of every logit gap over a ball, through a model.

A box lower <= h <= upper is carried layer by layer. A Linear layer has its
rule here (`interval_linear`); each activation carries its own
(`propagate_interval` in `groupsort`). In L2 and L1 the first layer's box is also
cut to the exact range over the p-ball (in L-inf the box is already exact), and
in certificates every deeper layer's to each unit's Lipschitz reach around its
value at x (`lipschitz_cut`). The last layer is folded into the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import lipschitz
import rounding
from lipschitz import Ball
from models import LipschitzMLP


def interval_linear(
    weight: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of W h + b over the box lower <= h <= upper (rows are examples).

    Centre-radius form: W h + b lies within W c + b +- |W| r, c = (u + l)/2,
    r = (u - l)/2, since |W (h - c)| <= |W| |h - c| <= |W| r coordinatewise.
    """
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    middle = center @ weight.T + bias
    spread = radius @ weight.abs().T
    return middle - spread, middle + spread


def interval_gap_lower(
    weight: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """Lower bounds of (W_i - W_j) h + (b_i - b_j) over the box, for every pair i, j: (n, out, out).

    The last layer folded into the gaps: tighter than subtracting the two
    logits' intervals, whose errors would add up.
    """
    rows = lipschitz.pair_difference_rows(weight).flatten(0, 1)
    offsets = (bias[:, None] - bias[None, :]).flatten()
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    out = weight.shape[0]
    return (center @ rows.T + offsets - radius @ rows.abs().T).unflatten(1, (out, out))


def ball_range(
    rows: torch.Tensor, bias: torch.Tensor, center: torch.Tensor, radius: torch.Tensor, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of w . z + b over the p-ball ||z - center||_p <= radius, for each row w.

    w . center + b +- radius ||w||_q, by Hoelder (attained). `radius` holds one
    value per example (n,); rows (units, in) or (out, out, in) for differences.
    """
    middle = center @ rows.flatten(0, -2).T + bias.flatten()
    spread = radius[:, None] * lipschitz.lp_dual_norm(rows, norm).flatten()
    shape = rows.shape[:-1]
    return (middle - spread).unflatten(1, shape), (middle + spread).unflatten(1, shape)


def lipschitz_cut(
    lower: torch.Tensor, upper: torch.Tensor, point: torch.Tensor, error: torch.Tensor, reach: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The box cut to point +- (error + reach), rounded outwards, in float64.

    Sound when the exact unit at x lies within `error` of `point` (its float64
    value there) and moves by at most `reach` (its Lipschitz bound times the
    radius) over the ball. The cut keeps every bound of the box's rounding
    errors: a box cut to a set that holds every exact value is still within
    those errors of one that holds them all.
    """
    u = rounding.unit_roundoff(torch.float64)
    width = (error + reach) * (1 + 4 * u)
    slack = 4 * u * (point.abs() + width)
    lower = torch.maximum(lower, point - width - slack)
    upper = torch.minimum(upper, point + width + slack)
    return lower, torch.maximum(upper, lower)  # two nearly equal ends can cross by rounding: never invert


def gap_lower_bounds(model: LipschitzMLP, x: torch.Tensor, ball: Ball) -> torch.Tensor:
    """Lower bounds of f_i(x') - f_j(x') over every x' in the ball around each row of x: (n, out, out).

    The input box is the L-inf box of the ball (cut to its domain), normalised
    as the model normalises. In L2 and L1 the first layer's interval is also
    cut to the exact range over the p-ball, w . x +- eps ||w||_q / std. With no hidden
    layer, the gaps' exact range over the p-ball is used as well. Computed in
    the model's precision and sound in exact arithmetic (for training);
    certificates take `certified_gap_lower_bounds`.
    """
    x = x.flatten(1)
    return _gap_lower(model, x, ball, hidden_box(model, x, ball))


@dataclass(frozen=True)
class HiddenBox:
    """IBP's box lower <= h <= upper of h, the input of the last Linear layer, over a ball; with
    `hidden_box(..., runs_in)` also rounding-error bounds (see there) and a bound on |h|."""

    lower: torch.Tensor
    upper: torch.Tensor
    errors: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    pre_activations: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], ...] = ()
    """(lower, upper, errors) of every hidden Linear layer's output, the activations' inputs"""
    differences: tuple[torch.Tensor | None, ...] = ()
    """with `hidden_box(..., differences=True)`, per hidden Linear layer followed by a GroupSort, upper
    bounds of h_a - h_b for every two units a, b of a group, (n, groups, size, size); None for others"""
    error_norm: torch.Tensor | None = None
    """where `hidden_box` tracks it (L2 and L1 balls, two hidden layers or more), per example (n,), a bound
    on the L2 norm of the float32 network's error vector, whose entries errors[0] bounds one by one"""


def hidden_box(model: LipschitzMLP, x: torch.Tensor, ball: Ball, runs_in: torch.dtype | None = None,
               differences: bool = False) -> HiddenBox:
    """IBP's box of h over the ball around each row of x (n, in_features).

    With `runs_in`, also `errors` of shape (2, n, units): errors[0] bounds, for
    every x' in the ball, how far h as the network computes it in `runs_in`
    (float32) can be from h in exact arithmetic; errors[1] bounds how far this
    function's own box, computed in the model's precision (float64), can be
    from IBP's box in exact arithmetic. Both are carried as in forward error
    analysis: first the normalisation's (`rounding.normalisation_error`), then
    per Linear layer |W| e plus the new rounding: gamma_{n+1} (|W| M + |b|) for
    the network (`rounding.linear_error`), gamma_{n+8} (|W| M + |b| + the ball
    term) for the box's centre, radius, products and cut. M bounds |h| and its
    computed values: max(|lower|, |upper|) + both errors. An activation rounds
    nothing (a sort, a max) and passes an error bound by its per-unit bound
    rule: each output moves by at most the largest move in its group.

    In L2 and L1, with `runs_in` and two hidden layers or more, deeper layers'
    boxes are cut to the units' certified Lipschitz reach (`lipschitz_cut`),
    and the L2 norm of the float32 error vector is carried beside its per-unit
    bounds (`rounding.linear_error_with_norm`, `HiddenBox.error_norm`): in wide
    near-orthonormal layers both the boxes and the per-unit error bounds would
    otherwise grow some sqrt(width) times per layer.

    With `differences`, also IBP's bounds of the differences of the units
    that a GroupSort compares (see `group_difference_upper`).
    """
    f64 = torch.float64
    if runs_in is not None and model.layers[0].weight.dtype != f64:
        raise TypeError("rounding errors are bounded for a float64 computation: pass the model's float64 copy")
    ends = ball.box(x)
    lower, upper = (model.normalise(end) for end in ends)
    center, radius = model.normalise(x), ball.radii(x) / model.config.std
    errors = magnitude = None
    pre_activations: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    pair_bounds: list[torch.Tensor | None] = []
    if runs_in is not None:
        mean, std = model.config.mean, model.config.std
        u = rounding.unit_roundoff(f64)
        slack = u * (ends[0].abs() + ends[1].abs())  # the box ends' own rounding
        distance = (torch.maximum((ends[0] - mean).abs(), (ends[1] - mean).abs()) + slack) * (1 + 4 * u)
        errors = torch.stack([rounding.normalisation_error(distance, mean, std, runs_in),
                              rounding.normalisation_error(distance, mean, std, f64) + slack / std])
        magnitude = distance / std * (1 + 2 * u) + errors.sum(dim=0)
    error_norm = None
    deep = runs_in is not None and ball.norm != "linf" and len(model.config.hidden) > 1
    if deep:  # the network at x, every unit's certified Lipschitz bound, and the L2 norm of errors[0]
        point, slopes = model.normalise(x), model.certified_slopes(ball.norm)
        error_norm = torch.linalg.vector_norm(errors[0], dim=1) * (1 + rounding.gamma(x.shape[1] + 2, f64))
    for index, layer in enumerate(model.layers[:-1]):
        if deep:
            point = layer(point)
        if isinstance(layer, nn.Linear):
            if differences:
                group = getattr(model.layers[index + 1], "group_size", 1)
                pair_bounds.append(None if group < 2 else group_difference_upper(
                    layer.weight, layer.bias, lower, upper, group, magnitude, None if errors is None else errors[1]))
            lower, upper = interval_linear(layer.weight, layer.bias, lower, upper)
            ball_term = 0.0
            if index == 0 and ball.norm != "linf":  # in L-inf the box is the ball cut to its domain: exact
                exact = ball_range(layer.weight, layer.bias, center, radius, ball.norm)
                lower, upper = torch.maximum(lower, exact[0]), torch.minimum(upper, exact[1])
                upper = torch.maximum(upper, lower)  # two nearly equal ranges can cross by rounding: never invert
                ball_term = radius[:, None] * lipschitz.lp_dual_norm(layer.weight, ball.norm)
            if errors is not None:
                if error_norm is None:
                    network_error = rounding.linear_error(layer.weight, layer.bias, magnitude, errors[0], runs_in)
                else:
                    operator = slopes.operators[len(pre_activations)]
                    network_error, error_norm = rounding.linear_error_with_norm(
                        layer.weight, layer.bias, magnitude, errors[0], error_norm, runs_in, operator)
                box_error = _box_error(layer.weight, layer.bias, magnitude, errors[1], ball_term)
                errors = torch.stack([network_error, box_error])
            if deep and index > 0:
                reach = slopes.units[index + 1] * ball.radii(x)[:, None]
                lower, upper = lipschitz_cut(lower, upper, point, errors[0], reach)
            pre_activations.append((lower, upper, errors))
        else:
            lower, upper = layer.propagate_interval(lower, upper)
            if errors is not None:
                errors = layer.propagate_bound(errors)
            if error_norm is not None:
                error_norm = layer.propagate_whole_bound(error_norm)  # each activation is 1-Lipschitz in L2
        if errors is not None:
            magnitude = torch.maximum(lower.abs(), upper.abs()) + errors.sum(dim=0)
    return HiddenBox(lower, upper, errors, magnitude, tuple(pre_activations), tuple(pair_bounds), error_norm)


def group_difference_upper(
    weight: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, group_size: int,
    magnitude: torch.Tensor | None = None, error: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upper bounds of z_a - z_b, z = W h + b, for every two units a, b of each group of `group_size`
    consecutive units, over the box lower <= h <= upper: (n, groups, size, size).

    IBP on the rows W_a - W_b: never looser than U_a - L_b from the units'
    intervals over the same box, and exact over the box for the first layer,
    where z is affine in the input. (In L2 and L1 the first layer's unit
    intervals are also cut to the ball, so there U_a - L_b can be the smaller:
    `milp` takes the smaller of the two.) With `error` (errors[1] of `hidden_box` at h) and
    `magnitude`, each bound is raised by its float64 rounding (`_box_error`),
    so that it holds in exact arithmetic.
    """
    groups = weight.unflatten(0, (-1, group_size))
    rows = (groups[:, :, None, :] - groups[:, None, :, :]).flatten(0, 2)
    offsets = bias.unflatten(0, (-1, group_size))
    offsets = (offsets[:, :, None] - offsets[:, None, :]).flatten()
    bound = interval_linear(rows, offsets, lower, upper)[1]
    if error is not None:
        bound = bound + _box_error(rows, offsets, magnitude, error, 0.0)
    return bound.unflatten(1, (-1, group_size, group_size))


def _box_error(
    weight: torch.Tensor, bias: torch.Tensor, magnitude: torch.Tensor, error: torch.Tensor,
    ball_term: torch.Tensor | float,
) -> torch.Tensor:
    """Per unit, how far `interval_linear` (and the first layer's cut) computed in float64 can be from its
    exact value, given ends within `error` of exact ones: |W| error (the interval map moves each end by at most
    that), plus gamma_{n+8} of the magnitudes for the centre, radius, two products, the difference and the cut."""
    return rounding.linear_error(weight, bias, magnitude, error, torch.float64, extra_roundings=7, extra=ball_term)


def _pair_rows(last: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer folded into the gaps: rows W_i - W_j (out, out, in) and offsets b_i - b_j (out, out)."""
    return lipschitz.pair_difference_rows(last.weight), last.bias[:, None] - last.bias[None, :]


def _gap_lower(model: LipschitzMLP, x: torch.Tensor, ball: Ball, box: HiddenBox) -> torch.Tensor:
    """IBP's lower bounds of every gap from the box of h, the last layer folded into the gaps."""
    last = model.layers[-1]
    gap_lower = interval_gap_lower(last.weight, last.bias, box.lower, box.upper)
    if len(model.layers) == 1:  # no hidden layer: the gaps' range over the ball is exact
        center, radius = model.normalise(x), ball.radii(x) / model.config.std
        gap_lower = torch.maximum(gap_lower, ball_range(*_pair_rows(last), center, radius, ball.norm)[0])
    return gap_lower


@dataclass(frozen=True)
class CertifiedGaps:
    """IBP's lower bounds of every gap computed in float64 (n, out, out), the allowance to subtract from
    them (see `certified_gap_bounds`), and the box of h they came from."""

    lower: torch.Tensor
    allowance: torch.Tensor
    box: HiddenBox

    def certified_lower(self) -> torch.Tensor:
        """Sound lower bounds of the gaps of the network as it runs: lower - allowance."""
        return self.lower - self.allowance


def certified_gap_bounds(
    model: LipschitzMLP, x: torch.Tensor, ball: Ball, runs_in: torch.dtype = torch.float32,
    differences: bool = False,
) -> CertifiedGaps:
    """IBP's gap bounds over the ball for the network running in `runs_in` (`model` is its float64 copy), with
    the allowance A such that lower - A bounds f^_i(x') - f^_j(x') from below, f^ the logits as the network
    computes them, in any batch and summation order.

    A adds three terms: this computation's rounding (|W_i - W_j| errors[1] +
    gamma_{n+8} (|W_i - W_j| M + |b_i - b_j|), as in `hidden_box`), the
    network's float32 error of each logit (`rounding.linear_error` of the last
    layer), and the rounding of the subtraction lower - A itself (gamma_3 of
    the magnitudes). `differences` is passed to `hidden_box`.
    """
    x = x.flatten(1)
    box = hidden_box(model, x, ball, runs_in, differences)
    last = model.layers[-1]
    gap_lower = _gap_lower(model, x, ball, box)
    rows, offsets = (t.flatten(0, 1) for t in _pair_rows(last))
    out = last.out_features
    ball_term = 0.0
    if len(model.layers) == 1:  # the gaps' range over the ball was used: its spread is rounded too
        ball_term = ball.radii(x)[:, None] / model.config.std * lipschitz.lp_dual_norm(rows, ball.norm)
    own = _box_error(rows, offsets, box.magnitude, box.errors[1], ball_term).unflatten(1, (out, out))
    logit_error = network_logit_error(last, box, runs_in)
    allowance = own + logit_error[:, :, None] + logit_error[:, None, :]
    allowance = allowance + rounding.gamma(3, torch.float64) * (gap_lower.abs() + allowance)
    return CertifiedGaps(gap_lower, allowance, box)


def certified_gap_lower_bounds(
    model: LipschitzMLP, x: torch.Tensor, ball: Ball, runs_in: torch.dtype = torch.float32
) -> torch.Tensor:
    """Lower bounds of f^_i(x') - f^_j(x') over the ball, f^ the logits as the network computes them in
    `runs_in`: (n, out, out). A bound > 0 proves that the float32 network ranks i above j everywhere in
    the ball. `model` is the network's float64 copy; see `certified_gap_bounds`."""
    return certified_gap_bounds(model, x, ball, runs_in).certified_lower()


def network_logit_error(last: nn.Linear, box: HiddenBox, runs_in: torch.dtype) -> torch.Tensor:
    """Per example and logit, a bound on how far the network's logits in `runs_in` can be from the exact
    ones over the ball: the last layer's `rounding.linear_error`, or `linear_error_with_norm` where the box
    tracks the error vector's L2 norm."""
    if box.error_norm is None:
        return rounding.linear_error(last.weight, last.bias, box.magnitude, box.errors[0], runs_in)
    return rounding.linear_error_with_norm(last.weight, last.bias, box.magnitude, box.errors[0], box.error_norm,
                                           runs_in)[0]


def logit_errors(model: LipschitzMLP, x: torch.Tensor, ball: Ball, runs_in: torch.dtype = torch.float32) -> torch.Tensor:
    """Per example and logit, a bound on |f^(x') - f(x')| over the ball plus |f~(x) - f(x)|: f the exact
    logits, f^ the network's in `runs_in` (any batch, any order), f~ the float64 forward pass of the
    network's float64 copy `model` at x. The Lipschitz methods subtract it from each gap (n, out)."""
    box = hidden_box(model, x.flatten(1), ball, runs_in)
    last = model.layers[-1]
    return (network_logit_error(last, box, runs_in)
            + rounding.linear_error(last.weight, last.bias, box.magnitude, box.errors[1], torch.float64))
