"""Interval bound propagation (IBP): one walk over the operators, each passing IBP's `Box` by its own rules.

The walk starts from the L-inf box of the ball (cut to its domain) in pixels.
In L2 and L1 the box also carries the p-ball itself, to which the first Linear
layer cuts its interval (in L-inf the box is already the ball cut to its
domain). With `runs_in`, each operator also carries the bounds of the rounding
errors (see `operators.Box`); where those bounds would otherwise grow some
sqrt(width) times per layer (L2 and L1, two hidden layers or more), every
deeper box is cut to its units' certified Lipschitz reach around their value
at x and the error vector's L2 norm is carried too. The last layer is folded
into the gaps (`operators.Linear.pairs`); `allowance` turns the walk into the
certificates' rounding allowances.
"""

from __future__ import annotations

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
    deep = runs_in is not None and ball.norm != "linf" and len(model.config.hidden) > 1
    if runs_in is not None:
        if model.layers[0].weight.dtype != torch.float64:
            raise TypeError("rounding errors are bounded for a float64 computation: pass the model's float64 copy")
        slack = rounding.unit_roundoff(torch.float64) * (lower.abs() + upper.abs())  # the ends' own rounding
        errors = torch.stack([torch.zeros_like(slack), slack])
        overflow = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    steps = [Step(runs_in)] * (len(operators) - 1)
    if deep:  # the network at x, every unit's certified Lipschitz reach, and the L2 norm of errors[0]
        point, error_norm = x, x.new_zeros(len(x))
        slopes, radius = model.certified_slopes(ball.norm), ball.radii(x)[:, None]
        steps = [Step(runs_in, reach=unit * radius, operator=operator)
                 for unit, operator in zip(slopes.units, slopes.operators)]
    whole = None if ball.norm == "linf" else Ball(ball.norm, ball.radii(x))
    box = Box(lower, upper, errors, error_norm=error_norm, overflow=overflow, ball=whole,
              center=None if whole is None else x, point=point)
    boxes = [box]
    for operator, after, step in zip(operators[:-1], operators[1:], steps):
        if apart:
            step = Step(step.runs_in, after.compares, step.reach, step.operator)
        box = operator.propagate(box, step)
        boxes.append(box)
    return boxes


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
