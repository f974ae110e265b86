"""Operators: each layer kind owns every rule about itself, and each analysis is one loop over the operators.

An operator is a torch module (its forward pass) with these rules beside it:

  slope      how per-unit and whole-vector Lipschitz bounds (a `Slope`) pass through it, in an input p-norm;
  interval   how an interval lower <= h <= upper passes through it;
  rounding   how bounds on rounding errors pass through it, and the new rounding it adds;
  propagate  its interval and rounding rules together, on IBP's `Box` (with the differences a GroupSort
             after it compares, and the cut of deeper boxes to their Lipschitz reach);
  encode     its encoding in the mixed-integer program of `milp` (`program.Program`);
  onnx       its ONNX nodes, appended to the graph that `export` writes (`onnxgraph.Graph`).

This file holds the base class, the input normalisation and the Linear layer; groupsort.py holds the
activations. An analysis names the rules it needs when it starts (`require`): an operator that lacks one is
refused there with one line, never replaced by another operator's rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import lipschitz
import rounding
from errors import ConfigError
from lipschitz import Ball, OperatorNorm
from onnxgraph import Flow, Graph
from program import Program, Wire, Wires

RULES = ("slope", "interval", "rounding", "propagate", "encode", "onnx")


class MissingRule(ConfigError):
    """An analysis needs a rule that an operator of the network does not have."""


@dataclass(frozen=True)
class Slope:
    """Lipschitz bounds of a layer's output h in the input p-norm: |h_j(x) - h_j(x')| <= unit_j ||x - x'||_p
    for every unit j, and ||h(x) - h(x')||_p <= whole ||x - x'||_p."""

    unit: torch.Tensor
    whole: torch.Tensor


@dataclass(frozen=True)
class Box:
    """IBP's state after an operator, one row per example: lower <= h <= upper for every input of the ball.

    Where rounding is tracked (`errors` not None):
      errors      (2, n, units): [0] how far h as the network computes it (float32) can be from h in exact
                  arithmetic; [1] how far lower and upper, computed here in float64, can be from IBP's exact ends;
      magnitude   a bound on |h| and on its computed values;
      overflow    per example (n,), whether some float32 quantity computed so far may overflow somewhere in the
                  ball: where it may, errors[0] bounds nothing;
      error_norm  where tracked (deep nets in L2 and L1), a bound on the L2 norm of the vector whose entries
                  errors[0] bounds one by one;
      magnitude_norm  where error_norm is tracked, a bound on the L2 norm of h and of its computed value;
      spread      where error_norm is tracked, a bound on ||h' - h(x)||_2 for h' h or its computed value
                  anywhere in the ball, h(x) exact at the ball's centre (see `near_x`).
    Always optional:
      apart       upper bounds of h_a - h_b for every two units a, b of each group that the next operator
                  compares, (n, groups, size, size);
      ball, center  h ranges over exactly the p-ball `ball` around `center` (the normalised input, in L2 and L1);
      point       h at x in float64, where deeper boxes are cut to their Lipschitz reach (`cut_to_reach`).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    errors: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    error_norm: torch.Tensor | None = None
    overflow: torch.Tensor | None = None
    apart: torch.Tensor | None = None
    ball: Ball | None = None
    center: torch.Tensor | None = None
    point: torch.Tensor | None = None
    magnitude_norm: torch.Tensor | None = None
    spread: torch.Tensor | None = None

    def near_x(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Where `spread` is tracked, (low, high) with low <= h(x) <= high per unit, h exact at the ball's
        centre: point -+ errors[0], since the float64 value `point` is within the float32 network's error bound
        of the exact one (the same rules with a smaller unit roundoff, as `cut_to_reach` takes it), widened
        for the two subtractions' rounding."""
        if self.spread is None:
            return None
        u = rounding.unit_roundoff(torch.float64)
        width = self.errors[0] + 4 * u * (self.point.abs() + self.errors[0])
        return self.point - width, self.point + width


@dataclass(frozen=True)
class Step:
    """What the walk over the operators tells one operator beside its input box."""

    runs_in: torch.dtype | None = None  # the network's arithmetic, where rounding errors are tracked
    compares: int | None = None  # the next operator compares groups of this size: bound their differences
    reach: torch.Tensor | None = None  # per unit of the output, its certified Lipschitz bound times the radius
    operator: torch.Tensor | None = None  # a proved upper bound of the operator's L2 norm, for `error_norm`
    whole_reach: torch.Tensor | None = None  # per example, a bound of ||h(x') - h(x)||_2 over the ball, h the output


def tracked(lower: torch.Tensor, upper: torch.Tensor, errors: torch.Tensor | None, **rest: object) -> Box:
    """A box whose magnitude, where errors are tracked, is max(|lower|, |upper|) plus both errors: it bounds
    |h| (exact h lies within errors[1] of the computed ends) and the float32 value (within errors[0] of h)."""
    magnitude = None if errors is None else torch.maximum(lower.abs(), upper.abs()) + errors.sum(dim=0)
    return Box(lower, upper, errors, magnitude, **rest)


def cut_to_reach(
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


class Operator(nn.Module):
    """A layer kind with its rules (see the module note). Every rule here refuses: an operator has exactly the
    rules it defines."""

    compares: int | None = None  # the group size of inputs it compares with each other (GroupSort), else None

    def has(self, rule: str) -> bool:
        return getattr(type(self), rule) is not getattr(Operator, rule)

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        raise self._missing("slope")

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise self._missing("interval")

    def rounding(self, *args: object, **kwargs: object) -> object:
        raise self._missing("rounding")

    def propagate(self, box: Box, step: Step) -> Box:
        raise self._missing("propagate")

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        raise self._missing("encode")

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        raise self._missing("onnx")

    def _missing(self, rule: str) -> MissingRule:
        return MissingRule(f"{type(self).__name__} has no {rule} rule")


def require(operators: list[Operator], analysis: str, *rules: str) -> None:
    """Refuse, with one line, an analysis whose operators lack a rule it needs."""
    for operator in operators:
        for rule in rules:
            if not operator.has(rule):
                raise MissingRule(f"{analysis} needs the {rule} rule of every layer, and {type(operator).__name__} "
                                  "has none")


class Activation(Operator):
    """An activation applied to each unit or group of units: its box passes by its interval and rounding rules.
    Its rounding rule takes the errors (2, n, units), their L2 norm where tracked, and the box's upper ends."""

    def propagate(self, box: Box, step: Step) -> Box:
        lower, upper = self.interval(box.lower, box.upper)
        point = None if box.point is None else self(box.point)
        if box.errors is None:
            return Box(lower, upper, point=point)
        errors, error_norm = self.rounding(box.errors, box.error_norm, box.upper)
        return tracked(lower, upper, errors, error_norm=error_norm, overflow=box.overflow, point=point)


class Normalise(Operator):
    """Pixels (n, 784) or (n, 1, 28, 28) to the first layer's input: (x - mean) / std, flattened."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        """Every bound divided by std: |dx_i / std| <= ||dx||_p / std and ||dx / std||_p = ||dx||_p / std."""
        scale = 1 / self.std
        return Slope(slope.unit * scale, slope.whole * scale)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Increasing in each pixel (std > 0): both ends map."""
        return self(lower), self(upper)

    def rounding(self, box: Box, runs_in: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(errors, magnitude, error_norm, overflow) of the normalised box, for exact pixels and pixel-box ends
        within errors[1] of exact ones: `rounding.normalisation_error` in the network's arithmetic `runs_in` and
        in float64 for the box (plus the ends' own error over std); the error vector's L2 norm, where tracked, is
        at most that of its bounds; x - mean and its quotient may overflow where their bounds reach float32's
        largest value."""
        f64, u = torch.float64, rounding.unit_roundoff(torch.float64)
        slack = box.errors[1]
        distance = (torch.maximum((box.lower - self.mean).abs(), (box.upper - self.mean).abs()) + slack) * (1 + 4 * u)
        errors = torch.stack([rounding.normalisation_error(distance, self.mean, self.std, runs_in),
                              rounding.normalisation_error(distance, self.mean, self.std, f64) + slack / self.std])
        magnitude = distance / self.std * (1 + 2 * u) + errors.sum(dim=0)
        error_norm = None
        if box.error_norm is not None:
            pixels = box.lower.shape[1]
            error_norm = torch.linalg.vector_norm(errors[0], dim=1) * (1 + rounding.gamma(pixels + 2, f64))
        overflow = box.overflow | rounding.overflows(torch.maximum(distance, magnitude), runs_in).any(dim=1)
        return errors, magnitude, error_norm, overflow

    def propagate(self, box: Box, step: Step) -> Box:
        """The normalised box, ball, centre and point; its errors by `rounding` where they are tracked."""
        lower, upper = self.interval(box.lower, box.upper)
        ball = None if box.ball is None else Ball(box.ball.norm, box.ball.radii(box.center) / self.std)
        center = None if box.center is None else self(box.center)
        point = None if box.point is None else self(box.point)
        if box.errors is None:
            return Box(lower, upper, ball=ball, center=center, point=point)
        errors, magnitude, error_norm, overflow = self.rounding(box, step.runs_in)
        return Box(lower, upper, errors, magnitude, error_norm, overflow, ball=ball, center=center, point=point)

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        """No variable: the wires stay the pixels, with the normalisation pending for the Linear layer after."""
        return Wires(wires, self.mean, self.std, pending=True)

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        """No node: the flattened pixels, with the normalisation pending for the Linear layer after."""
        return Flow(flow.name, self.mean, self.std, pending=True)


def fold_normalisation(weight: np.ndarray, bias: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of h -> W ((h - mean) / std) + b as one affine map, (W / std) h + b - W 1 mean / std,
    in the arrays' precision (exact up to its rounding)."""
    return weight / std, bias - weight.sum(axis=1) * mean / std


class Affine(Operator):
    """An affine layer h -> W h + b on flat vectors (a Linear layer, a convolution): the rules it shares, built on
    what each kind computes its own way (`rounding.AffineMap`: |W| v, row norms, fan-in; and `interval`,
    `ball_range`, `differences`)."""

    bias: torch.Tensor
    in_features: int
    out_features: int

    @property
    def fan_in(self) -> int:
        raise NotImplementedError

    @property
    def unit_bias(self) -> torch.Tensor:
        """Every unit's bias (out_features,)."""
        return self.bias

    @property
    def longest_sum(self) -> int:
        """The most terms of one sum in this layer's slope rule (a row's |w| . b or norm): the input's units."""
        return self.in_features

    @property
    def size(self) -> int:
        return max(self.fan_in, self.in_features, self.out_features)

    def affine(self, h: torch.Tensor) -> torch.Tensor:
        """W h + b of rows h, as the rules compute it (the forward pass, or its arithmetic written out)."""
        raise NotImplementedError

    def abs_apply(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def row_norms(self, norm: str) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W h + b over the box (rows are examples), in centre and half-width form: within W c + b +- |W| r,
        c = (u + l)/2, r = (u - l)/2, since |W (h - c)| <= |W| |h - c| <= |W| r coordinatewise."""
        center, half_width = (upper + lower) / 2, (upper - lower) / 2
        middle, spread = self.affine(center), self.abs_apply(half_width)
        return middle - spread, middle + spread

    def ball_range(self, center: torch.Tensor, ball: Ball) -> tuple[torch.Tensor, torch.Tensor]:
        """W z + b over the p-ball ||z - center||_p <= radius: within w . center + b +- radius ||w||_q for each
        row w, by Hoelder (attained where `row_norms` is exact)."""
        middle = self.affine(center)
        spread = ball.radii(center)[:, None] * self.row_norms(ball.norm)
        return middle - spread, middle + spread

    def differences(self, group: int) -> Affine:
        """The layer whose units are z_a - z_b for every two units a, b of each group of `group` consecutive
        units of z = W h + b, ordered (group, a, b)."""
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """W as a dense (out_features, in_features) matrix, exactly."""
        raise NotImplementedError

    def box_interval(self, box: Box) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """`interval` of the box, cut to `ball_range` where the box is a p-ball's (in L-inf the box is the ball
        cut to its domain: exact); and the ball's term radius * ||w||_q, which the cut's rounding grows with."""
        lower, upper = self.interval(box.lower, box.upper)
        if box.ball is None:
            return lower, upper, 0.0
        low, high = self.ball_range(box.center, box.ball)
        lower, upper = torch.maximum(lower, low), torch.minimum(upper, high)
        upper = torch.maximum(upper, lower)  # two nearly equal ranges can cross by rounding: never invert
        return lower, upper, box.ball.radii(box.center)[:, None] * self.row_norms(box.ball.norm)

    def rounding(
        self, error: torch.Tensor, magnitude: torch.Tensor, dtype: torch.dtype, error_norm: torch.Tensor | None = None,
        operator: torch.Tensor | None = None, extra_roundings: int = 0, extra: torch.Tensor | float = 0.0,
        magnitude_norm: torch.Tensor | None = None, near_x: tuple[torch.Tensor, torch.Tensor] | None = None,
        spread: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per unit, a bound on |fl(W h^ + b) - (W h + b)| in `dtype` when |h^ - h| <= error and |h^|, |h| <=
        magnitude: `rounding.linear_error`; with `error_norm`, `rounding.linear_error_with_norm` (which also
        returns the outgoing error vector's L2 norm, and takes `magnitude_norm` >= ||h^||_2, `near_x` (low <=
        h(x) <= high) and `spread` >= ||h^ - h(x)||_2). `extra_roundings` and `extra`: see `rounding.fresh_error`."""
        if error_norm is None:
            return rounding.linear_error(self, magnitude, error, dtype, extra_roundings, extra), None
        return rounding.linear_error_with_norm(self, magnitude, error, error_norm, dtype, operator, magnitude_norm,
                                               near_x, spread)

    def box_rounding(self, box: Box, dtype: torch.dtype, operator: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`rounding` of the network's errors (errors[0]) from the box, with whatever it tracks as a whole."""
        return self.rounding(box.errors[0], box.magnitude, dtype, box.error_norm, operator,
                             magnitude_norm=box.magnitude_norm, near_x=box.near_x(), spread=box.spread)

    def overflow(self, box: Box, dtype: torch.dtype) -> torch.Tensor:
        """Per example, whether the layer's output, computed in `dtype` from inputs bounded by the box's
        magnitude, may overflow somewhere in the ball, or anything before it may (`rounding.linear_overflows`)."""
        return box.overflow | rounding.linear_overflows(self, box.magnitude, dtype)

    def own_error(self, box: Box, extra: torch.Tensor | float = 0.0) -> torch.Tensor:
        """How far `box_interval`, computed in float64, can be from its exact value, its ends being within
        errors[1] of exact ones: |W| errors[1] (the map moves each end by at most that), plus gamma_{n+8} of the
        magnitudes for the centre, half-width, two products, the difference and the cut (`extra`)."""
        return self.rounding(box.errors[1], box.magnitude, torch.float64, extra_roundings=7, extra=extra)[0]

    def apart(self, box: Box, group: int) -> torch.Tensor:
        """Upper bounds of z_a - z_b, z = W h + b, for every two units a, b of each group of `group` consecutive
        units, over the box: (n, groups, size, size).

        IBP on the rows W_a - W_b (`differences`): never looser than U_a - L_b
        from the units' intervals over the same box, and exact over the box for
        the first layer, where z is affine in the input. (In L2 and L1 the first
        layer's unit intervals are also cut to the ball, so there U_a - L_b can be
        the smaller: GroupSort's encoding takes the smaller of the two.) Where the
        box tracks errors, each bound is raised by its float64 rounding
        (`own_error`), so that it holds in exact arithmetic.
        """
        rows = self.differences(group)
        bound = rows.interval(box.lower, box.upper)[1]
        if box.errors is not None:
            bound = bound + rows.own_error(box)
        return bound.unflatten(1, (-1, group, group))

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        """One variable per unit, equal to its affine function of the wires by one row each (the dense matrix's
        nonzero entries: a convolution's row holds its window's taps), bounded by the box after this layer
        widened by its float64 error (so that it holds for the exact network). A pending normalisation is folded
        in (`fold_normalisation`)."""
        weight, bias = self.matrix().detach().numpy(), self.unit_bias.detach().numpy()
        if wires.pending:
            weight, bias = fold_normalisation(weight, bias, wires.mean, wires.std)
        slack = after.errors[1][0].numpy()
        lower, upper = after.lower[0].numpy() - slack, after.upper[0].numpy() + slack
        live = [k for k, wire in enumerate(wires) if wire.column is not None]
        columns = np.array([wires[k].column for k in live], dtype=np.int32)
        outputs = []
        for unit in range(weight.shape[0]):
            column = program.variable(float(lower[unit]), float(upper[unit]))
            coefficients = weight[unit, live]
            keep = coefficients != 0
            program.row(np.concatenate([[column], columns[keep]]), np.concatenate([[1.0], -coefficients[keep]]),
                        float(bias[unit]), float(bias[unit]))
            outputs.append(Wire(column, float(lower[unit]), float(upper[unit])))
        return Wires(outputs)

    def propagate(self, box: Box, step: Step) -> Box:
        """`box_interval`, with the differences the next operator compares; where errors are tracked, the
        network's new errors (`rounding` in `step.runs_in`) and the box's own (`own_error`); and where the step
        gives a reach and the box is no longer a ball's, the box cut to it (`cut_to_reach`)."""
        apart = None if step.compares is None or step.compares < 2 else self.apart(box, step.compares)
        lower, upper, ball_term = self.box_interval(box)
        errors, error_norm, overflow = box.errors, box.error_norm, None
        if errors is not None:
            network, error_norm = self.box_rounding(box, step.runs_in, step.operator)
            errors = torch.stack([network, self.own_error(box, ball_term)])
            overflow = self.overflow(box, step.runs_in)
        point = None if box.point is None else self(box.point)
        if step.reach is not None and box.ball is None:
            lower, upper = cut_to_reach(lower, upper, point, errors[0], step.reach)
        return tracked(lower, upper, errors, error_norm=error_norm, overflow=overflow, apart=apart, point=point)


class Linear(Affine, nn.Linear):
    """h -> W h + b, with its rules. `Linear.of` makes one from given tensors (the gaps' rows, say)."""

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor) -> Linear:
        """A Linear operator over the tensors `weight` (out, in) and `bias` (out,), not copied and not
        parameters: gradients flow to whatever they came from."""
        operator = cls.__new__(cls)
        nn.Module.__init__(operator)
        operator.out_features, operator.in_features = weight.shape
        operator.weight, operator.bias = weight, bias
        return operator

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    def affine(self, h: torch.Tensor) -> torch.Tensor:
        """h W^T + b, a product then a sum (the arithmetic the rules always used)."""
        return h @ self.weight.T + self.bias

    def abs_apply(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.weight.abs().T

    def row_norms(self, norm: str) -> torch.Tensor:
        """||w||_q of every row, exactly (`lipschitz.dual_norm`)."""
        return lipschitz.dual_norm(self.weight, norm)

    def matrix(self) -> torch.Tensor:
        return self.weight

    def pairs(self) -> Linear:
        """The layer folded into the gaps: rows W_i - W_j and offsets b_i - b_j for every ordered pair i, j,
        flattened to out * out units (unflatten to (out, out))."""
        rows = lipschitz.pair_difference_rows(self.weight).flatten(0, 1)
        return Linear.of(rows, (self.bias[:, None] - self.bias[None, :]).flatten())

    def gap_rounding(self, box: Box, dtype: torch.dtype) -> torch.Tensor:
        """Per example and ordered pair (i, j), a bound on |(y^_i - y^_j) - (y_i - y_j)|, y = W h + b exact and
        y^ computed in `dtype` from the box's h^: the two units' own bounds (`box_rounding`) added or, where
        the box tracks the error vector's L2 norm, the carried part (w_i - w_j) . (h^ - h) bounded as one dot
        product (`rounding.carried_error` of the rows W_i - W_j), plus both units' new roundings, whichever is
        smaller. Through the norm, orthonormal rows carry sqrt(2) ||h^ - h||_2 where the sum takes 2.
        (n, out, out)."""
        if box.error_norm is None:
            unit = self.box_rounding(box, dtype)[0]
            return unit[:, :, None] + unit[:, None, :]
        out, grow = self.out_features, 1 + rounding.gamma(self.size + 4, torch.float64)
        fresh = rounding.fresh_error_within(self, box.magnitude, dtype, box.magnitude_norm, box.near_x(),
                                            box.spread)
        unit = rounding.unit_error(self, box.errors[0], box.error_norm, fresh)  # as box_rounding's
        carried = rounding.carried_error(self.pairs(), box.errors[0], box.error_norm).unflatten(1, (out, out))
        return torch.minimum(unit[:, :, None] + unit[:, None, :], (carried + fresh[:, :, None] + fresh[:, None, :]) * grow)

    def differences(self, group: int) -> Linear:
        groups = self.weight.unflatten(0, (-1, group))
        offsets = self.bias.unflatten(0, (-1, group))
        return Linear.of((groups[:, :, None, :] - groups[:, None, :, :]).flatten(0, 2),
                         (offsets[:, :, None] - offsets[:, None, :]).flatten())

    def row_bounds(self, slope: Slope, norm: str) -> torch.Tensor:
        """Per output unit, min(|w| @ b, ||w||_q B) (`lipschitz.row_bounds`)."""
        return lipschitz.row_bounds(self.weight, slope.unit, slope.whole, norm)

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        """Per unit by `row_bounds`; whole by min(||W||_{p->p} B, ||b'||_p) (`lipschitz.whole_bound`)."""
        unit = self.row_bounds(slope, norm)
        return Slope(unit, lipschitz.whole_bound(self.weight, unit, slope.whole, norm, operator_norm))

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        """One Gemm, y = x W^T + b, in float32, a pending normalisation folded in (`fold_normalisation`, in
        float64, then rounded to float32)."""
        weight, bias = self.weight.detach().double().numpy(), self.bias.detach().double().numpy()
        if flow.pending:
            weight, bias = fold_normalisation(weight, bias, flow.mean, flow.std)
        inputs = [flow.name, graph.constant("weight", weight.astype(np.float32)),
                  graph.constant("bias", bias.astype(np.float32))]
        return Flow(graph.node("Gemm", inputs, "linear", transB=1)[0])

    def folded(self, scale: torch.Tensor, mean: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight and bias of s (W h + b - mean) + shift as one layer, (s W) h + s (b - mean) + shift: a
        batch norm after this layer folded into it (`models.BatchNormMLP`)."""
        return scale[:, None] * self.weight, scale * (self.bias - mean) + shift
