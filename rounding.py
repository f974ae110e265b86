"""Floating-point error bounds: how far a computed value can be from the exact one (Higham 2002, ch. 2-3).

The standard model of IEEE arithmetic with rounding to nearest: every
operation returns (a op b)(1 + d), |d| <= u, the unit roundoff (2^-24 in
float32, 2^-53 in float64), plus an absolute error of at most `underflow` when
the result is subnormal or flushed to zero, provided no result overflows: a
result whose magnitude reaches the largest finite value can round to +-inf,
and nothing after that is bounded. So every rule here holds only where
`overflows` says no for every quantity the network computes. A product of k factors
(1 + d_i)^(+-1) lies within 1 +- gamma_k, gamma_k = k u / (1 - k u). Hence a dot
product of n terms plus a bias, summed in any order, with or without fused
multiply-adds (as any BLAS does, in any batch), is off by at most
gamma_{n+1} (|w| . |h| + |b|) (Higham, eq. 3.5). This is what makes the
bounds hold for the float32 network whatever the batch, the thread count or
the kernel that evaluates it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch

from errors import ConfigError


def unit_roundoff(dtype: torch.dtype) -> float:
    """u: half the spacing of the floating-point numbers just above 1."""
    return torch.finfo(dtype).eps / 2


def gamma(count: int, dtype: torch.dtype) -> float:
    """gamma_k = k u / (1 - k u): the relative error of k roundings in a row, in any order."""
    spent = count * unit_roundoff(dtype)
    if spent >= 0.5:
        raise ConfigError(f"{count} roundings in {dtype} admit no useful error bound")
    return spent / (1 - spent)


def underflow(dtype: torch.dtype) -> float:
    """Absolute error of one operation whose result is subnormal or flushed to zero: at most the
    smallest normal number, which covers gradual underflow and flush-to-zero alike."""
    return torch.finfo(dtype).tiny


def overflows(bound: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Elementwise, whether a quantity whose exact value and every computed partial result are at most `bound`
    in magnitude may round to +-inf in `dtype`: unless bound (1 + 2u) stays below the largest finite value, or
    when the bound itself is not finite."""
    return ~(bound * (1 + 2 * unit_roundoff(dtype)) < torch.finfo(dtype).max)


class AffineMap(Protocol):
    """An affine map h -> W h + b whose every output unit is a dot product of at most `fan_in` terms plus its
    bias (a Linear layer, a convolution), seen through what the rules below need of it."""

    unit_bias: torch.Tensor  # every unit's bias
    fan_in: int  # the most terms of one unit's dot product
    size: int  # the longest vector a rule sums: max(fan_in, units in, units out)

    def affine(self, h: torch.Tensor) -> torch.Tensor:
        """W h + b for each row h of `h`, in h's precision."""

    def abs_apply(self, v: torch.Tensor) -> torch.Tensor:
        """|W| v for each row v (last dimension) of `v`: every unit's |w| . v."""

    def row_norms(self, norm: str) -> torch.Tensor:
        """Per unit, an upper bound of ||w||_q, q dual to the p-norm `norm` (the same for every example)."""


