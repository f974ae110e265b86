"""Certificate-aware objectives, the radius schedule, and the L1-ball projection behind --constraint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lipschitz
import train_mnist
from mnist_data import Split
from models import LipschitzMLP, MLPConfig
from objectives import Schedule, batch_loss, worst_case_logits


def small_model(seed: int = 0) -> LipschitzMLP:
    torch.manual_seed(seed)
    return LipschitzMLP(MLPConfig(in_features=12, hidden=(8, 8), out_features=4, group_size=2)).double()


def sorted_projection(row: torch.Tensor, radius: float) -> torch.Tensor:
    """The textbook projection onto the L1 ball (Duchi et al. 2008), by sorting: the reference."""
    if row.abs().sum() <= radius:
        return row
    u = row.abs().sort(descending=True).values
    excess = u.cumsum(0) - radius
    count = int(((u - excess / torch.arange(1, len(row) + 1, dtype=row.dtype)) > 0).nonzero().max()) + 1
    return row.sign() * (row.abs() - excess[count - 1] / count).clamp(min=0)


@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 30)),
              elements=st.floats(-5, 5, allow_nan=False)),
       st.floats(0.01, 10))
@settings(max_examples=200)
def test_projection_matches_the_sorting_algorithm_and_lands_in_the_ball(matrix, radius):
    weight = torch.from_numpy(matrix.copy())
    expected = torch.stack([sorted_projection(row, radius) for row in weight])
    lipschitz.project_rows_l1_ball_(weight, radius)
    assert (weight.abs().sum(dim=1) <= radius).all()
    assert torch.allclose(weight, expected, atol=1e-9 * max(1.0, radius))


def test_projection_leaves_rows_inside_the_ball_alone():
    weight = torch.tensor([[0.2, -0.3, 0.1], [3.0, -1.0, 0.0]])
    lipschitz.project_rows_l1_ball_(weight, 1.0)
    assert torch.equal(weight[0], torch.tensor([0.2, -0.3, 0.1]))
    assert torch.allclose(weight[1], torch.tensor([1.0, 0.0, 0.0]))


def test_constrained_training_keeps_every_layer_within_the_radius():
    args = train_mnist.parse_args(["--constraint", "linf-proj", "--constraint-radius", "0.5", "--lc_penalty", "0",
                                   "--lr", "0.05", "--batch-size", "16"])
    model = small_model().float()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    torch.manual_seed(1)
    split = Split(torch.rand(64, 12), torch.randint(0, 4, (64,)))
    train_mnist.train_epoch(model, optimizer, split, args, torch.Generator().manual_seed(0))
    for layer in model.linear_layers():
        assert lipschitz.lp_operator_norm(layer.weight, "linf") <= 0.5
    # with radius r per layer, every logit bound is at most r ** depth
    assert (model.linf_logit_bounds() <= 0.5 ** 3 * (1 + 1e-5)).all()


def test_schedule_ramps_the_radius_and_the_clean_weight():
    assert Schedule.at(0.0, 0.2, ramp=4) == Schedule(0.0, 1.0)
    assert Schedule.at(2.0, 0.2, ramp=4) == Schedule(pytest.approx(0.1), 0.75)
    assert Schedule.at(9.0, 0.2, ramp=4) == Schedule(0.2, 0.5)
    assert Schedule.at(0.0, 0.2, ramp=0) == Schedule(0.2, 0.5)


@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.3))
@settings(max_examples=40, deadline=None)
def test_ibp_worst_case_cross_entropy_is_at_least_the_clean_one(seed, eps):
    """IBP's worst-case logits sit above the true ones (relative to f_y), and CE is shift-invariant."""
    model = small_model(seed)
    x = torch.rand(16, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        worst = worst_case_logits(model.ibp_pair_lower(x, eps, "linf", (0.0, 1.0)), y)
        clean = F.cross_entropy(model(x), y, reduction="none")
    assert (F.cross_entropy(worst, y, reduction="none") >= clean - 1e-9).all()
    assert (worst.gather(1, y[:, None]) == 0).all()


def test_ibp_worst_case_at_zero_radius_is_the_clean_logits_shifted():
    model = small_model()
    x = torch.rand(8, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    with torch.no_grad():
        logits = model(x)
        worst = worst_case_logits(model.ibp_pair_lower(x, 0.0, "linf", None), y)
    assert torch.allclose(worst, logits - logits.gather(1, y[:, None]), atol=1e-9)


def test_lmt_at_zero_radius_is_plain_cross_entropy_and_grows_with_the_radius():
    model = small_model()
    x, y = torch.rand(32, 12, dtype=torch.float64), torch.randint(0, 4, (32,))
    plain, clean, _, _ = batch_loss(model, x, y, "lmt", "linf", 0.0, Schedule(0.0, 0.5))
    assert torch.allclose(plain, clean)
    larger = [batch_loss(model, x, y, "lmt", "linf", 0.0, Schedule(eps, 0.5))[0] for eps in (0.05, 0.1)]
    assert plain < larger[0] < larger[1]


def test_hinge_is_zero_exactly_when_every_certified_margin_reaches_the_target():
    model = small_model()
    x = torch.rand(32, 12, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
        # at a tiny target the certified margins at eps = 0 (the logit gaps) all clear it
        gaps = model(x).topk(2, dim=1).values
    target = float((gaps[:, 0] - gaps[:, 1]).min()) / 2
    loss, *_ = batch_loss(model, x, y, "hinge", "linf", 0.0, Schedule(0.0, 0.5), hinge_margin=target)
    assert loss == 0
    loss, *_ = batch_loss(model, x, y, "hinge", "linf", 0.0, Schedule(0.0, 0.5), hinge_margin=10 * target + 1)
    assert loss > 0


@pytest.mark.parametrize("loss", ["ce", "lmt", "hinge", "ibp"])
def test_every_objective_trains_the_weights(loss):
    model = small_model()
    x, y = torch.rand(32, 12, dtype=torch.float64), torch.randint(0, 4, (32,))
    value, *_ = batch_loss(model, x, y, loss, "linf", 0.01, Schedule(0.05, 0.5))
    value.backward()
    assert all(layer.weight.grad.abs().sum() > 0 for layer in model.linear_layers())
