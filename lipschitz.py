"""Norm-bound math for layer-wise Lipschitz certificates: pure functions on tensors, the norm as data.

Every function takes the input norm p ("linf", "l2" or "l1") and works in that
norm; the demo's L-infinity rule is the "linf" case, not a second chain. Two
sound bounds are carried side by side through a network, and each layer takes
their minimum (the smaller of two upper bounds is an upper bound):

- per-unit bounds b: |h_j(x) - h_j(x')| <= b_j ||x - x'||_p;
- a whole-vector bound B: ||h(x) - h(x')||_p <= B ||x - x'||_p, the product of
  the layers' p -> p operator norms (every activation here is 1-Lipschitz in
  every p-norm).

A row w applied to h then moves by at most min(|w| @ b, ||w||_q B) ||x - x'||_p,
q the dual of p, by Hoelder's inequality. In L-inf the per-unit chain is never
looser than the operator-norm product (by induction, b_j <= B = max_j b_j), so
only the chain is taken there, which keeps the demo's numbers bit for bit.

Words used across the project: a *bound* L_k bounds how fast logit k moves; a
*threshold* T_yj bounds how fast the *gap* f_y - f_j moves (see `certificates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

import rounding
from errors import ConfigError

NORMS = ("linf", "l2", "l1")
NORM_NAMES = {"linf": "L-inf", "l2": "L2", "l1": "L1"}
# torch.linalg orders of the vector norm, its dual, and the matching operator norm.
_VECTOR_ORD = {"linf": math.inf, "l2": 2.0, "l1": 1.0}
_DUAL_ORD = {"linf": 1.0, "l2": 2.0, "l1": math.inf}
_OPERATOR_ORD = {"linf": math.inf, "l2": 2, "l1": 1}

OperatorNorm = Callable[[torch.Tensor, str], torch.Tensor]


def check_norm(norm: str) -> None:
    """Raise a clear error for a norm other than linf, l2, l1."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


