"""When an example is certified, and its certified radius, for every method; clean and certified accuracy.

Methods, each sound in the input norm p (pixel units), for an example x with
label y and logits f:

  global    f_y - f_j > eps * T for every j != y, one threshold T for all pairs (the demo's rule);
  pairwise  f_y - f_j > eps * T_yj with T_yj = L_y + L_j;
  margin    f_y - f_j > eps * T_yj with T_yj a bound of the gap f_y - f_j itself;
  ibp       interval bound propagation's lower bound of every gap over the ball is > 0.

Words: the *gap* f_y - f_j; the *threshold* T_yj, a bound on how fast a gap
moves; the *top-2 margin*, top-1 minus top-2 logit, reported per example.

What a certificate means: the network *as it runs*, in float32, in any batch
and any summation order, predicts y at every input of the ball. The rules above
are theorems about exact arithmetic, so `measure` evaluates them in float64
from the stored float32 weights (exact in float64), with thresholds that are
proved upper bounds (`models.certified_logit_bounds`), and the rules here
subtract from every gap the rounding allowance they are handed: a proved bound
on the float32 network's rounding error over the ball and on the float64
computation's own (`allowance`). Radii are rounded down to the `RADIUS_DIGITS`
significant digits they are written with, and certify there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Callable, Iterator

import torch

import lipschitz
import rounding
from errors import ConfigError
from lipschitz import LogitBounds

METHODS = ("global", "pairwise", "margin", "ibp")
LIPSCHITZ_METHODS = ("global", "pairwise", "margin")
IBP_BISECTION_STEPS = 20  # the IBP radius to within upper / 2**20
RADIUS_DIGITS = 6  # significant digits of a written radius, rounded down


def check_methods(methods: tuple[str, ...]) -> None:
    for method in methods:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def gaps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_y - f_j for every j, mask of j != y), per example: the gaps, and which of them count."""
    label_gaps = logits.gather(1, labels[:, None]) - logits
    others = torch.arange(logits.shape[1], device=logits.device) != labels[:, None]
    return label_gaps, others


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit, per row (zero on a tie)."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def global_threshold(bounds: LogitBounds) -> torch.Tensor:
    """One threshold for every gap: min(2 max_k L_k, ||e_y - e_j||_q B_out), B_out the output's bound.

    A gap moves by at most L_y + L_j <= 2 max_k L_k, and by Hoelder by at most
    ||e_y - e_j||_q ||df||_p. In linf both terms are 2 max_k L_k (B_out is
    max_k L_k there), so the first alone is taken: the demo's rule bit for bit.
    """
    shared = 2 * bounds.per_logit.max()
    if bounds.norm == "linf":
        return shared
    return torch.minimum(shared, lipschitz.difference_coefficient(bounds.norm) * bounds.output)


def thresholds(bounds: LogitBounds, method: str) -> torch.Tensor:
    """T with |(f_y - f_j)(x) - (f_y - f_j)(x')| <= T[y, j] ||x - x'||_p, for a Lipschitz method.

    global:   `global_threshold` for every pair;
    pairwise: min(L_y + L_j, global), as f_y - f_j moves by at most L_y + L_j;
    margin:   min(M_yj, pairwise), M_yj the bound of f_y - f_j itself.
    Each is a minimum of sound bounds, hence sound; and each is at most the
    one before, so margin certifies every example that pairwise certifies, and
    pairwise every one that global certifies.
    """
    count = len(bounds.per_logit)
    shared = global_threshold(bounds)
    if method == "global":
        return shared.expand(count, count)
    pairwise = torch.minimum(bounds.per_logit[:, None] + bounds.per_logit[None, :], shared)
    if method == "pairwise":
        return pairwise
    if method == "margin":
        return torch.minimum(bounds.per_gap, pairwise)
    raise ConfigError(f"unknown Lipschitz method {method!r}: choose one of {', '.join(LIPSCHITZ_METHODS)}")


def certified(
    logits: torch.Tensor,
    labels: torch.Tensor,
    threshold: torch.Tensor,
    eps: float | torch.Tensor,
    allowance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per example: f_y - f_j > eps * T[y, j] + E_y + E_j for every j != y.

    Sound: inside ||x' - x||_p <= eps each gap f_y - f_j drops by at most
    eps * T[y, j], so it stays positive and y stays the prediction. `eps` is
    one radius or one per example; `threshold` is the (out, out) matrix T, or
    one value shared by every pair.

    Without `allowance` this is the rule in the logits' own arithmetic, for
    training statistics: correct, and the strict inequality with E = 0. With
    `allowance` E, float64 logits and a proved T (see the module note), E
    bounds each logit's rounding error (n, out; `allowance.logit_allowance`)
    or each gap's (n, out, out, E[y, j] in place of E_y + E_j;
    `allowance.gap_allowance`), and
    gamma_6 of the magnitudes covers the six roundings of this test itself: a
    certified example is predicted y by the float32 network everywhere in the ball.
    """
    label_gaps, others = gaps(logits, labels)
    if isinstance(eps, torch.Tensor) and eps.ndim:
        eps = eps[:, None]
    rows = threshold[labels] if threshold.ndim else threshold
    drop = eps * rows
    if allowance is None:
        beaten = (label_gaps > drop) | ~others
        return (logits.argmax(dim=1) == labels) & beaten.all(dim=1)
    lost, magnitude = _pair_allowance(logits, labels, allowance)
    slack = label_gaps - drop - lost
    beaten = (slack > rounding.gamma(6, logits.dtype) * (magnitude + drop)) | ~others
    return beaten.all(dim=1)


def _pair_allowance(logits: torch.Tensor, labels: torch.Tensor, allowance: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_y + E_j, |f_y| + |f_j| + E_y + E_j) per example and class j: what a gap loses to rounding, and
    the magnitude that the rounding of the test itself is relative to. A per-gap allowance (n, out, out)
    gives E[y, j] in place of E_y + E_j."""
    if allowance.ndim == 3:
        lost = allowance[torch.arange(len(labels), device=labels.device), labels]
    else:
        lost = allowance.gather(1, labels[:, None]) + allowance
    return lost, logits.gather(1, labels[:, None]).abs() + logits.abs() + lost


