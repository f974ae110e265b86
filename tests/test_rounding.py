"""The floating-point error bounds hold for float32 arithmetic as torch runs it: matrix products of any
shape and batch, large and small magnitudes, and the input normalisation."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lipschitz
import rounding
from errors import ConfigError
from nets import seeds
from operators import Linear

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
    bound = rounding.linear_error(Linear.of(weight.double(), bias.double()), torch.maximum(h.double().abs(), shifted.double().abs()),
                                  error_in, torch.float32)
    for rows in (batch, 1):  # the whole batch, and one row at a time (other kernels)
        computed = torch.cat([torch.nn.functional.linear(shifted[i:i + rows], weight, bias)
                              for i in range(0, batch, rows)])
        assert ((computed.double() - exact).abs() <= bound).all()


@given(st.integers(1, 300), st.integers(1, 300), seeds)
@settings(max_examples=40, deadline=None)
def test_linear_error_with_norm_bounds_each_unit_and_the_whole_error_vector(fan_in, units, seed):
    """An orthonormal float32 layer with an incoming error vector of known L2 norm (the worst case of the
    per-unit rule: every entry at its bound, signs along a row): each unit's error and the outgoing vector's
    L2 norm stay within the bounds; where the layer is wide, the latter is far below the L2 norm of the
    per-unit rule's bounds, which is what the next layer would otherwise carry."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.empty(units, fan_in)
    torch.nn.init.orthogonal_(weight, generator=g)
    bias = torch.randn(units, generator=g).float()
    h = torch.rand(4, fan_in, generator=g).float()
    error = torch.full((4, fan_in), 1e-3, dtype=torch.float64)
    shifted = (h.double() + error * weight[0].double().sign()).float()  # aligned with the first row
    error_in = (shifted.double() - h.double()).abs()
    error_norm = torch.linalg.vector_norm(error_in, dim=1)
    magnitude = torch.maximum(h.double().abs(), shifted.double().abs())
    operator = lipschitz.l2_spectral_norm_upper_bound(weight)
    unit, out = rounding.linear_error_with_norm(Linear.of(weight.double(), bias.double()), magnitude, error_in, error_norm,
                                             torch.float32, operator)
    computed = torch.nn.functional.linear(shifted, weight, bias).double()
    moved = computed - (h.double() @ weight.double().T + bias.double())
    assert (moved.abs() <= unit).all()
    assert (torch.linalg.vector_norm(moved, dim=1) <= out).all()
    per_unit = rounding.linear_error(Linear.of(weight.double(), bias.double()), magnitude, error_in, torch.float32)
    assert (unit <= per_unit * (1 + 1e-12)).all()
    if min(fan_in, units) >= 100:  # the per-unit bounds' L2 norm grows some sqrt(units) times; ||W||_2 is 1
        assert (out < torch.linalg.vector_norm(per_unit, dim=1) / 4).all()