@dataclass(frozen=True)
class Ball:
    """The perturbation: every x' with ||x' - x||_p <= eps, cut to the box `domain` when given.

    `eps` is one radius, or a tensor of one radius per example. The domain
    (e.g. the pixel range) restricts the ball to valid inputs; None keeps the
    whole ball. A Lipschitz certificate covers the whole ball, so its domain is
    irrelevant there; IBP and attacks work inside the cut ball.
    """

    norm: str
    eps: float | torch.Tensor
    domain: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_norm(self.norm)

    def radii(self, like: torch.Tensor) -> torch.Tensor:
        """One radius per row of `like`, as a tensor of its dtype and device.

        Built by multiplication, not torch.as_tensor, so that torch.compile
        does not specialise on every new radius.
        """
        eps = self.eps.to(dtype=like.dtype, device=like.device) if isinstance(self.eps, torch.Tensor) else self.eps
        return like.new_ones(len(like)) * eps

    def box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper): the L-inf box of radius eps around each row of x, cut to the domain.

        It holds the p-ball for every p, since |dx_i| <= ||dx||_p.
        """
        radius = self.radii(x)[:, None]
        lower, upper = x - radius, x + radius
        if self.domain is not None:
            lower, upper = lower.clamp(min=self.domain[0]), upper.clamp(max=self.domain[1])
        return lower, upper

    def with_eps(self, eps: float | torch.Tensor) -> Ball:
        return replace(self, eps=eps)


@dataclass(frozen=True)
class LogitBounds:
    """Lipschitz bounds of a model's logits in one input p-norm, in pixel units.

    per_logit[k]:   |f_k(x) - f_k(x')| <= per_logit[k] ||x - x'||_p            (the bound L_k)
    per_gap[i, j]:  |(f_i - f_j)(x) - (f_i - f_j)(x')| <= per_gap[i, j] ||x - x'||_p
    output:         ||f(x) - f(x')||_p <= output ||x - x'||_p
    """

    norm: str
    per_logit: torch.Tensor
    per_gap: torch.Tensor
    output: torch.Tensor


def vector_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """||v||_p along the last dimension."""
    check_norm(norm)
    return torch.linalg.vector_norm(v, ord=_VECTOR_ORD[norm], dim=-1)


def dual_norm(rows: torch.Tensor, norm: str) -> torch.Tensor:
    """||w||_q of each row w (last dimension), q the dual of p: L1 for linf, L2 for l2, L-inf for l1.

    By Hoelder, |w . dh| <= ||w||_q ||dh||_p, with equality for some dh: the
    exact Lipschitz constant in the p-norm of h -> w . h.
    """
    check_norm(norm)
    return torch.linalg.vector_norm(rows, ord=_DUAL_ORD[norm], dim=-1)


def operator_norm(weight: torch.Tensor, norm: str) -> torch.Tensor:
    """||W||_{p->p}: the largest row L1 norm (linf), the largest singular value (l2), the largest column L1 norm (l1).

    torch.linalg.matrix_norm: exact up to rounding, in l2 a computed SVD, whose
    largest singular value can fall below the true one (in float32 it was off
    by up to a relative 6e-7, either way, on the demo's trained layers).
    Differentiable, for training; certificates take `operator_norm_upper_bound`.
    """
    check_norm(norm)
    return torch.linalg.matrix_norm(weight, ord=_OPERATOR_ORD[norm])


def l2_spectral_norm_upper_bound(weight: torch.Tensor) -> torch.Tensor:
    """An upper bound of the largest singular value of `weight`, proved in float64 arithmetic.

    sigma^2 is the largest eigenvalue of the Gram matrix A (W W^T or W^T W, the
    smaller). With V the computed eigenvectors of the computed A^, nearly
    orthogonal, Ostrowski's theorem gives lambda_max(A) <= lambda_max(C) / lambda_min(G),
    C = V^T A V and G = V^T V, and Gershgorin's discs bound both: C's largest
    absolute row sum from above, 1 - G's largest off-identity row sum from
    below. The rounding of A^, of the products and of the sums is bounded with
    gamma_k (`rounding`) through the matrices' 1- and inf-norms, and added; the
    float64 eigensolver's own accuracy is never assumed. The result exceeds the
    true norm by a relative 1e-8 or so: an SVD would be as tight, but only an
    estimate, which can fall below. Not differentiable: for certificates.
    """
    w = weight.detach().to(torch.float64)
    w = w if w.shape[0] <= w.shape[1] else w.T
    size, inner = w.shape
    if size == 0 or inner == 0:
        return w.new_zeros(())
    f64 = torch.float64
    gram = w @ w.T
    _, vectors = torch.linalg.eigh(gram)
    rotated = vectors.T @ (gram @ vectors)
    overlap = vectors.T @ vectors - torch.eye(size, dtype=f64, device=w.device)

    def row_sum(m: torch.Tensor) -> torch.Tensor:  # the inf-norm
        return m.abs().sum(dim=1).max()

    v_one, v_inf = vectors.abs().sum(dim=0).max(), row_sum(vectors)
    gram_error = rounding.gamma(inner, f64) * v_one * w.abs().sum(dim=0).max() * row_sum(w) * v_inf
    product_error = rounding.gamma(2 * size, f64) * v_one * row_sum(gram) * v_inf
    overlap_error = rounding.gamma(size, f64) * v_one * v_inf
    steps = rounding.gamma(4 * size + inner + 16, f64)  # the rounding of these bounds themselves
    top = (row_sum(rotated) + gram_error + product_error) * (1 + steps)
    bottom = 1 - (row_sum(overlap) + overlap_error) * (1 + steps) - 4 * rounding.unit_roundoff(f64)
    if bottom <= 0.5:
        raise ArithmeticError("the eigenvectors are too far from orthogonal to bound the spectral norm")
    return (top / bottom).sqrt() * (1 + 4 * rounding.unit_roundoff(f64))


def l2_spectral_norm_estimate(weight: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """A cheap power-iteration ESTIMATE of the largest singular value, for the training penalty only.

    Power iteration converges from below, so this is at most the true spectral
    norm: it must never be used in a certificate (use
    `l2_spectral_norm_upper_bound`). The iteration runs without gradient from a
    fixed start; the result ||W v|| is differentiable in W, the usual
    spectral-normalisation gradient.
    """
    with torch.no_grad():
        v = torch.ones(weight.shape[1], dtype=weight.dtype, device=weight.device)
        for _ in range(iterations):
            v = weight.T @ (weight @ v)
            v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    return (weight @ v).norm()


def operator_norm_estimate(weight: torch.Tensor, norm: str) -> torch.Tensor:
    """`operator_norm`, with the l2 spectral norm replaced by its power-iteration estimate (training only)."""
    if norm == "l2":
        return l2_spectral_norm_estimate(weight)
    return operator_norm(weight, norm)


def operator_norm_upper_bound(weight: torch.Tensor, norm: str) -> torch.Tensor:
    """`operator_norm` for certificates: in l2 the proved `l2_spectral_norm_upper_bound`, not an SVD.

    In linf and l1 the norm is a maximum of sums of absolute values, which
    rounding moves by a relative gamma_n at most; the caller inflates the
    bounds built from it (see `models.LipschitzMLP.certified_logit_bounds`).
    """
    if norm == "l2":
        return l2_spectral_norm_upper_bound(weight).to(weight.dtype)
    return operator_norm(weight, norm)


def row_bounds(rows: torch.Tensor, unit: torch.Tensor, whole: torch.Tensor, norm: str) -> torch.Tensor:
    """Bound of |w . (h(x) - h(x'))| / ||x - x'||_p for each row w (last dimension) of `rows`.

    min(|w| @ b, ||w||_q B): the first by the triangle inequality unit by unit
    (|sum_j w_j dh_j| <= sum_j |w_j| b_j ||dx||), the second by Hoelder with the
    whole-vector bound. Rows may be a weight matrix (a layer's units), or
    differences of rows (logit differences). In linf only the first is taken:
    it is never larger (see the module note). Differentiable.
    """
    chained = rows.abs() @ unit
    if norm == "linf":
        return chained
    return torch.minimum(chained, dual_norm(rows, norm) * whole)


def whole_bound(
    weight: torch.Tensor,
    out_unit: torch.Tensor,
    whole: torch.Tensor,
    norm: str,
    operator_norm: OperatorNorm = operator_norm,
) -> torch.Tensor:
    """Bound B' of ||W dh||_p / ||dx||_p, given the input's B and the outputs' per-unit bounds.

    min(||W||_{p->p} B, ||b'||_p): the operator norm times the input's bound, or
    the p-norm of the vector of per-unit bounds (each |dh'_j| <= b'_j ||dx||).
    In linf the second is never larger, so it alone is taken.
    `operator_norm` may be swapped for an estimate in the training penalty only.
    """
    by_units = vector_norm(out_unit, norm)
    if norm == "linf":
        return by_units
    return torch.minimum(operator_norm(weight, norm) * whole, by_units)


def difference_coefficient(norm: str) -> float:
    """||e_i - e_j||_q: how much ||df||_p can move one gap f_i - f_j (2, sqrt 2, 1 for linf, l2, l1)."""
    check_norm(norm)
    return {"linf": 2.0, "l2": math.sqrt(2.0), "l1": 1.0}[norm]


def pair_difference_rows(weight: torch.Tensor) -> torch.Tensor:
    """Rows W_i - W_j for every ordered pair: shape (out, out, in)."""
    return weight[:, None, :] - weight[None, :, :]


def soft_max_penalty(logit_bounds: torch.Tensor) -> torch.Tensor:
    """sum_k softmax(L)_k * L_k: a smooth stand-in for max_k L_k, the demo's penalty."""
    return (torch.softmax(logit_bounds, dim=0) * logit_bounds).sum()


def project_rows_l1_ball(rows: torch.Tensor, radius: float | torch.Tensor, max_iterations: int = 100) -> torch.Tensor:
    """Every row projected onto {w : ||w||_1 <= radius} (Euclidean projection); `radius` is one value or one per row.

    Rows already inside are returned unchanged. The projection soft-thresholds a
    row, w_i -> sign(w_i) max(|w_i| - theta, 0); theta is found by Michelot's
    iteration, theta <- (sum of |w_i| > theta, minus radius) / their count,
    which rises to the exact value in finitely many rounds without sorting. A
    small upward nudge absorbs rounding, and any row still outside (iteration
    cut short) is rescaled onto the ball, so the result is always inside.
    """
    radius = torch.as_tensor(radius, dtype=rows.dtype, device=rows.device).reshape(-1)
    magnitude = rows.abs()
    excess = magnitude.sum(dim=1) - radius
    theta = (excess / rows.shape[1]).clamp(min=0)
    for _ in range(max_iterations):
        active = magnitude > theta[:, None]
        updated = ((magnitude * active).sum(dim=1) - radius) / active.sum(dim=1).clamp(min=1)
        updated = torch.where(excess > 0, updated, torch.zeros_like(updated))
        if torch.equal(updated, theta):
            break
        theta = updated
    theta = theta * (1 + 4 * torch.finfo(rows.dtype).eps)
    projected = rows.sign() * (magnitude - theta[:, None]).clamp(min=0)
    length = projected.abs().sum(dim=1)
    shrink = torch.where(length > radius, radius / length.clamp_min(torch.finfo(rows.dtype).tiny),
                         torch.ones_like(length))
    return torch.where((excess > 0)[:, None], projected * shrink[:, None], rows)


@torch.no_grad()
def project_rows_l1_ball_(weight: torch.Tensor, radius: float) -> None:
    """`project_rows_l1_ball` in place: afterwards every row's L1 norm, and so the layer's
    L-inf operator norm, is at most `radius`."""
    weight.copy_(project_rows_l1_ball(weight, radius))


# Taylor coefficients of (1 - z)^(-1/2): W (I + Z/2 + 3 Z^2/8 + ...), Z = I - W^T W, tends to W (W^T W)^(-1/2).
BJORCK_TAYLOR = (1.0, 1 / 2, 3 / 8, 5 / 16, 35 / 128)


def orthonormalise(weight: torch.Tensor, iterations: int, order: int = 1, beta: float = 0.5) -> torch.Tensor:
    """`iterations` steps of Bjorck and Bowie's iteration (Anil, Lucas & Grosse 2019): of order 1,
    W <- (1 + beta) W - beta W W^T W; of order k <= 4, W <- W (sum_{i <= k} c_i Z^i), Z = I - W^T W, c_i the
    Taylor coefficients of (1 - z)^(-1/2) (order 1 with beta = 1/2 is the same step).

    Order 1 maps each singular value s to s (1 + beta - beta s^2), so it drives
    every one in (0, sqrt((1 + beta) / beta)) to 1, and keeps the singular
    vectors: the limit is the closest matrix with orthonormal rows or columns
    (the polar factor), whose L2 operator norm is 1. The Gram matrix is taken
    on the smaller side. A stack of matrices (..., m, n) goes at once. Differentiable; a certificate never assumes the limit,
    it bounds the weights it is given (`l2_spectral_norm_upper_bound`).
    """
    if order == 1:
        for _ in range(iterations):
            if weight.shape[-2] <= weight.shape[-1]:
                weight = (1 + beta) * weight - beta * (weight @ weight.mT) @ weight
            else:
                weight = (1 + beta) * weight - beta * weight @ (weight.mT @ weight)
        return weight
    wide = weight.shape[-2] <= weight.shape[-1]
    w = weight if wide else weight.mT  # the same step on W^T: rows orthonormal, W W^T -> I
    eye = torch.eye(w.shape[-2], dtype=w.dtype, device=w.device)
    for _ in range(iterations):
        z = eye - w @ w.mT
        term = total = eye
        for coefficient in BJORCK_TAYLOR[1:order + 1]:
            term = term @ z
            total = total + coefficient * term
        w = total @ w
    return w if wide else w.mT


@torch.no_grad()
def orthonormalise_(weight: torch.Tensor, iterations: int) -> None:
    """`orthonormalise` in place."""
    weight.copy_(orthonormalise(weight, iterations))
