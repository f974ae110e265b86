"""Norm-bound math for layer-wise Lipschitz certificates: pure functions on tensors.

Bounds are per unit, in the input's L-infinity norm: a bound vector b for a layer
means |h_j(x) - h_j(x')| <= b_j * ||x - x'||_inf for every unit j. Chaining the
per-layer rules below through a network gives each logit's bound L_k; for a
network of Linear layers and 1-Lipschitz activations this is the product of
the layers' L-infinity operator norms, refined unit by unit.
"""

from __future__ import annotations

import torch


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