@given(st.integers(100, 400), st.integers(1, 300), seeds)
@settings(max_examples=30, deadline=None)
def test_the_inputs_l2_norm_bounds_each_units_new_rounding(fan_in, units, seed):
    """Given a bound on ||h^||_2 as well, each unit's new rounding is also at most gamma (||w||_2 ||h^||_2 +
    |b|): the bounds hold on a positive orthonormal-scale layer (no cancellation), and where the per-unit
    magnitudes are loose, as over an L2 ball, where each unit may move by the whole radius, they shrink."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(units, fan_in, generator=g) / fan_in ** 0.5).float()
    bias = torch.rand(units, generator=g).float()
    h = (0.1 * torch.rand(4, fan_in, generator=g)).float()
    no_error = torch.zeros(4, fan_in, dtype=torch.float64)
    loose = h.double() + 1.0  # every unit's own reach, radius 1, where the vector moves by 1 in all
    norm = torch.linalg.vector_norm(h.double(), dim=1)
    by_box, _ = rounding.linear_error_with_norm(Linear.of(weight.double(), bias.double()), loose, no_error, norm.new_zeros(4),
                                                torch.float32)
    both, out = rounding.linear_error_with_norm(Linear.of(weight.double(), bias.double()), loose, no_error, norm.new_zeros(4),
                                                torch.float32, magnitude_norm=norm + 1.0)
    exact = h.double() @ weight.double().T + bias.double()
    for rows in (4, 1):
        computed = torch.cat([torch.nn.functional.linear(h[i:i + rows], weight, bias) for i in range(0, 4, rows)])
        moved = computed.double() - exact
        assert (moved.abs() <= both).all()
        assert (torch.linalg.vector_norm(moved, dim=1) <= out).all()
    assert (both <= by_box).all() and (both < by_box / 2).any()


@given(st.integers(100, 400), st.integers(1, 300), st.sampled_from([0.0, 1.0]), seeds)
@settings(max_examples=30, deadline=None)
def test_the_value_at_x_and_the_spread_bound_each_units_new_rounding(fan_in, units, at_centre, seed):
    """Given |h(x)| per unit and a bound s on ||h^ - h(x)||_2, each unit's new rounding is at most
    gamma (|w| . |h(x)| + ||w||_2 s + |b|): the bounds hold on a positive layer (no cancellation) at points
    h^ = h(x) + d, ||d||_2 <= s, along and across the rows; where h(x) is large against s and sparse (a
    digit's normalised pixels against the radius), they are well below the bound through ||h^||_2 alone. With h(x) = 0
    and no bias the spread's term is all the bound has: without it, no rounding would be allowed."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(units, fan_in, generator=g) / fan_in ** 0.5).float()
    bias = at_centre * 0.1 * torch.rand(units, generator=g).float()
    centre = (at_centre * 3 * (torch.rand(1, fan_in, generator=g) < 0.1)).float().double()  # a digit's few strokes
    spread = torch.tensor([0.5], dtype=torch.float64)
    directions = torch.cat([weight[:4].double(), torch.rand(4, fan_in, generator=g, dtype=torch.float64),
                            -torch.rand(4, fan_in, generator=g, dtype=torch.float64)])
    h = (centre + 0.999 * spread * directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)).float()
    h = h[torch.linalg.vector_norm(h.double() - centre, dim=1) <= spread]  # float32 rounding may leave the ball
    assert len(h) > 0
    layer = Linear.of(weight.double(), bias.double())
    loose = centre.abs() + spread
    no_error = torch.zeros(1, fan_in, dtype=torch.float64)
    magnitude_norm = torch.linalg.vector_norm(centre, dim=1) + spread
    by_norm, _ = rounding.linear_error_with_norm(layer, loose, no_error, spread.new_zeros(1), torch.float32,
                                                 magnitude_norm=magnitude_norm)
    both, _ = rounding.linear_error_with_norm(layer, loose, no_error, spread.new_zeros(1), torch.float32,
                                              magnitude_norm=magnitude_norm, near_x=(centre, centre), spread=spread)
    exact = h.double() @ weight.double().T + bias.double()
    for rows in (len(h), 1):
        computed = torch.cat([torch.nn.functional.linear(h[i:i + rows], weight, bias) for i in range(0, len(h), rows)])
        assert ((computed.double() - exact).abs() <= both).all()
    assert (both <= by_norm).all()
    if at_centre:
        assert (both < 0.75 * by_norm).all()


def sequential_sum(terms: np.ndarray) -> float:
    """The terms added left to right in float32, each addition rounded (numpy's scalar float32 arithmetic)."""
    total = np.float32(0)
    for term in terms:
        total = np.float32(total + term)
    return float(total)


