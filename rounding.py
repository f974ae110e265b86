"""Floating-point error bounds: how far a computed value can be from the exact one (Higham 2002, ch. 2-3).

The standard model of IEEE arithmetic with rounding to nearest: every
operation returns (a op b)(1 + d), |d| <= u, the unit roundoff (2^-24 in
float32, 2^-53 in float64), plus an absolute error of at most `underflow` when
the result is subnormal or flushed to zero. A product of k factors
(1 + d_i)^(+-1) lies within 1 +- gamma_k, gamma_k = k u / (1 - k u). Hence a dot
product of n terms plus a bias, summed in any order, with or without fused
multiply-adds (as any BLAS does, in any batch), is off by at most
gamma_{n+1} (|w| . |h| + |b|) (Higham, eq. 3.5). This is what makes the
bounds hold for the float32 network whatever the batch, the thread count or
the kernel that evaluates it.
"""

from __future__ import annotations

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


def linear_error(
    weight: torch.Tensor, bias: torch.Tensor, magnitude: torch.Tensor, error: torch.Tensor, dtype: torch.dtype,
    extra_roundings: int = 0, extra: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Per unit, a bound on |fl(W h^ + b) - (W h + b)| when |h^ - h| <= error and |h^|, |h| <= magnitude.

    |W h^ - W h| <= |W| error (the error carried in), and the rounding of the
    new dot products in `dtype`: gamma_{n+1} (|W| magnitude + |b|), plus n + 1
    underflows. A computation with `extra_roundings` more steps on the way
    (an interval's centre and radius, say) and an `extra` magnitude among its
    terms gets gamma_{n+1+extra_roundings} (|W| magnitude + |b| + extra). Rows
    of `error` and `magnitude` are examples.
    """
    count = weight.shape[1] + 1 + extra_roundings
    absolute = weight.abs()
    fresh = gamma(count, dtype) * (magnitude @ absolute.T + bias.abs() + extra) + count * underflow(dtype)
    return error @ absolute.T + fresh


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
