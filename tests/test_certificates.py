"""Every certificate method in every norm is sound, tight where it should be, and ordered as claimed; the demo's
rule on hand-built logits, and bit for bit; clean and certified accuracy on a split."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import attacks
import ibp
import lipschitz
import certificates
from certificates import (
    LIPSCHITZ_METHODS,
    METHODS,
    Accuracy,
    certified,
    certified_radius,
    floor_significant,
    domain_diameter,
    gaps,
    percent,
    thresholds,
    top2_margin,
)
from errors import ConfigError
from lipschitz import Ball, LogitBounds
from mnist_data import PIXEL_RANGE, Split
from measure import certified_radii, certify_split, evaluate, ibp_certified, ibp_radius
from models import LipschitzMLP, MLPConfig
from nets import ball_vertices, net_from_weights, norms, random_directions, random_nets, seeds

IBP_UPPER = 10.0  # bisection ceiling for the whole-ball IBP radius of the small random nets


def radii(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, method: str, norm: str,
          domain: tuple[float, float] | None = None) -> torch.Tensor:
    with torch.no_grad():
        if method == "ibp":
            return ibp_radius(model, x, y, Ball(norm, IBP_UPPER, domain), runs_in=torch.float64)
        return certified_radius(model(x), y, thresholds(model.logit_bounds(norm), method))


def certifies(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, eps, method: str, norm: str,
              domain: tuple[float, float] | None = None) -> torch.Tensor:
    with torch.no_grad():
        if method == "ibp":
            return ibp_certified(model, x, y, Ball(norm, eps, domain), runs_in=torch.float64)
        return certified(model(x), y, thresholds(model.logit_bounds(norm), method), eps)


def assert_nothing_breaks(model, x, y, eps, norm, domain, seed):
    """A strong PGD, then random points on the sphere (and every L1 vertex), all within `domain`."""
    assert not breaks(model, x, y, eps, norm, domain, seed, steps=30, restarts=3, points=64).any()


@given(random_nets(convs=True), norms, st.sampled_from(METHODS), st.booleans(), seeds)
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
    assume(keep.any())  # a net that certifies nothing has nothing to attack: hypothesis draws another
    eps = 0.999 * radius[keep].clamp(max=IBP_UPPER)
    assert certifies(model, x[keep], y[keep], eps, method, norm, domain).all()
    assert_nothing_breaks(model, x[keep], y[keep], eps, norm, domain, seed)


def sign_attack(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                seed: int) -> torch.Tensor:
    """An L-inf attack independent of attacks.py: from a random start, step 0.25 eps along the sign of the
    gradient of the best wrong logit minus the true one, clamped to the ball."""
    g = torch.Generator().manual_seed(seed)
    delta = (2 * torch.rand(x.shape, generator=g, dtype=x.dtype) - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        true = logits.gather(1, y[:, None])[:, 0]
        wrong = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        (grad,) = torch.autograd.grad((wrong - true).sum(), delta)
        delta = (delta.detach() + 0.25 * eps * grad.sign()).clamp(-eps, eps)
    return x + delta.detach()


@given(seeds, st.sampled_from(["groupsort", "relu"]))
@settings(max_examples=25, deadline=None)
def test_an_independent_sign_attack_breaks_no_example_the_demos_rule_certifies(seed, activation):
    """Deeper nets at their initialisation: each example's radius just inside the global L-inf certificate,
    then attacked hard, and at random corners of the ball."""
    torch.manual_seed(seed)
    model = LipschitzMLP(MLPConfig(in_features=6, hidden=(8, 8), out_features=4,
                                   activation=activation, group_size=2, mean=0.0)).double()
    x = torch.rand(200, 6, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        y = logits.argmax(dim=1)
        bounds = model.logit_bounds("linf")
    eps = 0.999 * top2_margin(logits).median().item() / (2 * bounds.per_logit.max().item())
    certificate = certified(logits, y, thresholds(bounds, "global"), eps)
    assert certificate.any()
    attacked = sign_attack(model, x[certificate], y[certificate], eps, steps=40, seed=seed)
    with torch.no_grad():
        assert (model(attacked).argmax(dim=1) == y[certificate]).all()
        corners = x[certificate] + eps * torch.randn(x[certificate].shape, dtype=x.dtype).sign()
        assert (model(corners).argmax(dim=1) == y[certificate]).all()


def two_class_linear_net(in_features: int = 5, mean: float = 0.5) -> LipschitzMLP:
    """f_1 = -f_0 = -w . (x - mean): every bound of f_0 - f_1 is exact, in every norm; with mean 1/2 the
    boundary crosses [0, 1]^d."""
    w = torch.randn(in_features, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return net_from_weights([torch.stack([w, -w])], mean=mean)


def abs_threshold_net(in_features: int = 5) -> LipschitzMLP:
    """MaxMin net with f_0 = |w . (x - 1/2)| - 0.4, f_1 = 0: pairwise, margin and ibp are exact through GroupSort."""
    w = torch.randn(in_features, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return net_from_weights([torch.stack([w, -w]), [[0.0, 1.0], [0.0, 0.0]]], [None, [-0.4, 0.0]],
                            group_size=2, mean=0.5)


def relu_threshold_net(in_features: int = 5) -> LipschitzMLP:
    """ReLU net with f_0 = relu(w . (x - 1/2) + ||w||_1) - ||w||_1, f_1 = 0: the unit stays on over the cube,
    so pairwise, margin and ibp are exact through the ReLU."""
    w = torch.randn(in_features, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    reach = w.abs().sum().item()
    return net_from_weights([w[None], [[1.0], [0.0]]], [reach, [-reach, 0.0]], activation="relu", mean=0.5)


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
    certificate = certifies(model, x, y, eps, method, norm, domain)
    broken, _ = attacks.pgd(model, x, y, Ball(norm, eps, domain), steps=10, restarts=1, relative_step=0.25)
    assert 120 < certificate.sum() < 280
    assert torch.equal(~broken, certificate)


def test_demos_rule_is_exact_against_an_independent_attack_on_a_two_class_linear_net():
    """W_1 = -W_0: the gap's L-inf constant is exactly 2 max_k L_k, so the independent sign attack breaks
    every correct example the global rule does not certify, and no certified one."""
    model = two_class_linear_net(mean=0.0)
    x = torch.rand(400, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        y = logits.argmax(dim=1)
        bounds = model.logit_bounds("linf")
    ordered = top2_margin(logits).sort().values / (2 * bounds.per_logit.max().item())
    eps = (ordered[199] + ordered[200]).item() / 2  # between two examples' radii: none sits on the boundary
    certificate = certified(logits, y, thresholds(bounds, "global"), eps)
    attacked = sign_attack(model, x, y, eps, steps=10, seed=0)
    with torch.no_grad():
        survives = model(attacked).argmax(dim=1) == y
    assert 150 < certificate.sum() < 250
    assert torch.equal(survives, certificate)


@given(random_nets(), norms, seeds)
@settings(max_examples=40, deadline=None)
def test_margin_certifies_all_that_pairwise_does_and_pairwise_all_that_global_does(model, norm, seed):
    bounds = model.logit_bounds(norm)
    limits = [thresholds(bounds, m) for m in LIPSCHITZ_METHODS]
    assert (limits[2] <= limits[1]).all() and (limits[1] <= limits[0]).all()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, model.config.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = torch.where(torch.rand(64, generator=g) < 0.2, torch.randint(0, logits.shape[1], (64,), generator=g),
                    logits.argmax(dim=1))
    r = [certified_radius(logits, y, t) for t in limits]
    assert (r[0] <= r[1]).all() and (r[1] <= r[2]).all()
    for eps in (0.0, *(0.5 * r[1][r[1] > 0]).tolist()[:4], 0.05):
        masks = [certified(logits, y, t, eps) for t in limits]
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
        now = certifies(model, x, y, eps, method, norm, domain)
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
    assert certifies(model, x[inside], y[inside], below[inside], method, norm).all()
    assert not certifies(model, x[inside], y[inside], above[inside], method, norm).any()
    assert not certifies(model, x[r == 0], y[r == 0], 1e-12, method, norm).any()


@given(random_nets(), norms, st.sampled_from(METHODS), seeds)
@settings(max_examples=30, deadline=None)
def test_zero_radius_certifies_exactly_the_strictly_correct_examples(model, norm, method, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, model.config.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = torch.randint(0, logits.shape[1], (40,), generator=g)
    y[:20] = logits[:20].argmax(dim=1)
    strictly = attacks.attack_loss(logits, y) < 0
    assert torch.equal(certifies(model, x, y, 0.0, method, norm, PIXEL_RANGE), strictly)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_a_tie_is_never_certified(method, norm):
    """Two identical output rows: logits 0 and 1 tie everywhere, so neither label can be certified."""
    g = torch.Generator().manual_seed(6)
    last = torch.randn(3, 4, generator=g, dtype=torch.float64)
    last[1] = last[0]
    model = net_from_weights([torch.randn(4, 4, generator=g), last], [torch.randn(4, generator=g), [50.0, 50.0, 0.0]],
                             group_size=2, mean=0.1307)
    x = torch.rand(20, 4, dtype=torch.float64)
    for label in (0, 1):
        y = torch.full((20,), label)
        assert not certifies(model, x, y, 0.0, method, norm).any()
        assert (radii(model, x, y, method, norm) == 0).all()


def test_gap_exactly_at_the_threshold_is_not_certified():
    limits = torch.tensor([[0.0, 2.0, 4.0], [2.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    logits = torch.tensor([[1.0, 0.5, 0.0]])  # f_0 - f_1 = 0.5 = 0.25 * 2, f_0 - f_2 = 1.0 = 0.25 * 4
    assert not certified(logits, torch.tensor([0]), limits, 0.25)
    assert certified(logits, torch.tensor([0]), limits, 0.2499)
    assert certified_radius(logits, torch.tensor([0]), limits).item() == 0.25
    assert certified_radius(logits, torch.tensor([1]), limits).item() == 0.0  # wrong class


@pytest.mark.parametrize("norm", lipschitz.NORMS)
@pytest.mark.parametrize("hidden", [False, True], ids=["linear", "relu"])
def test_ibp_lower_bound_exactly_zero_is_not_certified(norm, hidden):
    """f_0 = x (or relu(x)), f_1 = 0 at x = 0.5: over the ball of radius 0.5 IBP's lower bound of f_0 - f_1 is
    exactly 0, attained at x' = 0 where the logits tie. IBP is strict, like the Lipschitz rules."""
    weights = [[[1.0]], [[1.0], [0.0]]] if hidden else [[[1.0], [0.0]]]
    model = net_from_weights(weights, activation="relu")
    x, y = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([0])
    with torch.no_grad():
        assert ibp.gap_lower_bounds(model, x, Ball(norm, 0.5))[0, 0, 1].item() == 0.0
        assert torch.equal(model(torch.zeros(1, 1, dtype=torch.float64))[0], torch.zeros(2, dtype=torch.float64))
        assert not ibp_certified(model, x, y, Ball(norm, 0.5), torch.float64).any()
        assert ibp_certified(model, x, y, Ball(norm, 0.4999), torch.float64).all()
        assert 0.49 < ibp_radius(model, x, y, Ball(norm, 1.0), torch.float64).item() < 0.5


