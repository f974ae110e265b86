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
are theorems about exact arithmetic, so `certify_split` and `certified_radii`
evaluate them in float64 from the stored float32 weights (exact in float64),
with thresholds that are proved upper bounds (`models.certified_logit_bounds`),
and subtract from every gap a proved bound on the float32 network's rounding
error over the ball and on their own float64 rounding (`ibp.logit_errors`,
`ibp.certified_gap_lower_bounds`). The float64 products run on blocks of
`BLOCK` examples aligned with the split, so an example's certificate does not
depend on the batch size or on `--limit`. Radii are rounded down to the
`RADIUS_DIGITS` significant digits they are written with, and certify there.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Callable, Iterator

import torch

import ibp
import lipschitz
import rounding
from errors import ConfigError
from lipschitz import Ball, LogitBounds
from mnist_data import Split
from models import LipschitzMLP

METHODS = ("global", "pairwise", "margin", "ibp")
LIPSCHITZ_METHODS = ("global", "pairwise", "margin")
IBP_BISECTION_STEPS = 20  # the IBP radius to within upper / 2**20
BLOCK = 240  # examples per float64 block: one shape for every product (see `padded_blocks`)
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
    shared = 2 * bounds.logits.max()
    if bounds.norm == "linf":
        return shared
    return torch.minimum(shared, lipschitz.lp_difference_coefficient(bounds.norm) * bounds.output)


def thresholds(bounds: LogitBounds, method: str) -> torch.Tensor:
    """T with |(f_y - f_j)(x) - (f_y - f_j)(x')| <= T[y, j] ||x - x'||_p, for a Lipschitz method.

    global:   `global_threshold` for every pair;
    pairwise: min(L_y + L_j, global), as f_y - f_j moves by at most L_y + L_j;
    margin:   min(M_yj, pairwise), M_yj the bound of f_y - f_j itself.
    Each is a minimum of sound bounds, hence sound; and each is at most the
    one before, so margin certifies every example that pairwise certifies, and
    pairwise every one that global certifies.
    """
    count = len(bounds.logits)
    shared = global_threshold(bounds)
    if method == "global":
        return shared.expand(count, count)
    pairwise = torch.minimum(bounds.logits[:, None] + bounds.logits[None, :], shared)
    if method == "pairwise":
        return pairwise
    if method == "margin":
        return torch.minimum(bounds.differences, pairwise)
    raise ConfigError(f"unknown Lipschitz method {method!r}: choose one of {', '.join(LIPSCHITZ_METHODS)}")


