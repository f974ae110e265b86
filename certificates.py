"""When an example is certified, and its certified radius, for every method; clean and certified accuracy.

Methods, each sound in the input norm p (pixel units), for an example x with
label y and logits f:

  global    f_y - f_j > eps * T for every j != y, one threshold T for all pairs (the demo's rule);
  pairwise  f_y - f_j > eps * T_yj with T_yj = L_y + L_j;
  margin    f_y - f_j > eps * T_yj with T_yj a bound of the gap f_y - f_j itself;
  ibp       interval bound propagation's lower bound of every gap over the ball is > 0.

Words: the *gap* f_y - f_j; the *threshold* T_yj, a bound on how fast a gap
moves; the *top-2 margin*, top-1 minus top-2 logit, reported per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import ibp
import lipschitz
from errors import ConfigError
from lipschitz import Ball, LogitBounds
from mnist_data import EVAL_BATCH, Split
from models import LipschitzMLP

METHODS = ("global", "pairwise", "margin", "ibp")
LIPSCHITZ_METHODS = ("global", "pairwise", "margin")
IBP_BISECTION_STEPS = 20  # the IBP radius to within upper / 2**20


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
    logits: torch.Tensor, labels: torch.Tensor, threshold: torch.Tensor, eps: float | torch.Tensor
) -> torch.Tensor:
    """Per example: correct, and f_y - f_j > eps * T[y, j] for every j != y.

    Sound: inside ||x' - x||_p <= eps each gap f_y - f_j drops by at most
    eps * T[y, j] < f_y - f_j, so it stays positive and y stays the prediction.
    Strict, so ties never certify, and eps = 0 certifies exactly the strictly
    correct examples. `eps` is one radius or one per example; `threshold` is
    the (out, out) matrix T, or one value shared by every pair.
    """
    label_gaps, others = gaps(logits, labels)
    if isinstance(eps, torch.Tensor) and eps.ndim:
        eps = eps[:, None]
    limits = threshold[labels] if threshold.ndim else threshold
    beaten = (label_gaps > eps * limits) | ~others
    return (logits.argmax(dim=1) == labels) & beaten.all(dim=1)


def strictly_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: f_y > f_j for every j != y (a tie is not correct enough to certify)."""
    label_gaps, others = gaps(logits, labels)
    return ((label_gaps > 0) | ~others).all(dim=1)


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """A Lipschitz method's radius in closed form: min over j != y of (f_y - f_j) / T[y, j].

    `certified` certifies at every eps below it. 0 when the example is not
    strictly correct; inf when every threshold is 0 (the gaps are constant).
    """
    label_gaps, others = gaps(logits, labels)
    limits = threshold[labels]
    ratio = torch.where(limits > 0, label_gaps / limits, torch.full_like(label_gaps, float("inf")))
    radius = ratio.masked_fill(~others, float("inf")).amin(dim=1)
    return torch.where(strictly_correct(logits, labels), radius, torch.zeros_like(radius))


def certified_ibp(model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball) -> torch.Tensor:
    """Per example: strictly correct, and IBP's lower bound of f_y - f_j over the ball is > 0 for every j != y.

    The ball is cut to its domain (the pixel range by default in the scripts),
    so the certificate covers the valid images in the ball. At eps = 0 the ball
    is the point x, whose logits are known: exactly the strictly correct
    examples are certified.
    """
    logits = model(x)
    lower = ibp.gap_lower_bounds(model, x, ball)
    rows = lower[torch.arange(len(labels), device=labels.device), labels]
    _, others = gaps(logits, labels)
    proved = ((rows > 0) | ~others).all(dim=1)
    point = ball.radii(x) == 0
    return strictly_correct(logits, labels) & (proved | point)


def ibp_certified_radius(
    model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball, steps: int = IBP_BISECTION_STEPS
) -> torch.Tensor:
    """The largest eps in [0, ball.eps] found by bisection at which `certified_ibp` holds, per example.

    Bisection is valid because IBP's intervals only grow with eps, so the set of
    certified radii is an interval [0, r). Only radii that IBP certified are
    reported, so the result is a lower bound on r: certified at every eps up to it.
    0 when the example is not strictly correct.
    """
    high = ball.radii(x)
    low = torch.zeros_like(high)
    low = torch.where(certified_ibp(model, x, labels, ball.with_eps(high)), high, low)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = certified_ibp(model, x, labels, ball.with_eps(middle))
        low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)
    return low


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
    """The thresholds of each Lipschitz method among `methods`, from one computation of the model's bounds."""
    lipschitz_methods = [m for m in methods if m in LIPSCHITZ_METHODS]
    if not lipschitz_methods:
        return {}
    bounds = model.logit_bounds(norm)
    return {m: thresholds(bounds, m) for m in lipschitz_methods}


@torch.no_grad()
def certify_split(
    model: LipschitzMLP, split: Split, ball: Ball, methods: tuple[str, ...], batch_size: int = EVAL_BATCH
) -> dict[str, torch.Tensor]:
    """Per-example masks: "clean" (argmax is the label) and one per method (certified in `ball`).

    The Lipschitz methods certify the whole ball; ibp the ball cut to its domain.
    """
    check_methods(methods)
    was_training = model.training
    model.eval()
    limits = method_thresholds(model, ball.norm, methods)
    masks: dict[str, list[torch.Tensor]] = {"clean": [], **{m: [] for m in methods}}
    for x, y in split.batches(batch_size):
        logits = model(x)
        masks["clean"].append(logits.argmax(dim=1) == y)
        for method in methods:
            if method == "ibp":
                masks[method].append(certified_ibp(model, x, y, ball))
            else:
                masks[method].append(certified(logits, y, limits[method], ball.eps))
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in masks.items()}


@torch.no_grad()
def certified_radii(
    model: LipschitzMLP,
    split: Split,
    methods: tuple[str, ...],
    norm: str,
    domain: tuple[float, float] | None,
    batch_size: int = EVAL_BATCH,
) -> dict[str, torch.Tensor]:
    """Per example: "prediction", "top2_margin" and each method's certified radius (keyed by method).

    Closed form for the Lipschitz methods, bisection up to the domain's
    diameter for ibp (see `ibp_certified_radius`).
    """
    check_methods(methods)
    was_training = model.training
    model.eval()
    limits = method_thresholds(model, norm, methods)
    widest = Ball(norm, domain_diameter(model.config.in_features, norm), domain)
    columns: dict[str, list[torch.Tensor]] = {"prediction": [], "top2_margin": [], **{m: [] for m in methods}}
    for x, y in split.batches(batch_size):
        logits = model(x)
        columns["prediction"].append(logits.argmax(dim=1))
        columns["top2_margin"].append(top2_margin(logits))
        for method in methods:
            if method == "ibp":
                columns[method].append(ibp_certified_radius(model, x, y, widest))
            else:
                columns[method].append(certified_radius(logits, y, limits[method]))
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in columns.items()}


def evaluate(model: LipschitzMLP, split: Split, ball: Ball, method: str = "global") -> Accuracy:
    """Clean and certified accuracy of `model` on `split`, certified in `ball` by the rule `method`."""
    masks = certify_split(model, split, ball, (method,))
    return Accuracy(percent(masks["clean"]), percent(masks[method]))