def test_zero_threshold_gives_an_infinite_radius():
    logits, label = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert certified_radius(logits, label, torch.zeros(2, 2)).item() == math.inf
    assert certified(logits, label, torch.zeros(2, 2), 1e9)


def test_gaps_are_label_minus_each_logit_and_mask_the_label():
    label_gaps, others = gaps(torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]]), torch.tensor([1, 2]))
    assert torch.equal(label_gaps, torch.tensor([[2.0, 0.0, 1.0], [4.0, 5.0, 0.0]]))
    assert torch.equal(others, torch.tensor([[True, False, True], [True, True, False]]))


def test_top2_margin():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0]])
    assert torch.equal(top2_margin(logits), torch.tensor([1.0, 0.0]))


# The global rule is the demo's: correct, and top-2 margin > eps * 2 max_k L_k.

def linf_bounds(logit_bounds: torch.Tensor) -> LogitBounds:
    """L-inf bounds with the given L_k (the output bound in L-inf is max_k L_k; the difference bounds unused)."""
    count = len(logit_bounds)
    return LogitBounds("linf", logit_bounds, torch.zeros(count, count), logit_bounds.max())


def demo_rule(logits: torch.Tensor, labels: torch.Tensor, logit_bounds: torch.Tensor, eps: float) -> torch.Tensor:
    """The original demo's certificate, written out."""
    return (logits.argmax(dim=1) == labels) & (top2_margin(logits) > eps * 2 * logit_bounds.max())


