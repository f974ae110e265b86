"""Certificate-aware objectives and the radius schedule: what each batch loss is, and that it trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ibp
from certificates import thresholds
from errors import ConfigError
from lipschitz import Ball, soft_max_penalty
from mnist_data import PIXEL_RANGE
from models import LipschitzMLP, MLPConfig
from nets import seeds
from objectives import LOSSES, BatchLoss, Objective, Schedule, batch_loss, ramp_share, worst_case_logits


def small_model(seed: int = 0) -> LipschitzMLP:
    torch.manual_seed(seed)
    return LipschitzMLP(MLPConfig(in_features=12, hidden=(8, 8), out_features=4, group_size=2)).double()


def test_schedule_ramps_the_radius_and_the_clean_weight():
    assert Schedule.at(0.0, 0.2, ramp=4) == Schedule(0.0, 1.0)
    assert Schedule.at(2.0, 0.2, ramp=4) == Schedule(pytest.approx(0.1), 0.75)
    assert Schedule.at(9.0, 0.2, ramp=4) == Schedule(0.2, 0.5)
    assert Schedule.at(0.0, 0.2, ramp=0) == Schedule(0.2, 0.5)


def test_warmup_holds_the_radius_at_zero_then_the_ramp_starts_and_ends_at_the_final_clean_weight():
    assert Schedule.at(1.5, 0.2, ramp=4, warmup=2) == Schedule(0.0, 1.0)
    assert Schedule.at(4.0, 0.2, ramp=4, warmup=2) == Schedule(pytest.approx(0.1), 0.75)
    assert Schedule.at(6.0, 0.2, ramp=4, warmup=2, final_clean=0.0) == Schedule(0.2, 0.0)
    assert Schedule.at(1.0, 0.2, ramp=0, warmup=2) == Schedule(0.0, 1.0)
    assert Schedule.at(2.0, 0.2, ramp=0, warmup=2) == Schedule(0.2, 0.5)


def test_the_smooth_ramp_rises_from_0_to_1_slower_than_the_line_and_without_a_jump():
    fractions = torch.linspace(0, 1, 1001).tolist()
    shares = [ramp_share(f, "smooth") for f in fractions]
    assert shares[0] == 0.0 and shares[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(shares, shares[1:]))
    assert all(s <= f + 1e-12 for s, f in zip(shares, fractions))
    assert max(b - a for a, b in zip(shares, shares[1:])) < 2e-3  # slope at most 4/3 (Lipschitz, no jump)
    assert ramp_share(0.5, "linear") == 0.5 and ramp_share(1.5, "smooth") == 1.0


@given(seeds, st.floats(0.0, 0.3))
@settings(max_examples=40, deadline=None)
def test_ibp_worst_case_cross_entropy_is_at_least_the_clean_one(seed, eps):
    """IBP's worst-case logits sit above the true ones (relative to f_y), and CE is shift-invariant."""
    model = small_model(seed)
    x = torch.rand(16, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        worst = worst_case_logits(ibp.gap_lower_bounds(model, x, Ball("linf", eps, PIXEL_RANGE)), y)
        clean = F.cross_entropy(model(x), y, reduction="none")
    assert (F.cross_entropy(worst, y, reduction="none") >= clean - 1e-9).all()
    assert (worst.gather(1, y[:, None]) == 0).all()


def test_ibp_worst_case_at_zero_radius_is_the_clean_logits_shifted():
    model = small_model()
    x = torch.rand(8, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    with torch.no_grad():
        logits = model(x)
        worst = worst_case_logits(ibp.gap_lower_bounds(model, x, Ball("linf", 0.0)), y)
    assert torch.allclose(worst, logits - logits.gather(1, y[:, None]), atol=1e-9)


def test_lmt_at_zero_radius_is_plain_cross_entropy_and_grows_with_the_radius():
    model = small_model()
    x, y = torch.rand(32, 12, dtype=torch.float64), torch.randint(0, 4, (32,))
    lmt = Objective("lmt", "linf", 0.0, 1.0)
    plain, clean, _, _ = batch_loss(model, x, y, lmt, Schedule(0.0, 0.5))
    assert torch.allclose(plain, clean)
    larger = [batch_loss(model, x, y, lmt, Schedule(eps, 0.5)).loss for eps in (0.05, 0.1)]
    assert plain < larger[0] < larger[1]


def test_hinge_is_zero_exactly_when_every_certified_margin_reaches_the_target():
    model = small_model()
    x = torch.rand(32, 12, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
        # at a tiny target the certified margins at eps = 0 (the logit gaps) all clear it
        gaps = model(x).topk(2, dim=1).values
    target = float((gaps[:, 0] - gaps[:, 1]).min()) / 2
    loss = batch_loss(model, x, y, Objective("hinge", "linf", 0.0, target), Schedule(0.0, 0.5)).loss
    assert loss == 0
    loss = batch_loss(model, x, y, Objective("hinge", "linf", 0.0, 10 * target + 1), Schedule(0.0, 0.5)).loss
    assert loss > 0


@pytest.mark.parametrize("loss", LOSSES)
def test_every_objective_trains_the_weights(loss):
    model = small_model()
    x, y = torch.rand(32, 12, dtype=torch.float64), torch.randint(0, 4, (32,))
    value = batch_loss(model, x, y, Objective(loss, "linf", 0.01, 1.0), Schedule(0.05, 0.5)).loss
    value.backward()
    assert all(layer.weight.grad.abs().sum() > 0 for layer in model.affine_layers())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_batch_loss_reports_clean_loss_logits_and_the_penalty_bounds_global_threshold(norm):
    """ce: cross-entropy + lc_penalty * soft max of the penalty's bounds; the threshold is the global rule's,
    from the same (estimated in l2) bounds, and carries no gradient."""
    model = small_model()
    x, y = torch.rand(32, 12, dtype=torch.float64), torch.randint(0, 4, (32,))
    result = batch_loss(model, x, y, Objective("ce", norm, 0.5, 1.0), Schedule(0.1, 0.5))
    assert isinstance(result, BatchLoss)
    bounds = model.logit_bounds(norm, estimate=True)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(result.logits, logits)
    assert torch.allclose(result.class_loss, F.cross_entropy(logits, y))
    assert torch.allclose(result.loss, result.class_loss + 0.5 * soft_max_penalty(bounds.per_logit))
    assert torch.equal(result.threshold, thresholds(bounds, "global")[0, 0])
    assert not result.threshold.requires_grad
    if norm == "linf":
        assert torch.equal(result.threshold, 2 * bounds.per_logit.max())


def test_an_unknown_loss_is_refused():
    model = small_model()
    x, y = torch.rand(4, 12, dtype=torch.float64), torch.randint(0, 4, (4,))
    with pytest.raises(ConfigError, match="unknown loss 'xent'"):
        batch_loss(model, x, y, Objective("xent", "linf", 0.0, 1.0), Schedule(0.1, 0.5))
