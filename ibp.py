"""Interval bound propagation (IBP): lower bounds of every logit gap over a ball, through a model.

A box lower <= h <= upper is carried layer by layer. A Linear layer has its
rule here (`interval_linear`); each activation carries its own
(`propagate_interval` in `groupsort`). The first layer's box is also cut to the
exact range over the p-ball, and the last layer is folded into the gaps.
"""

from __future__ import annotations

import torch
from torch import nn

import lipschitz
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


def gap_lower_bounds(model: LipschitzMLP, x: torch.Tensor, ball: Ball) -> torch.Tensor:
    """Lower bounds of f_i(x') - f_j(x') over every x' in the ball around each row of x: (n, out, out).

    The input box is the L-inf box of the ball (cut to its domain), normalised
    as the model normalises. The first layer's interval is also cut to the
    exact range over the p-ball, w . x +- eps ||w||_q / std. With no hidden
    layer, the gaps' exact range over the p-ball is used as well.
    """
    x = x.flatten(1)
    lower, upper = (model.normalise(end) for end in ball.box(x))
    center, radius = model.normalise(x), ball.radii(x) / model.config.std
    for index, layer in enumerate(model.layers[:-1]):
        if isinstance(layer, nn.Linear):
            lower, upper = interval_linear(layer.weight, layer.bias, lower, upper)
            if index == 0:
                exact = ball_range(layer.weight, layer.bias, center, radius, ball.norm)
                lower, upper = torch.maximum(lower, exact[0]), torch.minimum(upper, exact[1])
        else:
            lower, upper = layer.propagate_interval(lower, upper)
    last = model.layers[-1]
    gap_lower = interval_gap_lower(last.weight, last.bias, lower, upper)
    if len(model.layers) == 1:  # no hidden layer: the gaps' range over the ball is exact
        rows = lipschitz.pair_difference_rows(last.weight)
        offsets = last.bias[:, None] - last.bias[None, :]
        gap_lower = torch.maximum(gap_lower, ball_range(rows, offsets, center, radius, ball.norm)[0])
    return gap_lower