@given(st.integers(1, 1500), st.booleans(), seeds)
@settings(max_examples=40, deadline=None)
def test_sum_error_holds_where_every_addition_rounds_the_same_way(k, cancel, seed):
    """A sum built so that every addition rounds by nearly u of its partial sum, all in one direction: 1, then
    k terms just above half an ulp of 1 (each rounds up by about u), k just below (each rounds back up, by
    about u again), then, with `cancel`, -1, so that the terms cancel and the larger side is about half the
    magnitudes. Its error reaches (count - 2) u of the side: `sum_error` must hold, Higham's gamma_count of the
    magnitudes is nearly twice as large where the terms cancel, and the signed bound is attained to within 1 + 4/count.
    Then the same terms in random orders."""
    half_ulp = 2.0 ** -24
    terms = np.concatenate([[1.0], np.full(k, half_ulp * (1 + 2.0 ** -10)), np.full(k, -half_ulp * (1 - 2.0 ** -10)),
                            [-1.0] if cancel else []]).astype(np.float32)
    exact = math.fsum(terms.astype(np.float64))
    values = terms.astype(np.float64)
    total = torch.tensor([np.abs(values).sum()], dtype=torch.float64)
    side = torch.tensor([max(values[values > 0].sum(), -values[values < 0].sum())], dtype=torch.float64)
    bound = float(rounding.sum_error(len(terms), torch.float32, total, side)[0])
    error = abs(sequential_sum(terms) - exact)
    assert error <= bound
    assert error >= (len(terms) - 2) * rounding.unit_roundoff(torch.float32) * float(side[0]) * (1 - 2.0 ** -9)
    if cancel:
        assert bound < (0.5 + 1 / len(terms)) * rounding.gamma(len(terms), torch.float32) * float(total[0])
    rng = np.random.default_rng(seed)
    for _ in range(5):
        assert abs(sequential_sum(rng.permutation(terms)) - exact) <= bound
    # the same sum as a layer's dot product w . h, the terms as its row and h = 1 (exact products): the bound
    # that fresh_error_within finds from h's value at x must hold too
    layer = Linear.of(torch.from_numpy(values)[None], torch.zeros(1, dtype=torch.float64))
    ones, no_spread = torch.ones(1, len(terms), dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    within = rounding.fresh_error_within(layer, ones, torch.float32, near_x=(ones, ones), spread=no_spread)
    assert error <= float(within[0, 0])


def signed_and_unsigned(fan_in: int, units: int, seed: int) -> Iterator[tuple]:
    """Random float32 weights of both signs, and per centre (a digit-like h(x) >= 0, then h(x) of both signs): the
    points h of the ball of radius 0.5 around it that a test evaluates, the bound through the larger side
    (`near_x`) and gamma (|w| . |h(x)| + ||w||_2 s + |b|), the bound without signs."""
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(units, fan_in, generator=g) / fan_in ** 0.5).float()
    bias = (0.1 * torch.randn(units, generator=g)).float()
    layer = Linear.of(weight.double(), bias.double())
    for centre in (3 * (torch.rand(1, fan_in, generator=g) < 0.2), torch.randn(1, fan_in, generator=g)):
        centre = centre.float().double()
        spread = torch.tensor([0.5], dtype=torch.float64)
        directions = torch.cat([weight[:4].double(), torch.randn(8, fan_in, generator=g, dtype=torch.float64)])
        inside = 0.999 * spread  # on the sphere itself float32 rounding may leave the ball, and all the points can
        h = (centre + inside * directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)).float()
        h = h[torch.linalg.vector_norm(h.double() - centre, dim=1) <= spread]
        signed = rounding.fresh_error_within(layer, centre.abs() + spread, torch.float32, near_x=(centre, centre),
                                             spread=spread)
        unsigned = rounding.gamma(fan_in + 1, torch.float32) * (
            layer.abs_apply(centre.abs()) + spread * layer.row_norms("l2") + bias.double().abs())
        yield weight, bias, h, signed, unsigned