def certify_one(logits: list[float], label: int, eps: float, bounds: list[float] = (1.0, 1.0, 1.0)) -> bool:
    limits = thresholds(linf_bounds(torch.tensor(bounds)), "global")
    return bool(certified(torch.tensor([logits]), torch.tensor([label]), limits, eps))


@given(st.lists(st.lists(st.integers(-3, 3), min_size=4, max_size=4), min_size=1, max_size=30),
       st.lists(st.floats(0.125, 5.0, width=32), min_size=4, max_size=4), st.floats(0, 2, width=32), seeds)
@settings(max_examples=100)
def test_global_linf_rule_is_the_demos_rule_bit_for_bit(rows, bounds, eps, seed):
    """Small integer logits force ties; the generic rule must agree with the original on every example."""
    logits = torch.tensor(rows, dtype=torch.float32) / 2
    labels = torch.randint(0, 4, (len(rows),), generator=torch.Generator().manual_seed(seed))
    logit_bounds = torch.tensor(bounds, dtype=torch.float32)
    generic = certified(logits, labels, thresholds(linf_bounds(logit_bounds), "global"), eps)
    assert torch.equal(generic, demo_rule(logits, labels, logit_bounds, eps))


def test_global_threshold_is_twice_the_largest_logit_bound():
    limits = thresholds(linf_bounds(torch.tensor([1.0, 3.5, 2.0])), "global")
    assert torch.equal(limits, torch.full((3, 3), 7.0))
    # beyond L-inf, the output bound can be the smaller: ||e_i - e_j||_q B_out
    l2 = LogitBounds("l2", torch.tensor([1.0, 3.5, 2.0]), torch.zeros(3, 3), torch.tensor(2.0))
    assert torch.allclose(thresholds(l2, "global"), torch.full((3, 3), 2.0 * math.sqrt(2.0)))
    with pytest.raises(ConfigError, match="unknown Lipschitz method 'ibp'"):
        thresholds(l2, "ibp")


