"""PGD stays in the ball and the domain, projects correctly, and finds the optimum of linear models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attacks
import lipschitz
from conftest import REL
from lipschitz import Ball
from mnist_data import PIXEL_RANGE
from nets import net_from_weights, norms, random_nets, seeds


@given(norms, st.integers(1, 12), st.floats(0.01, 3.0), seeds)
@settings(max_examples=80)
def test_projection_lands_in_the_ball_keeps_inside_points_and_is_nearest(norm, d, eps, seed):
    g = torch.Generator().manual_seed(seed)
    delta = 3 * torch.randn(32, d, generator=g, dtype=torch.float64)
    radius = torch.full((32, 1), eps, dtype=torch.float64)
    projected = attacks.lp_project(delta, radius, norm)
    assert (lipschitz.vector_norm(projected, norm) <= eps * (1 + REL)).all()
    assert torch.allclose(attacks.lp_project(projected, radius, norm), projected)
    # nearest point of a convex set: <delta - p, z - p> <= 0 for every z in the ball
    z = attacks.lp_project(attacks.lp_random_start(delta.shape, radius, norm, g), radius, norm)
    assert ((delta - projected) * (z - projected)).sum(dim=1).max() <= 1e-9


@given(norms, st.integers(1, 12), seeds)
@settings(max_examples=40)
def test_random_starts_lie_in_the_ball(norm, d, seed):
    radius = torch.full((50, 1), 0.3, dtype=torch.float64)
    start = attacks.lp_random_start(torch.Size((50, d)), radius, norm, torch.Generator().manual_seed(seed))
    assert (lipschitz.vector_norm(start, norm) <= 0.3 * (1 + REL)).all()


@given(random_nets(), norms, st.booleans(), seeds)
@settings(max_examples=30, deadline=None)
def test_every_point_pgd_reports_is_in_the_ball_the_domain_and_misclassified(model, norm, pixels, seed):
    domain = PIXEL_RANGE if pixels else None
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, model.config.in_features, generator=g, dtype=torch.float64)
    y = torch.randint(0, model.config.out_features, (40,), generator=g)
    eps = torch.rand(40, generator=g, dtype=torch.float64)
    broken, found = attacks.pgd(model, x, y, Ball(norm, eps, domain), steps=10, restarts=2, seed=seed)
    assert (lipschitz.vector_norm(found - x, norm) <= eps * (1 + 1e-6) + 1e-12).all()
    if domain is not None:
        assert ((found >= 0) & (found <= 1)).all()
    with torch.no_grad():
        loss = attacks.attack_loss(model(found), y)
    assert torch.equal(loss >= 0, broken)
    with torch.no_grad():
        assert not (model(x).argmax(dim=1) != y)[~broken].any()  # misclassified inputs are broken at once


@pytest.mark.parametrize("norm", lipschitz.NORMS)
def test_pgd_reaches_the_best_point_of_a_linear_model(norm):
    """f_0 - f_1 = v . x + c: its least value over the ball is v . x + c - eps ||v||_q."""
    weight = torch.randn(2, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    model = net_from_weights([weight], [[5.0, 0.0]])  # class 0 everywhere near the inputs
    v = weight[0] - weight[1]
    x = torch.rand(20, 6, dtype=torch.float64)
    eps = 0.5
    _, found = attacks.pgd(model, x, torch.zeros(20, dtype=torch.long), Ball(norm, eps), steps=20, restarts=1,
                           relative_step=0.25)
    with torch.no_grad():
        reached = model(found)[:, 0] - model(found)[:, 1]
        best = model(x)[:, 0] - model(x)[:, 1] - eps * lipschitz.dual_norm(v, norm)
    assert torch.allclose(reached, best, atol=1e-9)


@given(random_nets(), norms, seeds)
@settings(max_examples=10, deadline=None)
def test_batching_does_not_change_what_pgd_finds(model, norm, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(30, model.config.in_features, generator=g, dtype=torch.float64)
    y = torch.randint(0, model.config.out_features, (30,), generator=g)
    ball = Ball(norm, 0.3, PIXEL_RANGE)
    whole = attacks.pgd(model, x, y, ball, steps=5, restarts=1, seed=seed)
    batched = attacks.pgd(model, x, y, ball, steps=5, restarts=1, seed=seed, batch_size=7)
    assert torch.equal(whole[0], batched[0]) and torch.allclose(whole[1], batched[1])


def test_attack_loss_is_the_best_other_logit_minus_the_label():
    logits = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 0.0]])
    assert torch.equal(attacks.attack_loss(logits, torch.tensor([1, 0])), torch.tensor([-1.0, 0.0]))