def linear_overflows(layer: AffineMap, magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per example (rows of `magnitude`), whether some unit of fl(W h + b) with |h| <= magnitude may overflow in
    `dtype`: every product, and every partial sum in any order, is at most (|W| magnitude + |b|) (1 + gamma_{n+1})
    in magnitude."""
    total = (layer.abs_apply(magnitude) + layer.unit_bias.abs()) * (1 + gamma(layer.fan_in + 1, dtype))
    return overflows(total, dtype).any(dim=1)


def linear_error(
    layer: AffineMap, magnitude: torch.Tensor, error: torch.Tensor, dtype: torch.dtype,
    extra_roundings: int = 0, extra: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Per unit, a bound on |fl(W h^ + b) - (W h + b)| when |h^ - h| <= error and |h^|, |h| <= magnitude.

    |W h^ - W h| <= |W| error (the error carried in), plus the new rounding
    (`fresh_error`). Rows of `error` and `magnitude` are examples.
    """
    return layer.abs_apply(error) + fresh_error(layer, magnitude, dtype, extra_roundings, extra)


def fresh_error(
    layer: AffineMap, magnitude: torch.Tensor, dtype: torch.dtype,
    extra_roundings: int = 0, extra: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Per unit, a bound on |fl(W h + b) - (W h + b)| when |h| <= magnitude: the rounding of the dot
    products in `dtype`, gamma_{n+1} (|W| magnitude + |b|), plus n + 1 underflows. A computation with
    `extra_roundings` more steps on the way (an interval's centre and radius, say) and an `extra`
    magnitude among its terms gets gamma_{n+1+extra_roundings} (|W| magnitude + |b| + extra)."""
    count = layer.fan_in + 1 + extra_roundings
    return gamma(count, dtype) * (layer.abs_apply(magnitude) + layer.unit_bias.abs() + extra) + count * underflow(dtype)


def linear_error_with_norm(
    layer: AffineMap, magnitude: torch.Tensor, error: torch.Tensor, error_norm: torch.Tensor,
    dtype: torch.dtype, operator: torch.Tensor | None = None, magnitude_norm: torch.Tensor | None = None,
    near_x: tuple[torch.Tensor, torch.Tensor] | None = None, spread: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear_error` when the incoming error vector d is also known as a whole: ||d||_2 <= error_norm (n,).

    Per unit, the carried error (`carried_error`) plus the new rounding
    (`fresh_error_within`). The outgoing vector's L2 norm is at most that of the
    per-unit bounds and, given `operator` (an upper bound of ||W||_2), at most
    operator * error_norm + ||fresh||_2. Through wide near-orthonormal layers
    the per-unit rule alone grows the error some sqrt(n) times per layer; the
    error's L2 norm does not. Returns the per-unit bounds (n, out) and the
    outgoing error_norm (n,).
    """
    grow = 1 + gamma(layer.size + 4, torch.float64)
    fresh = fresh_error_within(layer, magnitude, dtype, magnitude_norm, near_x, spread)
    unit = unit_error(layer, error, error_norm, fresh)
    out = torch.linalg.vector_norm(unit, dim=1)
    if operator is not None:
        out = torch.minimum(out, operator * error_norm + torch.linalg.vector_norm(fresh, dim=1))
    return unit, out * grow * grow


def unit_error(layer: AffineMap, error: torch.Tensor, error_norm: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Per unit, `carried_error` plus the new rounding `fresh` (`fresh_error_within`), inflated by
    1 + gamma_{k+4} for the float64 sum, k the layer's `size`."""
    return (carried_error(layer, error, error_norm) + fresh) * (1 + gamma(layer.size + 4, torch.float64))


def carried_error(layer: AffineMap, error: torch.Tensor, error_norm: torch.Tensor) -> torch.Tensor:
    """Per unit, a bound on |w . d| when |d| <= error entrywise and ||d||_2 <= error_norm (n,):
    min(|w| error, ||w||_2 error_norm) (Cauchy-Schwarz), inflated by 1 + gamma_{k+4}, k the layer's `size`,
    for the float64 norm, sums and products."""
    grow = 1 + gamma(layer.size + 4, torch.float64)
    return torch.minimum(layer.abs_apply(error), error_norm[:, None] * layer.row_norms("l2") * grow) * grow


def sum_error(count: int, dtype: torch.dtype, total: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """A bound on |fl(s) - s| for a dot product plus bias s, `count` terms in all, computed in `dtype` in any
    order (any tree of additions, with or without fused multiply-adds), given `total` >= the sum of the
    terms' magnitudes and `side` >= the sum of the positive terms and >= that of the negative terms' magnitudes.

    Each product rounds once (at most u of its magnitude: u total in all);
    each of the count - 1 additions rounds its result once, and that result
    is an exact sum of some of the rounded terms, within [-side, side] (1 + u),
    plus the errors made below it, at most gamma_count total (1 + u). Hence
    u total + (count - 1) u (1 + u) (side + gamma_count total), plus count
    underflows. Higham's gamma_count total takes every partial sum as large as
    total; where the terms cancel, side is about total / 2 and so is the bound.
    The smaller of the two is returned (this one is larger only by second-order
    terms where the terms all share a sign). Exact in float64 but for its own
    few roundings, which the factor 1 + gamma_8 covers.
    """
    u = unit_roundoff(dtype)
    signed = u * total + (count - 1) * u * (1 + u) * (side + gamma(count, dtype) * total)
    return torch.minimum(gamma(count, dtype) * total, signed * (1 + gamma(8, torch.float64))) + count * underflow(dtype)


def fresh_error_within(
    layer: AffineMap, magnitude: torch.Tensor, dtype: torch.dtype, magnitude_norm: torch.Tensor | None = None,
    near_x: tuple[torch.Tensor, torch.Tensor] | None = None, spread: torch.Tensor | None = None,
) -> torch.Tensor:
    """`fresh_error` of fl(W h^ + b), |h^| <= magnitude, where h^ is also known as a whole over a ball.

    Given `magnitude_norm` (n,), a bound on ||h^||_2, each unit's new rounding
    is also at most gamma_{n+1} (||w||_2 magnitude_norm + |b|) plus the
    underflows, since |w| . |h^| <= ||w||_2 ||h^||_2 (Cauchy-Schwarz). Over an
    L2 ball the box's magnitudes add every unit's own reach, some sqrt(n) times
    the whole vector's. Given `near_x` (low, high), low <= h(x) <= high (n, in),
    h exact at the ball's centre, and `spread` (n,) >= ||h^ - h(x)||_2 anywhere
    in the ball, the terms' magnitudes sum to at most |w| . a + ||w||_2 spread +
    |b|, a = max(|low|, |high|), since |h^| <= |h(x)| + |h^ - h(x)| entrywise
    and Cauchy-Schwarz takes only the second term: the input's value at x, most
    of its norm, keeps its per-unit alignment with w. The positive terms sum to
    at most w . c + |w| . r + b+ + ||w||_2 spread and the negative ones to at
    most -w . c + |w| . r + b- + ||w||_2 spread, [c - r, c + r] the interval
    [low, high] widened to hold 0 (the largest of w_i h_i and 0 over it is
    w_i c_i + |w_i| r_i); `sum_error` takes both, so a unit whose terms cancel
    gets about half of Higham's bound. The smallest bound is taken; the float64
    norms, sums and products are inflated by 1 + gamma_{k+4}, k the layer's
    `size`.
    """
    grow = 1 + gamma(layer.size + 4, torch.float64)
    fresh = fresh_error(layer, magnitude, dtype)
    rows = layer.row_norms("l2") * grow
    count = layer.fan_in + 1
    if magnitude_norm is not None:
        by_norm = (gamma(count, dtype) * (magnitude_norm[:, None] * rows + layer.unit_bias.abs()) * grow
                   + count * underflow(dtype))
        fresh = torch.minimum(fresh, by_norm)
    if near_x is not None and spread is not None:
        low, high = near_x
        reach, bias = spread[:, None] * rows, layer.unit_bias.abs()
        total = (layer.abs_apply(torch.maximum(low.abs(), high.abs())) + reach + bias) * grow * grow
        top, bottom = high.clamp_min(0), low.clamp_max(0)
        centre = ((layer.affine((top + bottom) / 2) - layer.unit_bias / 2).abs()
                  + gamma(layer.size + 4, torch.float64) * total)  # |w . c + b / 2|, its float64 rounding added
        side = (centre + layer.abs_apply((top - bottom) / 2) + bias / 2 + reach) * grow * grow
        fresh = torch.minimum(fresh, sum_error(count, dtype, total, side))
    return fresh


def normalisation_error(distance: torch.Tensor, mean: float, std: float, dtype: torch.dtype) -> torch.Tensor:
    """A bound on |fl((x - mean) / std) - (x - mean) / std| given |x - mean| <= distance.

    The mean and std are rounded to `dtype` (one rounding each), then one
    subtraction and one division, or a multiplication by a rounded reciprocal
    (two roundings; CUDA does this): at most four factors (1 + d)^(+-1) on
    x - mean, and u |mean| from rounding the mean, so
    gamma_4 |x - mean| / std + u (1 + gamma_4) |mean| / std <= gamma_5 (|x - mean| + |mean|) / std.
    """
    return gamma(5, dtype) * (distance + abs(mean)) / std + 2 * underflow(dtype)


def check_exact_float32_matmul() -> None:
    """Refuse to certify when float32 matrix products may run in lower precision (TF32 or bfloat16)."""
    if torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32:
        raise ConfigError("certificates assume IEEE float32 matrix products: call "
                          "torch.set_float32_matmul_precision('highest') before certifying")


@contextmanager
def exact_arithmetic() -> Iterator[None]:
    """For the duration, the arithmetic the rules here assume: matrix products in IEEE precision (refused
    otherwise) and convolutions as sums of products, so cuDNN is off. cuDNN may pick Winograd or FFT
    algorithms, and rounds float32 convolutions to TF32 by default, outside the dot-product model; without
    it, a CUDA convolution runs as PyTorch's unfold and matrix product (or its direct depthwise kernel).
    A CPU's arithmetic does not change."""
    check_exact_float32_matmul()
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
        yield