def strictly_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: f_y > f_j for every j != y (a tie is not correct enough to certify)."""
    label_gaps, others = gaps(logits, labels)
    return ((label_gaps > 0) | ~others).all(dim=1)


def certified_radius(
    logits: torch.Tensor, labels: torch.Tensor, threshold: torch.Tensor, allowance: torch.Tensor | None = None
) -> torch.Tensor:
    """A Lipschitz method's radius in closed form: min over j != y of (f_y - f_j - E_y - E_j) / T[y, j].

    The largest eps that `certified` accepts, with the same `allowance` (and
    rounding terms); 0 when it accepts none. inf when every threshold is 0 (the
    gaps are constant). The allowance itself grows with the radius: see
    `measure.certified_radii`, which re-checks and rounds down.
    """
    label_gaps, others = gaps(logits, labels)
    rows = threshold[labels]
    if allowance is None:
        usable, scale = label_gaps, 1.0
    else:
        lost, magnitude = _pair_allowance(logits, labels, allowance)
        step = rounding.gamma(6, logits.dtype)
        usable, scale = label_gaps - lost - step * magnitude, 1 + step
    ratio = torch.where(rows > 0, usable / (rows * scale), torch.full_like(usable, float("inf")))
    ratio = torch.where(usable > 0, ratio, torch.zeros_like(ratio))
    radius = ratio.masked_fill(~others, float("inf")).amin(dim=1)
    if allowance is None:
        return torch.where(strictly_correct(logits, labels), radius, torch.zeros_like(radius))
    return radius


def gaps_certified(lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: the certified lower bound of f_y - f_j over the ball (IBP's, with its allowance already
    subtracted: `allowance.certified_gap_lower_bounds`) is > 0 for every j != y."""
    rows = lower[torch.arange(len(labels), device=labels.device), labels]
    others = torch.arange(rows.shape[1], device=rows.device) != labels[:, None]
    return ((rows > 0) | ~others).all(dim=1)


def bisect_radius(certifies: Callable[[torch.Tensor], torch.Tensor], high: torch.Tensor,
                  steps: int = IBP_BISECTION_STEPS) -> torch.Tensor:
    """The largest radius in [0, high] found by bisection at which `certifies` (one radius per example) holds.

    Bisection is valid for a rule whose bounds only loosen as the radius grows,
    as IBP's intervals do, so that its certified radii form an interval [0, r).
    Only radii that it certified are reported, so the result is a lower bound
    on r. 0 when none is certified.
    """
    low = torch.zeros_like(high)
    low = torch.where(certifies(high), high, low)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = certifies(middle)
        low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)
    return low


def floor_significant(values: torch.Tensor, digits: int = RADIUS_DIGITS) -> torch.Tensor:
    """Every value replaced by the largest number written with `digits` significant digits that does not
    exceed it (as a float): what is written is never more than what was certified, and reads back exactly.
    """
    context = Context(prec=digits)
    floored = []
    for value in values.tolist():
        if value > 0 and math.isfinite(value):
            written = Decimal(f"{value:.{digits}g}")
            if float(written) > value:
                written = written.next_minus(context)
            value = float(written)
        floored.append(value)
    return torch.tensor(floored, dtype=values.dtype, device=values.device)


def verified_radius(radius: torch.Tensor, certifies: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`radius` rounded down (`floor_significant`), each checked by `certifies` at that very value;
    one that fails is moved down a relative 1e-6 and checked again, up to three times, and is 0 after.

    The rounding is monotone in exact arithmetic, but the computed errors and
    bounds are not exactly so: the check makes every written radius certify
    when it is fed back as eps.
    """
    radius = floor_significant(radius)
    for _ in range(3):
        ok = certifies(radius) | (radius == 0)
        if ok.all():
            return radius
        radius = torch.where(ok, radius, floor_significant(radius * (1 - 1e-6)))
    return torch.where(certifies(radius), radius, torch.zeros_like(radius))


def domain_diameter(in_features: int, norm: str) -> float:
    """The p-norm diameter of the pixel box [0, 1]^d: 1 (linf), sqrt(d) (l2), d (l1).

    Every valid image is within it of every other, so a certificate at this radius
    (within the pixel range) covers the whole domain.
    """
    return float(lipschitz.vector_norm(torch.ones(in_features, dtype=torch.float64), norm))


@dataclass(frozen=True)
class Accuracy:
    """Clean and certified accuracy on a split, in percent."""

    clean: float
    certified: float

    def lines(self) -> str:
        return (
            f"test acc on clean examples (%): {self.clean:.3f}\n"
            f"test certified on clean examples (%): {self.certified:.3f}"
        )


def percent(mask: torch.Tensor) -> float:
    return 100.0 * mask.sum().item() / max(1, mask.numel())
