"""No certificate without a finite network: crafted nets whose float32 forward pass overflows inside the ball,
or at x itself, are certified by no method, called robust by no verifier, and counted wrong where their logits at
x are not finite; certified never exceeds clean."""

from __future__ import annotations

import pytest
import torch

import measure
import milp
from certificates import METHODS
from checkpoints import save_checkpoint
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, Split
from models import LipschitzMLP, MLPConfig

LABEL = 7
STROKE = torch.arange(300, 332)  # 32 pixels of a stroke


def digit() -> torch.Tensor:
    """An image with 32 stroke pixels at 0.6: each can rise by 0.1 and stay in [0, 1]."""
    x = torch.zeros(1, 784)
    x[0, STROKE] = 0.6
    return x


def crafted(activation: str, scale: float = 1.6e37, label_weight: float = -1e-37) -> LipschitzMLP:
    """784-10-10 in float32, every weight finite: hidden unit 0 is `scale` times the stroke's sum (at the digit
    19.2 scale, about 3.1e38 for the default: finite; 0.1 higher on each pixel, about 3.6e38: past float32's
    largest value, 3.4e38), and the label logit is 100 + `label_weight` times that unit. In exact arithmetic the
    label's gap is about 69 at the digit and at least 64 over the L-inf 0.1 ball: every rule would certify."""
    model = LipschitzMLP(MLPConfig(hidden=(10,), activation=activation, group_size=2, mean=0.0, std=1.0))
    with torch.no_grad():
        for layer in model.affine_layers():
            layer.weight.zero_()
            layer.bias.zero_()
        model.layers[0].weight[0, STROKE] = scale
        top = 1 if activation == "groupsort" else 0  # a sorted pair (unit 0, 0) puts the positive unit second
        model.layers[2].weight[LABEL, top] = label_weight
        model.layers[2].bias[LABEL] = 100.0
    return model.eval()


@pytest.mark.parametrize("activation", ["relu", "groupsort"])
def test_an_overflow_inside_the_ball_voids_every_certificate(activation):
    model, x = crafted(activation), digit()
    labels = torch.tensor([LABEL])
    with torch.no_grad():
        assert model(x).argmax().item() == LABEL and torch.isfinite(model(x)).all()
        raised = x.clone()
        raised[0, STROKE] += 0.1  # inside the ball and the pixel range: the float32 sum overflows
        assert model(raised).argmax().item() != LABEL  # the danger is real
    for ball in (Ball("linf", 0.1, PIXEL_RANGE), Ball("l2", 0.6, PIXEL_RANGE), Ball("l1", 3.2, PIXEL_RANGE)):
        masks = measure.certify_split(model, Split(x, labels), ball, METHODS)
        assert masks["clean"].item() and masks["overflow"].item()
        assert not any(masks[m].item() for m in METHODS), ball
        radii = measure.certified_radii(model, Split(x, labels), METHODS, ball.norm, PIXEL_RANGE)
        assert all(radii[m].item() < ball.eps for m in METHODS)  # only radii whose balls cannot overflow
    small = measure.certify_split(model, Split(x, labels), Ball("linf", 0.001, PIXEL_RANGE), METHODS)
    assert all(small[m].item() for m in METHODS) and not small["overflow"].item()  # finite there: certified


@pytest.mark.parametrize("activation", ["relu", "groupsort"])
def test_no_verifier_calls_a_net_that_may_overflow_robust(activation, monkeypatch):
    monkeypatch.setattr(milp, "HARD_RESTARTS", 2)  # best's second attack, cut to what a test affords
    model, x = crafted(activation), digit()
    split, ball = Split(x, torch.tensor([LABEL])), Ball("linf", 0.1, PIXEL_RANGE)
    for method in milp.METHODS:
        (verdict,) = milp.verify_split(model, split, ball, method, pgd_steps=10, pgd_restarts=1, progress=False)
        assert verdict.status != "robust", method
        if verdict.status == "counterexample":
            with torch.no_grad():
                assert model(verdict.counterexample.perturbed[None]).argmax().item() != LABEL
        else:
            assert (verdict.status, verdict.decided_by) == ("undecided", "overflow")


@pytest.mark.parametrize("activation", ["relu", "groupsort"])
@pytest.mark.parametrize("case", ["-inf at x", "+inf at x", "nan at x"])
def test_non_finite_logits_at_x_count_as_wrong(activation, case):
    """The unit overflows at the digit itself: the label logit is -inf (prediction changes), +inf (the argmax is
    the label, but nothing is finite), or nan (0 times inf): never clean-correct, never certified."""
    weight = {"-inf at x": -1e-37, "+inf at x": 1e-37, "nan at x": 0.0}[case]
    model, x = crafted(activation, scale=3.2e37, label_weight=weight), digit()
    labels = torch.tensor([LABEL])
    with torch.no_grad():
        assert not torch.isfinite(model(x)).all()
    for method_set in (METHODS, ("ibp",), ("global",)):
        masks = measure.certify_split(model, Split(x, labels), Ball("linf", 0.1, PIXEL_RANGE), method_set)
        assert not masks["clean"].item() and not any(masks[m].item() for m in method_set)
    (verdict,) = milp.verify_split(model, Split(x, labels), Ball("linf", 0.1, PIXEL_RANGE), "exact", progress=False)
    assert (verdict.status, verdict.decided_by) == ("counterexample", "clean")


def test_a_method_that_certifies_a_wrong_example_is_reported_as_unsound():
    clean = torch.tensor([True, False, True])
    measure.check_within_clean({"ibp": torch.tensor([True, False, False])}, clean, ("ibp",))
    with pytest.raises(RuntimeError, match=r"unsound: margin certifies examples \[1\]"):
        measure.check_within_clean({"margin": torch.tensor([False, True, True])}, clean, ("margin",))


def test_certify_cli_warns_once_and_certifies_nothing_that_may_overflow(run_script, mnist_root, tmp_path):
    """The crafted net on real test digits: clean accuracy is whatever it is, but no digit whose ball may
    overflow is certified, and one warning line says how many."""
    path = tmp_path / "crafted.p"
    save_checkpoint(path, crafted("relu", scale=1e38), {})
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--method", "all", "--limit", "200")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "may overflow" in lines[0]
    count = int(lines[0].split()[1])
    assert 0 < count <= 200
    table = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[2:]}
    assert all(float(table[m][1]) <= 100 * (200 - count) / 200 for m in METHODS)


def test_an_overflow_in_the_normalisation_voids_every_certificate():
    """std = 2e-39: (x - 0) / std is 3e38 at a pixel of 0.6 and past float32's largest value at 0.7, while the
    first layer scales it back to about 3; in exact arithmetic every rule certifies the L-inf 0.1 ball."""
    model = LipschitzMLP(MLPConfig(hidden=(10,), activation="relu", mean=0.0, std=2e-39))
    with torch.no_grad():
        for layer in model.affine_layers():
            layer.weight.zero_()
            layer.bias.zero_()
        model.layers[0].weight[0, STROKE[0]] = 1e-38
        model.layers[2].weight[LABEL, 0] = -1.0
        model.layers[2].bias[LABEL] = 10.0
    x, labels = digit(), torch.tensor([LABEL])
    raised = x.clone()
    raised[0, STROKE[0]] += 0.1
    with torch.no_grad():
        assert model(x).argmax().item() == LABEL and model(raised).argmax().item() != LABEL
    masks = measure.certify_split(model.eval(), Split(x, labels), Ball("linf", 0.1, PIXEL_RANGE), METHODS)
    assert masks["clean"].item() and masks["overflow"].item() and not any(masks[m].item() for m in METHODS)
