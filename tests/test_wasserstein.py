"""wasserstein.py: the certified lower bound is a theorem (never above the exact W1 of the two sample sets, by
POT), tight where the critic is the optimal one; the built-in tasks have W1 = 1; bad input is one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wasserstein
from models import LipschitzMLP, MLPConfig
from nets import seeds
from orthonormal import Bjorck


@given(st.integers(1, 10), st.integers(1, 10), st.integers(1, 3), st.sampled_from(["maxmin", "fullsort", "relu"]),
       st.floats(1e-2, 1e2), seeds)
@settings(max_examples=40, deadline=None)
def test_the_certified_lower_bound_never_exceeds_the_exact_w1_of_the_two_sets(n, m, dim, activation, scale, seed):
    """Theorem: a critic trained on the very sets it is judged on, so its bound comes close to W1. POT's W1 is
    itself computed in float64, hence the 1e-12 relative margin on its side."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    q = (torch.randn(m, dim, generator=g, dtype=torch.float64) + torch.rand(dim, generator=g, dtype=torch.float64)) * scale
    critic = wasserstein.Critic((8, 8), activation, steps=40, batch_size=16, lr=0.05 * scale, seed=seed,
                                bjorck=Bjorck(iterations=15))
    model = wasserstein.train(critic, dim, lambda k: (p, q))
    estimate = wasserstein.certify(model, p, q)
    exact = wasserstein.exact_w1(p, q)
    assert 0 <= estimate.certified <= exact * (1 + 1e-12)
    assert estimate.lipschitz >= 1 - 1e-4  # orthonormal layers: the proved bound is about 1, never much below


def absolute_value_critic() -> LipschitzMLP:
    """|x| exactly: MaxMin of (x, -x) gives (-|x|, |x|), and the last layer keeps the second."""
    model = LipschitzMLP(MLPConfig(in_features=1, hidden=(2,), out_features=1, activation="maxmin", mean=0.0, std=1.0))
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.layers[0].bias.zero_()
        model.layers[2].weight.copy_(torch.tensor([[0.0, 1.0]]))
        model.layers[2].bias.zero_()
    return model.eval()


def test_the_optimal_critic_certifies_w1_to_within_rounding():
    p, q = wasserstein.line(64, torch.Generator().manual_seed(0))
    estimate = wasserstein.certify(absolute_value_critic(), p, q)
    assert estimate.dual == 1.0
    assert 1 - 1e-9 < estimate.certified <= 1.0  # W1 is exactly 1, and the bound proves almost all of it


def test_rounding_that_overstates_the_dual_is_subtracted():
    """f(x) = w |x_1 - x_2| with w = fl32(1/3): exactly that in real arithmetic, and sqrt(2) w-Lipschitz. At
    p = (c + d, c - d), c = 2^30, its float64 evaluation rounds w p_1 by up to 3e-8 before the cancellation
    with w p_2: an error of about 1e-7 of f, far above the Lipschitz bound's own margin (6e-15). Against
    q = (c, c), f is optimal: W1 = sqrt(2) mean d exactly (every d a multiple of 2^-22, so p is exact)."""
    w, c = float(torch.tensor(1 / 3, dtype=torch.float32)), 2.0**30
    model = LipschitzMLP(MLPConfig(in_features=2, hidden=(2,), out_features=1, activation="maxmin", mean=0.0, std=1.0))
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[w, -w], [-w, w]]))
        model.layers[0].bias.zero_()
        model.layers[2].weight.copy_(torch.tensor([[0.0, 1.0]]))
        model.layers[2].bias.zero_()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        d = torch.randint(2**21, 3 * 2**21, (16,), generator=g).double() * 2.0**-22  # in [0.5, 1.5)
        p, q = torch.stack([c + d, c - d], dim=1), torch.full((16, 2), c, dtype=torch.float64)
        exact = math.fsum(d.tolist()) / 16 * math.sqrt(2)
        certified = wasserstein.certify(model, p, q).certified
        assert exact - 1e-4 < certified <= exact * (1 + 1e-13)  # without the rounding terms, 11 of 20 exceed