def test_correct_with_margin_above_threshold_is_certified():
    # margin 2.5 - 1.0 = 1.5 > 0.5 * 2 * 1
    assert certify_one([2.5, 1.0, 0.0], label=0, eps=0.5)


def test_wrong_class_is_never_certified_however_large_the_margin():
    assert not certify_one([9.0, 1.0, 0.0], label=1, eps=0.0)
    assert not certify_one([9.0, 1.0, 0.0], label=2, eps=0.1)


def test_tie_is_not_certified_even_at_zero_radius():
    for label in (0, 1):
        assert not certify_one([2.0, 2.0, 0.0], label=label, eps=0.0)


def test_zero_radius_certifies_every_strictly_correct_example():
    assert certify_one([0.001, 0.0, -1.0], label=0, eps=0.0)


def test_demos_margin_exactly_at_threshold_is_not_certified():
    # margin 1.0 == 0.25 * 2 * 2.0: the rule is strict
    bounds = [2.0, 1.0, 1.0]
    assert not certify_one([1.0, 0.0, -5.0], label=0, eps=0.25, bounds=bounds)
    assert certify_one([1.0, 0.0, -5.0], label=0, eps=0.2499, bounds=bounds)


def test_global_rule_uses_the_largest_bound_of_all_logits():
    # Logits 0 and 1 are 1-Lipschitz, but logit 2 has bound 5: threshold 0.1 * 2 * 5 = 1.0.
    bounds = [1.0, 1.0, 5.0]
    assert not certify_one([1.9, 1.0, -9.0], label=0, eps=0.1, bounds=bounds)
    assert certify_one([2.1, 1.0, -9.0], label=0, eps=0.1, bounds=bounds)


# Accuracy on a split.

def test_evaluate_counts_clean_and_certified_percentages():
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=8, hidden=(4,), out_features=3, group_size=2))
    images = torch.rand(50, 8)
    logits = model(images).detach()
    labels = logits.argmax(dim=1)
    labels[:10] = (labels[:10] + 1) % 3  # ten wrong
    eps = 0.02
    expected = demo_rule(logits, labels, model.logit_bounds("linf").per_logit.detach(), eps)
    result = evaluate(model, Split(images, labels), Ball("linf", eps, PIXEL_RANGE))
    assert result.clean == pytest.approx(80.0)
    assert result.certified == pytest.approx(100.0 * expected.sum().item() / 50)
    assert "test certified on clean examples (%): " in result.lines()


def pieces(split: Split, size: int) -> list[Split]:
    return [Split(x, y) for x, y in split.batches(size)]


