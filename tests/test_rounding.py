"""The floating-point error bounds hold for float32 arithmetic as torch runs it: matrix products of any
shape and batch, large and small magnitudes, and the input normalisation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rounding
from errors import ConfigError
from nets import seeds

magnitudes = st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e6, 1e12])


@given(st.integers(1, 800), st.integers(1, 40), st.integers(1, 64), magnitudes, magnitudes, st.booleans(), seeds)
@settings(max_examples=60, deadline=None)
def test_linear_error_bounds_the_float32_product_in_any_batch(fan_in, units, batch, weight_scale, bias_scale,
                                                              positive, seed):
    """fl32(W h^ + b) against W h + b, h^ a perturbed h: the exact value is taken in float64 from float32
    data (each product exact, the sum off by some 1e-13 relative, far below the float32 bound)."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(units, fan_in, generator=g) * weight_scale).float()
    bias = (torch.randn(units, generator=g) * bias_scale).float()
    h = torch.randn(batch, fan_in, generator=g).float()
    if positive:  # no cancellation: the rounding errors of a long sum pile up, near the worst case
        weight, bias, h = 1 + weight.abs() / weight_scale, bias.abs(), 1 + h.abs()
    error = torch.rand(batch, fan_in, generator=g, dtype=torch.float64) * 1e-3
    shifted = (h.double() + error * torch.randn(batch, fan_in, generator=g, dtype=torch.float64).sign()).float()
    exact = h.double() @ weight.double().T + bias.double()
    error_in = (shifted.double() - h.double()).abs()
    bound = rounding.linear_error(weight.double(), bias.double(), torch.maximum(h.double().abs(), shifted.double().abs()),
                                  error_in, torch.float32)
    for rows in (batch, 1):  # the whole batch, and one row at a time (other kernels)
        computed = torch.cat([torch.nn.functional.linear(shifted[i:i + rows], weight, bias)
                              for i in range(0, batch, rows)])
        assert ((computed.double() - exact).abs() <= bound).all()


@given(st.floats(0, 1, width=32), st.floats(-1, 1), st.floats(0.01, 100), seeds)
@settings(max_examples=100, deadline=None)
def test_normalisation_error_bounds_float32_normalisation(pixel, mean, std, seed):
    x = torch.tensor([pixel], dtype=torch.float32)
    computed = ((x - mean) / std).double()
    exact = (torch.tensor([pixel], dtype=torch.float64) - mean) / std
    distance = (x.double() - mean).abs()
    assert ((computed - exact).abs() <= rounding.normalisation_error(distance, mean, std, torch.float32)).all()
    reciprocal = ((x - mean) * (1 / torch.tensor(std, dtype=torch.float32))).double()  # CUDA's way
    assert ((reciprocal - exact).abs() <= rounding.normalisation_error(distance, mean, std, torch.float32)).all()


def test_gamma_is_k_roundings_and_refuses_too_many():
    u = 2.0**-24
    assert rounding.unit_roundoff(torch.float32) == u
    assert rounding.gamma(3, torch.float32) == pytest.approx(3 * u / (1 - 3 * u), rel=1e-15)
    assert rounding.gamma(10, torch.float64) < rounding.gamma(10, torch.float32)
    with pytest.raises(ConfigError, match="no useful error bound"):
        rounding.gamma(2**23, torch.float32)


def test_lower_precision_matrix_products_are_refused():
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(ConfigError, match="IEEE float32 matrix products"):
            rounding.check_exact_float32_matmul()
    finally:
        torch.set_float32_matmul_precision(previous)
    rounding.check_exact_float32_matmul()