def test_the_bound_is_of_the_exact_critic_so_float32_overflow_does_not_void_it_but_float64_overflow_does():
    """W1 is a property of the sample sets: any function certifies it, here the exact critic evaluated in
    float64, even where its float32 run overflows (the float32 estimate is then NaN). Where the float64
    evaluation itself may overflow, nothing is certified."""
    model = absolute_value_critic()
    with torch.no_grad():
        model.layers[0].weight.mul_(3e38)
        model.layers[2].weight.div_(3e38)
    p, q = torch.tensor([[2.0], [-2.0]], dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    estimate = wasserstein.certify(model, p, q)
    assert np.isnan(estimate.dual) and 1.99 < estimate.certified <= 2.0
    far = torch.tensor([[1e300], [-1e300]], dtype=torch.float64)
    assert wasserstein.certify(model, far, q).certified == 0.0


@pytest.mark.parametrize("task", sorted(wasserstein.TASKS))
def test_each_task_has_w1_exactly_one_between_its_sample_sets(task):
    p, q = wasserstein.TASKS[task].sample(60, torch.Generator().manual_seed(1))
    assert p.shape == q.shape == (60, wasserstein.TASKS[task].dim)
    assert wasserstein.exact_w1(p, q) == pytest.approx(1.0, abs=1e-12)


def test_a_small_line_task_learns_the_dual_and_writes_its_json_and_plot(tmp_path, capsys):
    out, picture = tmp_path / "w.json", tmp_path / "critic.png"
    wasserstein.main(["--task", "line", "--hidden", "16,16", "--steps", "150", "--lr", "0.01", "--holdout", "256",
                      "--json", str(out), "--plot", str(picture)])
    result = json.loads(out.read_text())
    assert 0.9 < result["certified_lower_bound"] <= 1.0
    assert result["certified_lower_bound"] <= result["estimate"] + 1e-6
    assert result["critic"]["hidden"] == [16, 16] and result["true"] == 1.0
    assert picture.stat().st_size > 0
    assert "certified lower bound of W1" in capsys.readouterr().out


def test_user_samples_give_the_estimate_beside_pots_exact_w1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "p.npy", rng.normal(size=(120, 2)))
    np.save(tmp_path / "q.npy", rng.normal(size=(100, 2)) + [3.0, 0.0])
    out = tmp_path / "w.json"
    wasserstein.main(["--samples", str(tmp_path / "p.npy"), str(tmp_path / "q.npy"), "--hidden", "16,16",
                      "--steps", "100", "--lr", "0.01", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["held_out"] == [24, 20]
    assert 0 < result["certified_lower_bound"] <= result["exact_held_out"] * (1 + 1e-12)


BAD = {
    "vector": (np.zeros(5), "has shape (5,): give an array of shape (n, d)"),
    "empty": (np.zeros((0, 2)), "is empty"),
    "nan": (np.array([[0.0, np.nan], [1.0, 2.0]]), "holds NaN or infinite values"),
    "text": (np.array([["a", "b"]]), "holds <U1 values"),
    "one": (np.zeros((1, 2)), "has 1 sample"),
    "three": (np.zeros((5, 3)), "P has 3 dimensions and Q has 2"),
}


@pytest.mark.parametrize("case", [*BAD, "not-npy", "missing", "no-task", "plot-sphere", "sorting-line"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    good = tmp_path / "q.npy"
    np.save(good, np.zeros((5, 2)))
    bad = tmp_path / "p.npy"
    if case in BAD:
        np.save(bad, BAD[case][0])
    elif case == "not-npy":
        bad.write_text("1,2\n3,4\n")
    args = {"no-task": [], "plot-sphere": ["--task", "sphere", "--plot", str(tmp_path / "x.png")],
            "sorting-line": ["--task", "line", "--start", "sorting"]}.get(case, ["--samples", str(bad), str(good)])
    message = {"not-npy": "is not a NumPy .npy array", "missing": "does not exist",
               "no-task": "one of the arguments --task --samples is required",
               "plot-sphere": "--plot draws the critic of the line and circles tasks only",
               "sorting-line": "a bitonic sorter takes a power of two wires, at least 2, got 1"}.get(case) or BAD[case][1]
    with pytest.raises(SystemExit) as stop:
        from cli import run
        run(lambda: wasserstein.main([*args, "--steps", "1"]))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_a_maxmin_critic_started_as_a_sorting_network_certifies_the_sphere_untrained():
    """A full sort maps the sphere's points near one vector (the sorted coordinates concentrate), so 28 MaxMin
    layers started as Batcher's bitonic sorter on 128 wires, read out along the mean of the sorted training
    points, certify nearly all of W1 = 1 without a training step, as one FullSort layer can; the bound of a
    29-layer critic loses almost nothing to its rounding allowance."""
    generator = torch.Generator().manual_seed(0)
    critic = wasserstein.Critic((128,) * 28, "maxmin", bjorck=Bjorck(10), start="sorting")
    model = wasserstein.freeze_(critic.build(128)).eval()
    train_p, _ = wasserstein.sphere(2048, generator)
    with torch.no_grad():
        direction = model.layers[:-1](train_p.float()).mean(dim=0)
        model.layers[-1].weight.copy_(direction / torch.linalg.vector_norm(direction))
    estimate = wasserstein.certify(model, *wasserstein.sphere(2048, generator))
    assert estimate.certified >= 0.98
    assert estimate.dual - estimate.certified < 1e-5