def plain_certified(model: LipschitzMLP, split: Split, method: str, ball: Ball) -> torch.Tensor:
    """Each method's rule in exact arithmetic, computed here in float64 without any rounding allowance: the
    demo's inequality on the logits with the plain bounds, or IBP's plain gap bounds above 0."""
    model64 = copy.deepcopy(model).double()
    x = split.images.double()
    with torch.no_grad():
        if method == "ibp":
            lower = ibp.gap_lower_bounds(model64, x, ball)
            rows = lower[torch.arange(len(x)), split.labels]
            return ((rows > 0) | (torch.arange(rows.shape[1]) == split.labels[:, None])).all(dim=1)
        threshold = thresholds(model64.logit_bounds(ball.norm), method)
        return certified(model64(x), split.labels, threshold, ball.eps)


def test_evaluate_counts_what_each_rule_certifies_up_to_its_small_allowance():
    """Every method in every norm: evaluate's certified share lies between what the rule certifies in exact
    arithmetic at a radius 1 % larger and at the radius itself (the rounding allowance, some 1e-6 of a gap
    here, moves no example by more); its clean share is the float32 argmax's; the methods are ordered."""
    torch.manual_seed(7)
    model = LipschitzMLP(MLPConfig(in_features=8, hidden=(4,), out_features=3, group_size=2))
    images = torch.rand(300, 8)
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    labels[:30] = (labels[:30] + 1) % 3  # thirty wrong
    split = Split(images, labels)
    for norm, eps in (("linf", 0.2), ("l2", 0.7), ("l1", 1.0)):
        ball = Ball(norm, eps, PIXEL_RANGE)
        results = {m: evaluate(model, split, ball, method=m) for m in METHODS}
        for method, result in results.items():
            assert result.clean == pytest.approx(90.0)
            larger = percent(plain_certified(model, split, method, ball.with_eps(eps * 1.01)))
            assert larger <= result.certified <= percent(plain_certified(model, split, method, ball))
            assert 0 < result.certified < 90.0, (norm, method)  # the radius separates the examples
        assert results["global"].certified <= results["pairwise"].certified <= results["margin"].certified
    with pytest.raises(ConfigError, match="unknown method 'crown'"):
        evaluate(model, split, Ball("linf", 0.02), method="crown")


def test_percent_and_accuracy_lines():
    assert percent(torch.tensor([True, False, True, True])) == 75.0
    assert percent(torch.zeros(0, dtype=torch.bool)) == 0.0
    lines = Accuracy(98.7654, 12.5).lines().splitlines()
    assert lines == ["test acc on clean examples (%): 98.765", "test certified on clean examples (%): 12.500"]


def test_domain_diameter_is_the_pixel_boxs_diameter_in_each_norm():
    assert [domain_diameter(784, norm) for norm in lipschitz.NORMS] == [1.0, pytest.approx(28.0), 784.0]


# Sound in floating point: the float32 network as it runs.

@st.composite
def float32_nets(draw) -> LipschitzMLP:
    """`random_nets` in float32, sometimes with large output biases (a constant added to all of them changes
    no gap in exact arithmetic, but the float32 logits round coarsely) or large first-layer weights."""
    model = draw(random_nets()).float()
    shift, scale = draw(st.sampled_from([0.0, 1e3, 1e6])), draw(st.sampled_from([1.0, 1e3]))
    with torch.no_grad():
        model.layers[-1].bias.add_(shift)
        model.layers[0].weight.mul_(scale)
    return model


def breaks(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str,
           domain: tuple[float, float] | None, seed: int, steps: int = 20, restarts: int = 2,
           points: int = 32) -> torch.Tensor:
    """Per example: some input of x's precision in the ball (PGD's, `points` random points on the sphere, the
    L1 vertices) where the network, evaluated alone or in a batch, ranks another class level with y or above."""
    broken, _ = attacks.pgd(model, x, y, Ball(norm, eps, domain), steps=steps, restarts=restarts, seed=seed)
    g = torch.Generator().manual_seed(seed)
    n, d = x.shape
    x64, eps64 = x.double(), eps.double()
    around = x64[:, None] + eps64[:, None, None] * random_directions(n * points, d, norm, g).view(n, points, d)
    around = torch.cat([around, ball_vertices(x64, eps64, norm), x64[:, None]], dim=1)
    if domain is not None:
        around = around.clamp(*domain)
    around = around.to(x.dtype).double()  # the inputs the network takes; rounding may step outside the ball
    inside = lipschitz.vector_norm(around - x64[:, None], norm) <= eps64[:, None]
    around = torch.where(inside[..., None], around, x64[:, None]).to(x.dtype)
    count = around.shape[1]
    with torch.no_grad():
        batched = attacks.attack_loss(model(around.flatten(0, 1)), y.repeat_interleave(count)).view(n, count)
        alone = torch.stack([attacks.attack_loss(model(around[:, k]), y) for k in range(count)], dim=1)
    return broken | (batched >= 0).any(dim=1) | (alone >= 0).any(dim=1)