def certified(
    logits: torch.Tensor,
    labels: torch.Tensor,
    threshold: torch.Tensor,
    eps: float | torch.Tensor,
    errors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per example: f_y - f_j > eps * T[y, j] + E_y + E_j for every j != y.

    Sound: inside ||x' - x||_p <= eps each gap f_y - f_j drops by at most
    eps * T[y, j], so it stays positive and y stays the prediction. `eps` is
    one radius or one per example; `threshold` is the (out, out) matrix T, or
    one value shared by every pair.

    Without `errors` this is the rule in the logits' own arithmetic, for
    training statistics: correct, and the strict inequality with E = 0. With
    `errors` (n, out), float64 logits and a proved T (see the module note), E
    bounds each logit's rounding error (`ibp.logit_errors`), and gamma_6 of the
    magnitudes covers the six roundings of this test itself: a certified
    example is predicted y by the float32 network everywhere in the ball.
    """
    label_gaps, others = gaps(logits, labels)
    if isinstance(eps, torch.Tensor) and eps.ndim:
        eps = eps[:, None]
    limits = threshold[labels] if threshold.ndim else threshold
    drop = eps * limits
    if errors is None:
        beaten = (label_gaps > drop) | ~others
        return (logits.argmax(dim=1) == labels) & beaten.all(dim=1)
    allowance, magnitude = _allowance(logits, labels, errors)
    slack = label_gaps - drop - allowance
    beaten = (slack > rounding.gamma(6, logits.dtype) * (magnitude + drop)) | ~others
    return beaten.all(dim=1)


def _allowance(logits: torch.Tensor, labels: torch.Tensor, errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_y + E_j, |f_y| + |f_j| + E_y + E_j) per example and class j: what a gap loses to rounding, and
    the magnitude that the rounding of the test itself is relative to."""
    allowance = errors.gather(1, labels[:, None]) + errors
    return allowance, logits.gather(1, labels[:, None]).abs() + logits.abs() + allowance


def strictly_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: f_y > f_j for every j != y (a tie is not correct enough to certify)."""
    label_gaps, others = gaps(logits, labels)
    return ((label_gaps > 0) | ~others).all(dim=1)


def certified_radius(
    logits: torch.Tensor, labels: torch.Tensor, threshold: torch.Tensor, errors: torch.Tensor | None = None
) -> torch.Tensor:
    """A Lipschitz method's radius in closed form: min over j != y of (f_y - f_j - allowance) / T[y, j].

    The largest eps that `certified` accepts, with the same `errors` (and
    rounding terms); 0 when it accepts none. inf when every threshold is 0 (the
    gaps are constant). The errors themselves grow with the radius: see
    `certified_radii`, which re-checks and rounds down.
    """
    label_gaps, others = gaps(logits, labels)
    limits = threshold[labels]
    if errors is None:
        usable, scale = label_gaps, 1.0
    else:
        allowance, magnitude = _allowance(logits, labels, errors)
        step = rounding.gamma(6, logits.dtype)
        usable, scale = label_gaps - allowance - step * magnitude, 1 + step
    ratio = torch.where(limits > 0, usable / (limits * scale), torch.full_like(usable, float("inf")))
    ratio = torch.where(usable > 0, ratio, torch.zeros_like(ratio))
    radius = ratio.masked_fill(~others, float("inf")).amin(dim=1)
    if errors is None:
        return torch.where(strictly_correct(logits, labels), radius, torch.zeros_like(radius))
    return radius


def certified_ibp(
    model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball, runs_in: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per example: the lower bound of f_y - f_j over the ball that `ibp.certified_gap_lower_bounds` proves
    for the network running in `runs_in` is > 0 for every j != y. `model` is its float64 copy.

    The ball is cut to its domain (the pixel range by default in the scripts),
    so the certificate covers the valid images in the ball.
    """
    lower = ibp.certified_gap_lower_bounds(model, x, ball, runs_in)
    rows = lower[torch.arange(len(labels), device=labels.device), labels]
    others = torch.arange(rows.shape[1], device=rows.device) != labels[:, None]
    return ((rows > 0) | ~others).all(dim=1)


def ibp_certified_radius(
    model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball, runs_in: torch.dtype = torch.float32,
    steps: int = IBP_BISECTION_STEPS,
) -> torch.Tensor:
    """The largest eps in [0, ball.eps] found by bisection at which `certified_ibp` holds, per example.

    Bisection is valid because IBP's intervals only grow with eps, so the set of
    certified radii is an interval [0, r). Only radii that IBP certified are
    reported, so the result is a lower bound on r. 0 when none is certified.
    """
    high = ball.radii(x)
    low = torch.zeros_like(high)
    low = torch.where(certified_ibp(model, x, labels, ball.with_eps(high), runs_in), high, low)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = certified_ibp(model, x, labels, ball.with_eps(middle), runs_in)
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
    return float(lipschitz.lp_vector_norm(torch.ones(in_features, dtype=torch.float64), norm))


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


def method_thresholds(model: LipschitzMLP, norm: str, methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The proved float64 thresholds of each Lipschitz method among `methods`, from one computation of the
    model's bounds (`models.LipschitzMLP.certified_logit_bounds`)."""
    lipschitz_methods = [m for m in methods if m in LIPSCHITZ_METHODS]
    if not lipschitz_methods:
        return {}
    bounds = model.certified_logit_bounds(norm)
    return {m: thresholds(bounds, m) for m in lipschitz_methods}


def float64_copy(model: LipschitzMLP) -> LipschitzMLP:
    """The same network with float64 weights, in eval mode: every float32 weight is exact in float64."""
    return copy.deepcopy(model).double().eval()


def padded_blocks(split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """(images, labels, rows): the split in blocks of `BLOCK` examples, the last padded with copies of its
    first example to the full size; `rows` is where the real ones sit in the split.

    How a BLAS rounds a product depends on its shape, through the kernel it
    picks (a batch of 1 or 7 rounds differently from a batch of 10,000), and
    on the row's place only within a ragged last tile of rows. Every product
    here has BLOCK rows, a multiple of every usual tile height (2 to 16), so an
    example's float64 results, and its certificate, do not depend on the
    batch, on --limit or on its place (the tests check this on the BLAS in use).
    """
    for start in range(0, len(split), BLOCK):
        images, labels = split.images[start : start + BLOCK], split.labels[start : start + BLOCK]
        rows = slice(start, start + len(labels))
        yield _pad(images), _pad(labels), rows


def _pad(rows: torch.Tensor) -> torch.Tensor:
    """`rows` completed to `BLOCK` rows with copies of the first."""
    missing = BLOCK - len(rows)
    return torch.cat([rows, rows[:1].expand(missing, *rows.shape[1:])]) if missing else rows


def _ball_for(ball: Ball, rows: slice) -> Ball:
    """The ball of one block: one radius per example is cut to the block's rows and padded like them."""
    if isinstance(ball.eps, torch.Tensor) and ball.eps.ndim:
        return ball.with_eps(_pad(ball.eps[rows]))
    return ball


@torch.no_grad()
def certify_split(model: LipschitzMLP, split: Split, ball: Ball, methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-example masks: "clean" (the float32 argmax is the label) and one per method (certified in `ball`).

    The Lipschitz methods certify the whole ball; ibp the ball cut to its
    domain. See the module note for what a certificate means and why it holds
    in floating point.
    """
    check_methods(methods)
    rounding.check_exact_float32_matmul()
    was_training = model.training
    model.eval()
    runs_in, exact = model.layers[0].weight.dtype, float64_copy(model)
    limits = method_thresholds(exact, ball.norm, methods)
    masks: dict[str, list[torch.Tensor]] = {"clean": [], **{m: [] for m in methods}}
    for x, y, rows in padded_blocks(split):
        count = rows.stop - rows.start
        masks["clean"].append((model(x).argmax(dim=1) == y)[:count])
        x, block = x.double(), _ball_for(ball, rows)
        if limits:  # the Lipschitz methods' ball is whole, not cut to the domain
            logits, errors = exact(x), ibp.logit_errors(exact, x, Ball(block.norm, block.eps), runs_in)
        for method in methods:
            if method == "ibp":
                mask = certified_ibp(exact, x, y, block, runs_in)
            else:
                mask = certified(logits, y, limits[method], block.radii(x), errors)
            masks[method].append(mask[:count])
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in masks.items()}


@torch.no_grad()
def certified_radii(
    model: LipschitzMLP, split: Split, methods: tuple[str, ...], norm: str, domain: tuple[float, float] | None
) -> dict[str, torch.Tensor]:
    """Per example: "prediction", "top2_margin" (of the float32 logits) and each method's certified radius.

    Radii are capped at the pixel box's diameter (where every valid image is
    covered), rounded down to `RADIUS_DIGITS` significant digits and checked
    there (`verified_radius`). A Lipschitz radius is found in closed form twice:
    once with the rounding errors at the point x, which can only overestimate
    it, then with the errors over the ball of that radius, which bound those of
    any smaller ball. IBP's radius is found by bisection.
    """
    check_methods(methods)
    rounding.check_exact_float32_matmul()
    was_training = model.training
    model.eval()
    runs_in, exact = model.layers[0].weight.dtype, float64_copy(model)
    limits = method_thresholds(exact, norm, methods)
    diameter = domain_diameter(model.config.in_features, norm)
    widest = Ball(norm, diameter, domain)
    columns: dict[str, list[torch.Tensor]] = {"prediction": [], "top2_margin": [], **{m: [] for m in methods}}
    for x, y, rows in padded_blocks(split):
        count = rows.stop - rows.start
        logits32 = model(x)
        columns["prediction"].append(logits32.argmax(dim=1)[:count])
        columns["top2_margin"].append(top2_margin(logits32)[:count])
        x = x.double()
        logits = exact(x)

        def errors(radius: torch.Tensor) -> torch.Tensor:
            return ibp.logit_errors(exact, x, Ball(norm, radius), runs_in)

        if limits:
            at_point = errors(torch.zeros(len(x), dtype=x.dtype, device=x.device))
            largest = torch.stack([certified_radius(logits, y, t, at_point) for t in limits.values()]).amax(dim=0)
            over_ball = errors(largest.clamp(max=diameter))
        for method in methods:
            if method == "ibp":
                radius = ibp_certified_radius(exact, x, y, widest, runs_in)
                radius = verified_radius(radius, lambda r: certified_ibp(exact, x, y, widest.with_eps(r), runs_in))
            else:
                radius = certified_radius(logits, y, limits[method], over_ball).clamp(max=diameter)
                radius = verified_radius(radius, lambda r, t=limits[method]: certified(logits, y, t, r, errors(r)))
            columns[method].append(radius[:count])
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in columns.items()}


def evaluate(model: LipschitzMLP, split: Split, ball: Ball, method: str = "global") -> Accuracy:
    """Clean and certified accuracy of `model` on `split`, certified in `ball` by the rule `method`."""
    masks = certify_split(model, split, ball, (method,))
    return Accuracy(percent(masks["clean"]), percent(masks[method]))
