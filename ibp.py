"""Interval bound propagation (IBP): one walk over the operators, each passing IBP's `Box` by its own rules.

The walk starts from the L-inf box of the ball (cut to its domain) in pixels.
In L2 and L1 the box also carries the p-ball itself, to which the first Linear
layer cuts its interval (in L-inf the box is already the ball cut to its
domain). With `runs_in`, each operator also carries the bounds of the rounding
errors (see `operators.Box`); in L2 and L1, for a net with a hidden layer,
where those bounds would otherwise grow with every unit's own reach over the
ball (some sqrt(width) times per layer), every deeper box is cut to its units'
certified Lipschitz reach around their value at x, and the error vector's L2
norm, each box's values' L2 norm and their L2 distance from the values at x
are carried too. The last layer is folded into the gaps
(`operators.Linear.pairs`); `allowance` turns the walk into the certificates'
rounding allowances.
"""

from __future__ import annotations

from dataclasses import replace

import torch

import rounding
from lipschitz import Ball
from models import LipschitzMLP
from operators import Box, Step, require


def propagate(model: LipschitzMLP, x: torch.Tensor, ball: Ball, runs_in: torch.dtype | None = None,
              apart: bool = False) -> list[Box]:
    """IBP's box over the ball around each row of x (n, in_features): the pixel box, then the box after every
    operator but the last, in order; the last is h, the input of the last Linear layer.

    With `runs_in`, also the rounding errors: how far the network computing in
    `runs_in` (float32) can be from exact arithmetic, and how far this walk's
    own float64 boxes can be from IBP's exact ones (`model` is then the float64
    copy). The pixels are exact; the pixel box's ends carry their own float64
    rounding. With `apart`, also the bounds of the differences that each
    GroupSort compares (`operators.Box.apart`).
    """
    operators = model.operators()
    require(operators[:-1], "interval bound propagation", *(("propagate",) if runs_in is None else
                                                             ("propagate", "rounding")))
    x = x.flatten(1)
    lower, upper = ball.box(x)
    errors = error_norm = point = overflow = None
    deep = runs_in is not None and ball.norm != "linf" and len(model.affine_layers()) > 1  # a hidden layer
    if runs_in is not None:
        if model.affine_layers()[0].weight.dtype != torch.float64:
            raise TypeError("rounding errors are bounded for a float64 computation: pass the model's float64 copy")
        slack = rounding.unit_roundoff(torch.float64) * (lower.abs() + upper.abs())  # the ends' own rounding
        errors = torch.stack([torch.zeros_like(slack), slack])
        overflow = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    steps = [Step(runs_in)] * (len(operators) - 1)
    if deep:  # the network at x, every unit's certified Lipschitz reach, and the L2 norm of errors[0]
        point, error_norm = x, x.new_zeros(len(x))
        slopes, radius = model.certified_slopes(ball.norm), ball.radii(x)[:, None]
        steps = [Step(runs_in, reach=unit * radius, operator=operator, whole_reach=whole * radius[:, 0])
                 for unit, operator, whole in zip(slopes.units, slopes.operators, slopes.wholes)]
    whole = None if ball.norm == "linf" else Ball(ball.norm, ball.radii(x))
    box = Box(lower, upper, errors, error_norm=error_norm, overflow=overflow, ball=whole,
              center=None if whole is None else x, point=point)
    boxes = [box]
    for operator, after, step in zip(operators[:-1], operators[1:], steps):
        if apart:
            step = replace(step, compares=after.compares)
        box = operator.propagate(box, step)
        if step.whole_reach is not None:
            box = whole_norms(box, step.whole_reach)
        boxes.append(box)
    return boxes


def whole_norms(box: Box, whole_reach: torch.Tensor) -> Box:
    """The box with its `spread` and `magnitude_norm`, for a box that tracks `point` (h at x in float64), errors
    and `error_norm`. spread: `whole_reach` (how far h moves over the ball) + error_norm (how far the computed
    value is from h). magnitude_norm: ||point||_2 + ||errors[0]||_2 (the exact h at x is within errors[0] of
    point, as `operators.cut_to_reach` takes it) + spread, capped by the L2 norm of the box's magnitudes. Every
    float64 norm and sum inflated for its own rounding."""
    grow = 1 + rounding.gamma(box.point.shape[1] + 8, torch.float64)
    spread = (whole_reach + box.error_norm) * grow
    at_x = (torch.linalg.vector_norm(box.point, dim=1) + torch.linalg.vector_norm(box.errors[0], dim=1)) * grow
    bound = torch.minimum((at_x + spread) * grow, torch.linalg.vector_norm(box.magnitude, dim=1) * grow)
    return replace(box, magnitude_norm=bound, spread=spread)


def gap_lower_bounds(model: LipschitzMLP, x: torch.Tensor, ball: Ball) -> torch.Tensor:
    """Lower bounds of f_i(x') - f_j(x') over every x' in the ball around each row of x: (n, out, out).

    IBP's box of h (`propagate`), then the last layer folded into the gaps,
    which is tighter than subtracting the two logits' intervals, whose errors
    would add up. With no hidden layer, the gaps' exact range over an L2 or L1
    ball is used as well. Computed in the model's precision and sound in exact
    arithmetic (for training); certificates take
    `allowance.certified_gap_bounds`.
    """
    box = propagate(model, x, ball)[-1]
    last = model.layers[-1]
    out = last.out_features
    return last.pairs().box_interval(box)[0].unflatten(1, (out, out))
