"""The rounding allowance: how far the logits and gaps of the network as it runs (float32) can be from those
in exact arithmetic over a ball, plus this project's own float64 rounding; composed from each operator's
rounding rule along IBP's walk (`ibp.propagate`), and handed to the certificate rules of `certificates`.

Two allowances, one per kind of certificate:

- `gap_allowance`, per gap, for the Lipschitz methods, which compare the
  float64 logits at x with thresholds: the network's float32 error of the
  gap over the whole ball, plus the float64 forward pass's own error at x
  (`logit_allowance` is the same per logit, for a critic's single output);
- `certified_gap_bounds`, per gap, for IBP: the network's float32 error of the
  gap, plus the float64 error of IBP's own gap bound, plus the rounding of
  their difference.

Both hold only where no float32 quantity of the forward pass can overflow
anywhere in the ball (`rounding.overflows`, checked by each operator's
rounding rule): where one may, the allowance is infinite, and no rule
certifies the example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import ibp
import rounding
from lipschitz import Ball
from models import LipschitzMLP
from operators import Box, Linear


def logit_allowance(model64: LipschitzMLP, x: torch.Tensor, ball: Ball,
                    runs_in: torch.dtype = torch.float32) -> torch.Tensor:
    """Per example and logit, a bound on |f^(x') - f(x')| over the ball plus |f~(x) - f(x)|: f the exact
    logits, f^ the network's in `runs_in` (any batch, any order), f~ the float64 forward pass of the
    network's float64 copy `model64` at x (n, out): a critic's bound on its single output
    (`wasserstein.certify`); gaps take `gap_allowance`."""
    box = ibp.propagate(model64, x, ball, runs_in)[-1]
    last = model64.layers[-1]
    lost = last.box_rounding(box, runs_in)[0] + own_error(last, box, runs_in)
    return void(lost, last.overflow(box, runs_in))


def gap_allowance(model64: LipschitzMLP, x: torch.Tensor, ball: Ball,
                  runs_in: torch.dtype = torch.float32) -> torch.Tensor:
    """Per example and ordered pair of logits (i, j), a bound on |(f^_i - f^_j)(x') - (f_i - f_j)(x')| over
    the ball plus |f~_i(x) - f_i(x)| + |f~_j(x) - f_j(x)|, with f, f^ and f~ as in `logit_allowance`: never
    more than E_i + E_j from it, and less where the last layer's rows are near orthonormal, since both
    logits are computed from the same h^ and their difference carries (w_i - w_j) . (h^ - h) as one dot
    product (`operators.Linear.gap_rounding`). The Lipschitz methods subtract it from each gap
    (n, out, out)."""
    box = ibp.propagate(model64, x, ball, runs_in)[-1]
    last = model64.layers[-1]
    own = own_error(last, box, runs_in)
    lost = last.gap_rounding(box, runs_in) + own[:, :, None] + own[:, None, :]
    return void(lost, last.overflow(box, runs_in))


def own_error(last: Linear, box: Box, runs_in: torch.dtype) -> torch.Tensor:
    """Per example and logit, a bound on |f~(x) - f(x)|, the float64 forward pass's own error at x: the last
    layer's rounding of the float64 walk's own errors (errors[1]). Where the network runs in float64, f~ is one
    of the computations that the network's own bound (the last layer's `box_rounding` in float64) covers:
    whichever is smaller. errors[1] grow through |W| products layer after layer, while errors[0] are carried
    through each layer's proved L2 norm where the walk tracks it (deep nets in L2), so on a deep orthonormal
    critic the second stays near float64's roundoff where the first reaches whole logit units."""
    own = last.rounding(box.errors[1], box.magnitude, torch.float64)[0]
    return own if runs_in != torch.float64 else torch.minimum(own, last.box_rounding(box, runs_in)[0])


def void(allowance: torch.Tensor, overflow: torch.Tensor) -> torch.Tensor:
    """The allowance, infinite for every example (first dimension) where the network may overflow."""
    return torch.where(overflow.view(-1, *[1] * (allowance.ndim - 1)), torch.inf, allowance)


def voided(allowance: torch.Tensor) -> torch.Tensor:
    """Per example, whether its allowance was voided for overflow (`void`)."""
    return torch.isinf(allowance).flatten(1).any(dim=1)


@dataclass(frozen=True)
class CertifiedGaps:
    """IBP's lower bounds of every gap computed in float64 (n, out, out), the allowance to subtract from
    them (see `certified_gap_bounds`; infinite where the network may overflow), and the boxes of IBP's walk
    they came from."""

    lower: torch.Tensor
    allowance: torch.Tensor
    boxes: list[Box]

    def certified_lower(self) -> torch.Tensor:
        """Sound lower bounds of the gaps of the network as it runs: lower - allowance."""
        return self.lower - self.allowance


def certified_gap_bounds(model64: LipschitzMLP, x: torch.Tensor, ball: Ball, runs_in: torch.dtype = torch.float32,
                         apart: bool = False) -> CertifiedGaps:
    """IBP's gap bounds over the ball for the network running in `runs_in` (`model64` is its float64 copy),
    with the allowance A such that lower - A bounds f^_i(x') - f^_j(x') from below, f^ the logits as the
    network computes them, in any batch and summation order.

    A adds three terms: the float64 rounding of the gaps' own interval (the
    last layer's rows W_i - W_j, `operators.Linear.own_error`), the network's
    float32 error of each gap (`operators.Linear.gap_rounding`), and the
    rounding of the subtraction lower - A itself (gamma_3 of the magnitudes).
    `apart` is passed to `ibp.propagate`.
    """
    boxes = ibp.propagate(model64, x, ball, runs_in, apart)
    box, last = boxes[-1], model64.layers[-1]
    out, pairs = last.out_features, last.pairs()
    lower, _, ball_term = pairs.box_interval(box)
    lower = lower.unflatten(1, (out, out))
    own = pairs.own_error(box, ball_term).unflatten(1, (out, out))
    allowance = own + last.gap_rounding(box, runs_in)
    allowance = allowance + rounding.gamma(3, torch.float64) * (lower.abs() + allowance)
    return CertifiedGaps(lower, void(allowance, last.overflow(box, runs_in)), boxes)


def certified_gap_lower_bounds(model64: LipschitzMLP, x: torch.Tensor, ball: Ball,
                               runs_in: torch.dtype = torch.float32) -> torch.Tensor:
    """Lower bounds of f^_i(x') - f^_j(x') over the ball, f^ the logits as the network computes them in
    `runs_in`: (n, out, out). A bound > 0 proves that the float32 network ranks i above j everywhere in
    the ball. `model64` is the network's float64 copy; see `certified_gap_bounds`."""
    return certified_gap_bounds(model64, x, ball, runs_in).certified_lower()
