"""The certificate rule on hand-built logits, and attacks that try to break certified examples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify import certified_linf_global, evaluate, top2_margin
from mnist_data import Split
from models import LipschitzMLP, MLPConfig

UNIT_BOUNDS = torch.ones(3)


def certify_one(logits: list[float], label: int, eps: float, bounds: torch.Tensor = UNIT_BOUNDS) -> bool:
    return bool(certified_linf_global(torch.tensor([logits]), torch.tensor([label]), bounds, eps))


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


def test_margin_exactly_at_threshold_is_not_certified():
    # margin 1.0 == 0.25 * 2 * 2.0: the rule is strict
    bounds = torch.tensor([2.0, 1.0, 1.0])
    assert not certify_one([1.0, 0.0, -5.0], label=0, eps=0.25, bounds=bounds)
    assert certify_one([1.0, 0.0, -5.0], label=0, eps=0.2499, bounds=bounds)


def test_global_rule_uses_the_largest_bound_of_all_logits():
    # Logits 0 and 1 are 1-Lipschitz, but logit 2 has bound 5: threshold 0.1 * 2 * 5 = 1.0.
    bounds = torch.tensor([1.0, 1.0, 5.0])
    assert not certify_one([1.9, 1.0, -9.0], label=0, eps=0.1, bounds=bounds)
    assert certify_one([2.1, 1.0, -9.0], label=0, eps=0.1, bounds=bounds)


def test_top2_margin():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0]])
    assert torch.equal(top2_margin(logits), torch.tensor([1.0, 0.0]))


def test_evaluate_counts_clean_and_certified_percentages():
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=8, hidden=(4,), out_features=3, group_size=2))
    images = torch.rand(50, 8)
    logits = model(images).detach()
    labels = logits.argmax(dim=1)
    labels[:10] = (labels[:10] + 1) % 3  # ten wrong
    eps = 0.02
    expected = certified_linf_global(logits, labels, model.linf_logit_bounds().detach(), eps)
    result = evaluate(model, Split(images, labels), eps, batch_size=7)
    assert result.clean == pytest.approx(80.0)
    assert result.certified == pytest.approx(100.0 * expected.sum().item() / 50)
    assert "test certified on clean examples (%): " in result.lines()


def pgd_linf(model: LipschitzMLP, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, seed: int) -> torch.Tensor:
    """Maximise the best wrong logit minus the true one inside the L-inf ball (random start)."""
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


@given(st.integers(0, 2**31 - 1), st.sampled_from(["groupsort", "relu"]))
@settings(max_examples=25, deadline=None)
def test_no_attack_breaks_a_certified_example(seed, activation):
    """Pick each example's radius just inside its certificate, then attack it hard."""
    torch.manual_seed(seed)
    model = LipschitzMLP(MLPConfig(in_features=6, hidden=(8, 8), out_features=4,
                                   activation=activation, group_size=2, mean=0.0)).double()
    x = torch.rand(200, 6, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        y = logits.argmax(dim=1)
        bounds = model.linf_logit_bounds()
    eps = 0.999 * top2_margin(logits).median().item() / (2 * bounds.max().item())
    certified = certified_linf_global(logits, y, bounds, eps)
    assert certified.any()
    attacked = pgd_linf(model, x[certified], y[certified], eps, steps=40, seed=seed)
    with torch.no_grad():
        assert (model(attacked).argmax(dim=1) == y[certified]).all()
        # and every corner of the ball that the sign of a random direction points to
        corners = x[certified] + eps * torch.randn(x[certified].shape, dtype=x.dtype).sign()
        assert (model(corners).argmax(dim=1) == y[certified]).all()


def test_certificate_is_exact_where_the_bound_is_tight():
    """Two classes with W_1 = -W_0: the margin's L-inf constant is exactly 2 max_k L_k.

    So the attack must break every correct example that is not certified, and no
    certified one: a rule that certified too much (or too little) fails here.
    """
    torch.manual_seed(3)
    model = LipschitzMLP(MLPConfig(in_features=5, hidden=(), out_features=2, mean=0.0)).double()
    with torch.no_grad():
        model.layers[0].weight[1] = -model.layers[0].weight[0]
    x = torch.rand(400, 5, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        y = logits.argmax(dim=1)
        bounds = model.linf_logit_bounds()
    eps = top2_margin(logits).median().item() / (2 * bounds.max().item())
    certified = certified_linf_global(logits, y, bounds, eps)
    attacked = pgd_linf(model, x, y, eps, steps=10, seed=0)
    with torch.no_grad():
        survives = model(attacked).argmax(dim=1) == y
    assert 150 < certified.sum() < 250
    assert torch.equal(survives, certified)