@given(st.integers(100, 400), st.integers(30, 100), seeds)
@settings(max_examples=30, deadline=None)
def test_signed_terms_bound_the_rounding_and_never_exceed_the_unsigned_bound(fan_in, units, seed):
    """Random weights of both signs against a digit-like h(x) >= 0, and against h(x) of both signs: the bound
    through the larger side (`near_x`) still bounds fl32(W h^ + b) at points of the ball, in any batch, and is
    never above gamma (|w| . |h(x)| + ||w||_2 s + |b|)."""
    for weight, bias, h, signed, unsigned in signed_and_unsigned(fan_in, units, seed):
        assert len(h) > 0
        exact = h.double() @ weight.double().T + bias.double()
        for rows in (len(h), 1):
            computed = torch.cat([torch.nn.functional.linear(h[i:i + rows], weight, bias) for i in range(0, len(h), rows)])
            assert ((computed.double() - exact).abs() <= signed).all()
        assert (signed <= unsigned * (1 + 1e-12) + 1e-35).all()


def test_signed_terms_cut_the_bound_to_about_three_fifths_on_average():
    """Where a unit's terms mostly cancel, the larger side is about half of the magnitudes: over twenty draws of
    300 inputs and 100 units, the bound through it is on average below 0.65 of the unsigned one for either
    centre (about 0.59 and 0.56; a single draw of few inputs may reach 0.7, so the claim is tested on the
    average, not draw by draw)."""
    ratios = torch.tensor([[float(signed.sum() / unsigned.sum()) for *_, signed, unsigned in
                            signed_and_unsigned(300, 100, seed)] for seed in range(20)])
    assert (ratios.mean(dim=0) < 0.65).all() and (ratios < 1).all()


def test_linear_error_with_norm_is_attained_by_an_error_along_a_row():
    """An incoming error d = c w_0 moves unit 0 by c ||w_0||^2 = ||w_0||_2 ||d||_2: the bound through the error's L2 norm,
    which the per-unit rule (each |d_j| <= 1e-2, far above c |w_0j|) does not give."""
    g = torch.Generator().manual_seed(0)
    weight = torch.empty(64, 64)
    torch.nn.init.orthogonal_(weight, generator=g)
    h = torch.rand(1, 64, generator=g).float()
    shifted = (h.double() + 1e-2 * weight[0].double()).float()
    moved_in = shifted.double() - h.double()
    error_norm = torch.linalg.vector_norm(moved_in, dim=1)
    bias = torch.zeros(64)
    magnitude = torch.maximum(h.double().abs(), shifted.double().abs())
    unit, _ = rounding.linear_error_with_norm(Linear.of(weight.double(), bias.double()), magnitude,
                                           torch.full((1, 64), 1e-2, dtype=torch.float64), error_norm, torch.float32)
    moved = (torch.nn.functional.linear(shifted, weight, bias).double() - h.double() @ weight.double().T)[0]
    assert (moved.abs() <= unit[0]).all()
    assert moved[0].abs() >= 0.99 * unit[0, 0]


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


@given(st.floats(0.9, 1.1), st.integers(2, 64), seeds)
@example(1.005, 2, 0).via("a sum 0.5 % past float32's largest value")
@example(1.015, 7, 1).via("1.5 % past it")
@settings(max_examples=80, deadline=None)
def test_overflows_flags_every_float32_sum_that_rounds_to_infinity(total, terms, seed):
    """Theorem: where `overflows` says no for a bound on the exact value, the float32 result is finite; and
    every sum that does round to inf is flagged. The sums' exact values are drawn within 10 % of float32's
    largest value, where a check a few per cent too lax would miss them."""
    top = torch.finfo(torch.float32).max
    generator = torch.Generator().manual_seed(seed)
    shares = torch.rand(terms, generator=generator, dtype=torch.float64) + 0.5
    values = (shares / shares.sum() * total * top).float()  # finite float32 terms, each at most 3/4 of the total
    computed = values.sum()
    exact = values.double().sum()
    if not rounding.overflows(exact, torch.float32):
        assert torch.isfinite(computed)
    if not torch.isfinite(computed):
        assert rounding.overflows(exact, torch.float32)