@given(float32_nets(), norms, seeds)
@settings(max_examples=40, deadline=None)
def test_float32_certificates_hold_for_the_float32_network_at_their_own_radius(model, norm, seed):
    """Every method's certified radius certifies when fed back as eps, and no input the attack reaches in
    that ball changes the float32 prediction."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, model.config.in_features, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    split = Split(x, y)
    radii = certified_radii(model, split, METHODS, norm, PIXEL_RANGE)
    for method in METHODS:
        domain = PIXEL_RANGE if method == "ibp" else None  # Lipschitz balls are certified whole
        radius = radii[method]
        assert torch.equal(radius, floor_significant(radius))
        assert certify_split(model, split, Ball(norm, radius, domain), (method,))[method][radius > 0].all()
        keep = radius > 0
        if keep.any():
            assert not breaks(model, x[keep], y[keep], radius[keep], norm, domain, seed).any()


def test_a_large_output_bias_breaks_the_exact_arithmetic_rule_but_not_the_certificate():
    """1e6 added to every output bias changes nothing in exact arithmetic. The margin rule checked on the
    float32 logits still certifies nearly every example, and float32 rounding breaks some of them; the sound
    certificate gives them up. Without the shift it certifies nearly all that the plain rule does."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=20, hidden=(40,), out_features=5, group_size=2, mean=0.0))
    x, eps = torch.rand(400, 20), 0.01
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    split = Split(x, y)

    def plain_rule() -> torch.Tensor:
        with torch.no_grad():
            return certified(model(x), y, thresholds(model.logit_bounds("linf"), "margin"), eps)

    plain, sound = plain_rule(), certify_split(model, split, Ball("linf", eps), ("margin",))["margin"]
    assert plain.sum() > 300 and sound.sum() >= plain.sum() - 4
    with torch.no_grad():
        model.layers[-1].bias.add_(1e6)
    naive, broken = plain_rule(), breaks(model, x, y, torch.full((400,), eps), "linf", None, seed=0)
    assert naive.sum() > 300 and (naive & broken).any()
    assert not (certify_split(model, split, Ball("linf", eps), ("margin",))["margin"] & broken).any()


@given(float32_nets(), norms, st.sampled_from(METHODS), seeds)
@settings(max_examples=20, deadline=None)
def test_the_certified_set_does_not_depend_on_the_batch(model, norm, method, seed):
    """At each example's own radius, where the decision is closest: the split whole, in pieces of 7, one
    by one, or its head alone (--limit) certify the same examples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(30, model.config.in_features, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    split = Split(x, y)
    ball = Ball(norm, certified_radii(model, split, (method,), norm, PIXEL_RANGE)[method],
                PIXEL_RANGE if method == "ibp" else None)
    whole = certify_split(model, split, ball, (method,))[method]
    for size in (1, 7):
        parts = [certify_split(model, Split(x[i:i + size], y[i:i + size]), ball.with_eps(ball.eps[i:i + size]),
                               (method,))[method] for i in range(0, 30, size)]
        assert torch.equal(torch.cat(parts), whole)


def test_radii_are_rounded_down_to_six_significant_digits():
    values = torch.tensor([0.123456789, 1.0, 0.0, 2.5e-7, 0.9999999999, 123456.7], dtype=torch.float64)
    floored = floor_significant(values)
    assert floored.tolist() == [0.123456, 1.0, 0.0, 2.5e-7, 0.999999, 123456.0]
    assert all(float(f"{v:.6g}") == v for v in floored.tolist())
    assert (floored <= values).all()


def test_a_certified_gap_lower_bound_of_exactly_zero_certifies_nothing():
    """The rule is strict: a lower bound of 0 (after the allowance) allows a tie, which is not a certificate;
    the label's own entry is never looked at."""
    lower = torch.tensor([[[-5.0, 0.0, 1.0], [0, 0, 0], [0, 0, 0]],
                          [[-5.0, 1e-30, 1.0], [0, 0, 0], [0, 0, 0]]])
    labels = torch.tensor([0, 0])
    assert certificates.gaps_certified(lower, labels).tolist() == [False, True]
