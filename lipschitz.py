"""Norm-bound math for layer-wise Lipschitz certificates: pure functions on tensors.

Bounds are per unit, in the input's L-infinity norm: a bound vector b for a layer
means |h_j(x) - h_j(x')| <= b_j * ||x - x'||_inf for every unit j. Chaining the
per-layer rules below through a network gives each logit's bound L_k; for a
network of Linear layers and 1-Lipschitz activations this is the product of
the layers' L-infinity operator norms, refined unit by unit.

The `lp_` functions take the input norm p as an argument ("linf", "l2" or "l1")
and carry two sound bounds side by side, taking their minimum (the smaller of
two upper bounds is an upper bound):

- per-unit bounds b: |h_j(x) - h_j(x')| <= b_j ||x - x'||_p;
- a whole-vector bound B: ||h(x) - h(x')||_p <= B ||x - x'||_p, the product of
  the layers' p -> p operator norms (every activation here is 1-Lipschitz in
  every p-norm).

A row w applied to h then moves by at most min(|w| @ b, ||w||_q B) ||x - x'||_p,
q the dual of p, by Hoelder's inequality. In L-inf the per-unit chain is never
looser than the operator-norm product (by induction, b_j <= B = max_j b_j), so
the product is left out there, which also keeps the demo's numbers bit for bit.

The `interval_` functions are interval bound propagation (IBP): they enclose a
layer's outputs over a box of inputs, given in lower and upper bounds.
"""

from __future__ import annotations

import math

import torch

NORMS = ("linf", "l2", "l1")
# torch.linalg orders of the vector norm, its dual, and the matching operator norm.
_VECTOR_ORD = {"linf": math.inf, "l2": 2.0, "l1": 1.0}
_DUAL_ORD = {"linf": 1.0, "l2": 2.0, "l1": math.inf}


