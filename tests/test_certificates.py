"""Every certificate method in every norm is sound, tight where it should be, and ordered as claimed."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attacks
import lipschitz
from certify import (
    LIPSCHITZ_METHODS,
    METHODS,
    certified_ibp,
    certified_linf_global,
    certified_lp,
    certify_split,
    evaluate,
    ibp_certified_radius,
    lp_certified_radius,
    lp_pair_thresholds,
)
from mnist_data import PIXEL_RANGE, Split
from models import LipschitzMLP, LogitBounds, MLPConfig
from nets import ball_vertices, norms, random_directions, random_nets, seeds

IBP_UPPER = 10.0  # bisection ceiling for the whole-ball IBP radius of the small random nets


def radii(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, method: str, norm: str,
          domain: tuple[float, float] | None = None) -> torch.Tensor:
    with torch.no_grad():
        if method == "ibp":
            return ibp_certified_radius(model, x, y, norm, IBP_UPPER, domain)
        return lp_certified_radius(model(x), y, lp_pair_thresholds(model.lp_bounds(norm), method))


def certified(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, eps, method: str, norm: str,
              domain: tuple[float, float] | None = None) -> torch.Tensor:
    with torch.no_grad():
        if method == "ibp":
            return certified_ibp(model, x, y, eps, norm, domain)
        return certified_lp(model(x), y, lp_pair_thresholds(model.lp_bounds(norm), method), eps)


def assert_nothing_breaks(model, x, y, eps, norm, domain, seed):
    """A strong PGD, then random points on the sphere (and every L1 vertex), all within `domain`."""
    broken, found = attacks.pgd(model, x, y, eps, norm, steps=30, restarts=3, domain=domain, seed=seed)
    assert not broken.any(), f"PGD broke a certified example at {found[broken][0].tolist()}"
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    sphere = x[:, None] + eps[:, None, None] * random_directions(n * 64, d, norm, g).view(n, 64, d)
    points = torch.cat([sphere, ball_vertices(x, eps, norm)], dim=1)
    if domain is not None:
        points = points.clamp(*domain)
    with torch.no_grad():
        loss = attacks.margin_loss(model(points.flatten(0, 1)), y.repeat_interleave(points.shape[1]))
    assert (loss < 0).all(), "a sampled point in a certified ball ties or beats the label"


@given(random_nets(), norms, st.sampled_from(METHODS), st.booleans(), seeds)
@settings(max_examples=80, deadline=None)
def test_no_point_in_a_certified_ball_changes_the_prediction(model, norm, method, pixels, seed):
    """Attack every certified example just inside its own certified radius."""
    domain = PIXEL_RANGE if (pixels and method == "ibp") else None  # Lipschitz balls are always whole
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(48, model.config.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    radius = radii(model, x, y, method, norm, domain)
    keep = radius > 0
    if not keep.any():
        return
    eps = 0.999 * radius[keep].clamp(max=IBP_UPPER)
    assert certified(model, x[keep], y[keep], eps, method, norm, domain).all()
    assert_nothing_breaks(model, x[keep], y[keep], eps, norm, domain, seed)


def two_class_linear_net(in_features: int = 5) -> LipschitzMLP:
    """f_1 = -f_0 = -w . (x - 1/2): every bound of f_0 - f_1 is exact, in every norm; the boundary crosses [0, 1]^d."""
    torch.manual_seed(3)
    model = LipschitzMLP(MLPConfig(in_features=in_features, hidden=(), out_features=2, mean=0.5)).double()
    with torch.no_grad():
        model.layers[0].weight[1] = -model.layers[0].weight[0]
        model.layers[0].bias.zero_()
    return model.eval()


def abs_threshold_net(in_features: int = 5) -> LipschitzMLP:
    """MaxMin net with f_0 = |w . x| - c, f_1 = 0: pairwise, margin and ibp are exact through GroupSort."""
    torch.manual_seed(4)
    model = LipschitzMLP(MLPConfig(in_features=in_features, hidden=(2,), out_features=2, group_size=2, mean=0.5))
    model.double()
    w = torch.randn(in_features, dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.stack([w, -w]))
        model.layers[0].bias.zero_()
        model.layers[2].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        model.layers[2].bias.copy_(torch.tensor([-0.4, 0.0]))
    return model.eval()


def relu_threshold_net(in_features: int = 5) -> LipschitzMLP:
    """ReLU net with f_0 = relu(w . (x - 1/2) + ||w||_1) - ||w||_1, f_1 = 0: the unit stays on over the cube,
    so pairwise, margin and ibp are exact through the ReLU."""
    torch.manual_seed(9)
    model = LipschitzMLP(MLPConfig(in_features=in_features, hidden=(1,), out_features=2, activation="relu",
                                   mean=0.5)).double()
    w = torch.randn(in_features, dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].weight.copy_(w[None])
        model.layers[0].bias.fill_(w.abs().sum().item())
        model.layers[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model.layers[2].bias.copy_(torch.tensor([-w.abs().sum().item(), 0.0]))
    return model.eval()


TIGHT_CASES = [
    *[(two_class_linear_net, method, norm, None) for method in METHODS for norm in lipschitz.NORMS],
    (two_class_linear_net, "ibp", "linf", PIXEL_RANGE),  # a box cut by a box is a box: still exact
    *[(make, method, norm, None) for make in (abs_threshold_net, relu_threshold_net)
      for method in ("pairwise", "margin", "ibp") for norm in lipschitz.NORMS],
]


@pytest.mark.parametrize("make, method, norm, domain", TIGHT_CASES)
def test_certificate_is_exact_where_the_bound_is_tight(make, method, norm, domain):
    """Where the bound is exact, the attack breaks every correct example that is not certified, and no
    certified one: a bound 2% too small (or too large) fails here."""
    model = make()
    x = torch.rand(400, model.config.in_features, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    ordered = radii(model, x, y, method, norm, domain).sort().values
    eps = (ordered[200] + ordered[201]).item() / 2  # between two examples' radii, not on one
    certificate = certified(model, x, y, eps, method, norm, domain)
    broken, _ = attacks.pgd(model, x, y, eps, norm, steps=10, restarts=1, domain=domain, relative_step=0.25)
    assert 120 < certificate.sum() < 280
    assert torch.equal(~broken, certificate)


@given(random_nets(), norms, seeds)
@settings(max_examples=40, deadline=None)
def test_margin_certifies_all_that_pairwise_does_and_pairwise_all_that_global_does(model, norm, seed):
    bounds = model.lp_bounds(norm)
    thresholds = [lp_pair_thresholds(bounds, m) for m in LIPSCHITZ_METHODS]
    assert (thresholds[2] <= thresholds[1]).all() and (thresholds[1] <= thresholds[0]).all()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, model.config.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = torch.where(torch.rand(64, generator=g) < 0.2, torch.randint(0, logits.shape[1], (64,), generator=g),
                    logits.argmax(dim=1))
    r = [lp_certified_radius(logits, y, t) for t in thresholds]
    assert (r[0] <= r[1]).all() and (r[1] <= r[2]).all()
    for eps in (0.0, *(0.5 * r[1][r[1] > 0]).tolist()[:4], 0.05):
        masks = [certified_lp(logits, y, t, eps) for t in thresholds]
        assert (masks[0] <= masks[1]).all() and (masks[1] <= masks[2]).all()


@given(random_nets(), norms, st.sampled_from(METHODS), st.booleans(), seeds)
@settings(max_examples=40, deadline=None)
def test_certified_set_shrinks_as_the_radius_grows(model, norm, method, pixels, seed):
    domain = PIXEL_RANGE if pixels else None
    x = torch.rand(48, model.config.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    previous = torch.ones(48, dtype=torch.bool)
    for eps in (0.0, 0.001, 0.01, 0.03, 0.1, 0.3, 1.0):
        now = certified(model, x, y, eps, method, norm, domain)
        assert (now <= previous).all()
        previous = now


@given(random_nets(), norms, st.sampled_from(METHODS), seeds)
@settings(max_examples=40, deadline=None)
def test_radius_marks_where_the_rule_stops_certifying(model, norm, method, seed):
    x = torch.rand(32, model.config.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    r = radii(model, x, y, method, norm)
    inside = (r > 0) & (r < IBP_UPPER)
    if method == "ibp":  # bisection: certified at r itself, not one resolution step beyond
        below, above = r, r + 2 * IBP_UPPER / 2**20
    else:
        below, above = r * (1 - 1e-9), r * (1 + 1e-9)
    assert certified(model, x[inside], y[inside], below[inside], method, norm).all()
    assert not certified(model, x[inside], y[inside], above[inside], method, norm).any()
    assert not certified(model, x[r == 0], y[r == 0], 1e-12, method, norm).any()


@given(random_nets(), norms, st.sampled_from(METHODS), seeds)
@settings(max_examples=30, deadline=None)
def test_zero_radius_certifies_exactly_the_strictly_correct_examples(model, norm, method, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, model.config.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = torch.randint(0, logits.shape[1], (40,), generator=g)
    y[:20] = logits[:20].argmax(dim=1)
    strictly = attacks.margin_loss(logits, y) < 0
    assert torch.equal(certified(model, x, y, 0.0, method, norm, PIXEL_RANGE), strictly)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_a_tie_is_never_certified(method, norm):
    """Two identical output rows: logits 0 and 1 tie everywhere, so neither label can be certified."""
    torch.manual_seed(6)
    model = LipschitzMLP(MLPConfig(in_features=4, hidden=(4,), out_features=3, group_size=2)).double().eval()
    with torch.no_grad():
        model.layers[2].weight[1] = model.layers[2].weight[0]
        model.layers[2].bias[1] = model.layers[2].bias[0] = 50.0
    x = torch.rand(20, 4, dtype=torch.float64)
    for label in (0, 1):
        y = torch.full((20,), label)
        assert not certified(model, x, y, 0.0, method, norm).any()
        assert (radii(model, x, y, method, norm) == 0).all()


def test_margin_exactly_at_the_threshold_is_not_certified():
    thresholds = torch.tensor([[0.0, 2.0, 4.0], [2.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    logits = torch.tensor([[1.0, 0.5, 0.0]])  # f_0 - f_1 = 0.5 = 0.25 * 2, f_0 - f_2 = 1.0 = 0.25 * 4
    assert not certified_lp(logits, torch.tensor([0]), thresholds, 0.25)
    assert certified_lp(logits, torch.tensor([0]), thresholds, 0.2499)
    assert lp_certified_radius(logits, torch.tensor([0]), thresholds).item() == 0.25
    assert lp_certified_radius(logits, torch.tensor([1]), thresholds).item() == 0.0  # wrong class


def test_zero_threshold_gives_an_infinite_radius():
    logits, label = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert lp_certified_radius(logits, label, torch.zeros(2, 2)).item() == math.inf
    assert certified_lp(logits, label, torch.zeros(2, 2), 1e9)


@given(st.lists(st.lists(st.integers(-3, 3), min_size=4, max_size=4), min_size=1, max_size=30),
       st.lists(st.floats(0.125, 5.0, width=32), min_size=4, max_size=4), st.floats(0, 2, width=32), seeds)
@settings(max_examples=100)
def test_generic_global_linf_rule_is_the_demos_rule_bit_for_bit(rows, bounds, eps, seed):
    """Small integer logits force ties; the generic rule must agree with the original on every example."""
    logits = torch.tensor(rows, dtype=torch.float32) / 2
    labels = torch.randint(0, 4, (len(rows),), generator=torch.Generator().manual_seed(seed))
    logit_bounds = torch.tensor(bounds, dtype=torch.float32)
    logit_bounds_of = LogitBounds("linf", logit_bounds, torch.zeros(4, 4), logit_bounds.max())
    generic = certified_lp(logits, labels, lp_pair_thresholds(logit_bounds_of, "global"), eps)
    assert torch.equal(generic, certified_linf_global(logits, labels, logit_bounds, eps))


def test_evaluate_accepts_every_method_and_norm():
    torch.manual_seed(7)
    model = LipschitzMLP(MLPConfig(in_features=8, hidden=(4,), out_features=3, group_size=2))
    split = Split(torch.rand(50, 8), torch.randint(0, 3, (50,)))
    default = evaluate(model, split, 0.02, batch_size=7)
    assert evaluate(model, split, 0.02, batch_size=7, method="global", norm="linf") == default
    for norm in lipschitz.NORMS:
        results = {m: evaluate(model, split, 0.02, batch_size=7, method=m, norm=norm) for m in METHODS}
        masks = certify_split(model, split, 0.02, METHODS, norm, batch_size=11)
        for method, result in results.items():
            assert result.clean == default.clean
            assert result.certified == pytest.approx(100 * masks[method].double().mean().item())
        assert results["global"].certified <= results["pairwise"].certified <= results["margin"].certified
    with pytest.raises(ValueError, match="unknown method 'crown'"):
        evaluate(model, split, 0.02, method="crown")