def check_norm(norm: str) -> None:
    """Raise a clear error for a norm other than linf, l2, l1."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


def linf_input_bound(in_features: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """Per-coordinate L-inf bounds of x -> (x - mean) / std: every coordinate gets 1/std."""
    return torch.full((in_features,), scale, dtype=like.dtype, device=like.device)


def linf_linear_bound(weight: torch.Tensor, in_bound: torch.Tensor) -> torch.Tensor:
    """Per-unit L-inf bounds after x -> W x + b, given the inputs' bounds.

    |sum_j W_kj (h_j(x) - h_j(x'))| <= sum_j |W_kj| b_j ||x - x'||_inf, so the
    bound is |W| @ b. With b all ones this is each row's L1 norm, the L-inf
    operator norm of that row. Differentiable, so it can be penalised.
    """
    return weight.abs() @ in_bound


def linf_margin_bound(logit_bounds: torch.Tensor) -> torch.Tensor:
    """An L-inf bound shared by every logit difference f_i - f_j: 2 * max_k L_k.

    |(f_i - f_j)(x) - (f_i - f_j)(x')| <= (L_i + L_j) ||x - x'||_inf <= 2 max_k L_k ||x - x'||_inf.
    """
    return 2 * logit_bounds.max()


def soft_max_penalty(logit_bounds: torch.Tensor) -> torch.Tensor:
    """sum_k softmax(L)_k * L_k: a smooth stand-in for max_k L_k, the demo's penalty."""
    return (torch.softmax(logit_bounds, dim=0) * logit_bounds).sum()


def lp_vector_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """||v||_p along the last dimension."""
    check_norm(norm)
    return torch.linalg.vector_norm(v, ord=_VECTOR_ORD[norm], dim=-1)


def lp_dual_norm(rows: torch.Tensor, norm: str) -> torch.Tensor:
    """||w||_q of each row w (last dimension), q the dual of p: L1 for linf, L2 for l2, L-inf for l1.

    By Hoelder, |w . dh| <= ||w||_q ||dh||_p, with equality for some dh: the
    exact Lipschitz constant in the p-norm of h -> w . h.
    """
    check_norm(norm)
    return torch.linalg.vector_norm(rows, ord=_DUAL_ORD[norm], dim=-1)


def lp_operator_norm(weight: torch.Tensor, norm: str) -> torch.Tensor:
    """||W||_{p->p}: the largest row L1 norm (linf), the largest singular value (l2), the largest column L1 norm (l1).

    Exact (torch.linalg.matrix_norm; in l2 a full SVD), so an upper bound fit
    for certificates. Differentiable.
    """
    check_norm(norm)
    return torch.linalg.matrix_norm(weight, ord={"linf": math.inf, "l2": 2, "l1": 1}[norm])


def l2_spectral_norm_estimate(weight: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """A cheap power-iteration ESTIMATE of the largest singular value, for the training penalty only.

    Power iteration converges from below, so this is at most the true spectral
    norm: it must never be used in a certificate (use `lp_operator_norm`).
    The iteration runs without gradient from a fixed start; the result
    ||W v|| is differentiable in W, the usual spectral-normalisation gradient.
    """
    with torch.no_grad():
        v = torch.ones(weight.shape[1], dtype=weight.dtype, device=weight.device)
        for _ in range(iterations):
            v = weight.T @ (weight @ v)
            v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    return (weight @ v).norm()


def lp_input_bounds(in_features: int, scale: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, B) of x -> (x - mean) / std in any p-norm: b_i = 1/std and B = 1/std.

    |dx_i| <= ||dx||_p for every p, and ||dx / std||_p = ||dx||_p / std.
    """
    unit = linf_input_bound(in_features, scale, like)
    return unit, torch.tensor(scale, dtype=like.dtype, device=like.device)


def lp_row_bounds(rows: torch.Tensor, unit: torch.Tensor, whole: torch.Tensor, norm: str) -> torch.Tensor:
    """Bound of |w . (h(x) - h(x'))| / ||x - x'||_p for each row w (last dimension) of `rows`.

    min(|w| @ b, ||w||_q B): the first by the triangle inequality unit by unit,
    the second by Hoelder with the whole-vector bound. Rows may be a weight
    matrix (a layer's units), or differences of rows (logit differences). In
    linf only the first is taken: it is never larger (see the module note).
    """
    chained = rows.abs() @ unit
    if norm == "linf":
        return chained
    return torch.minimum(chained, lp_dual_norm(rows, norm) * whole)


def lp_whole_bound(
    weight: torch.Tensor, out_unit: torch.Tensor, whole: torch.Tensor, norm: str, operator_norm=lp_operator_norm
) -> torch.Tensor:
    """Bound B' of ||W dh||_p / ||dx||_p, given the input's B and the outputs' per-unit bounds.

    min(||W||_{p->p} B, ||b'||_p): the operator norm times the input's bound, or
    the p-norm of the vector of per-unit bounds (each |dh'_j| <= b'_j ||dx||).
    In linf the second is never larger, so it alone is taken.
    `operator_norm` may be swapped for an estimate in the training penalty only.
    """
    by_units = lp_vector_norm(out_unit, norm)
    if norm == "linf":
        return by_units
    return torch.minimum(operator_norm(weight, norm) * whole, by_units)


def lp_difference_coefficient(norm: str) -> float:
    """||e_i - e_j||_q: how much ||df||_p can move one logit difference (2, sqrt 2, 1 for linf, l2, l1)."""
    check_norm(norm)
    return {"linf": 2.0, "l2": math.sqrt(2.0), "l1": 1.0}[norm]


def lp_margin_bound(logit_bounds: torch.Tensor, output_bound: torch.Tensor, norm: str) -> torch.Tensor:
    """One p-norm bound shared by every logit difference f_i - f_j.

    min(2 max_k L_k, ||e_i - e_j||_q * B_out), with B_out a bound on ||df||_p:
    the first as in `linf_margin_bound`, the second by Hoelder. In linf,
    B_out = max_k L_k and both terms equal the demo's 2 max_k L_k exactly.
    """
    return torch.minimum(linf_margin_bound(logit_bounds), lp_difference_coefficient(norm) * output_bound)


def pair_difference_rows(weight: torch.Tensor) -> torch.Tensor:
    """Rows W_i - W_j for every ordered pair: shape (out, out, in)."""
    return weight[:, None, :] - weight[None, :, :]


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


def interval_pair_lower(
    weight: torch.Tensor, bias: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> torch.Tensor:
    """Lower bounds of (W_i - W_j) h + (b_i - b_j) over the box, for every pair i, j: (n, out, out).

    The last layer folded into the logit differences: tighter than subtracting
    the two logits' intervals, whose errors would add up.
    """
    rows = pair_difference_rows(weight).flatten(0, 1)
    offsets = (bias[:, None] - bias[None, :]).flatten()
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    out = weight.shape[0]
    return (center @ rows.T + offsets - radius @ rows.abs().T).unflatten(1, (out, out))


def lp_ball_interval(
    rows: torch.Tensor, bias: torch.Tensor, center: torch.Tensor, radius: torch.Tensor, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of w . z + b over the p-ball ||z - center||_p <= radius, for each row w.

    w . center + b +- radius ||w||_q, by Hoelder (attained). `radius` holds one
    value per example (n,); rows (units, in) or (out, out, in) for differences.
    """
    middle = center @ rows.flatten(0, -2).T + bias.flatten()
    spread = radius[:, None] * lp_dual_norm(rows, norm).flatten()
    shape = rows.shape[:-1]
    return (middle - spread).unflatten(1, shape), (middle + spread).unflatten(1, shape)


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
