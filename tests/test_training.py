"""--compile: the compiled batch loss computes what the eager one does, and fails in one line."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import cli
import train_mnist
from models import LipschitzMLP, MLPConfig
from objectives import LOSSES, Schedule, batch_loss
from mnist_data import PIXEL_RANGE


def small_batch(seed: int = 0) -> tuple[LipschitzMLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = LipschitzMLP(MLPConfig(in_features=20, hidden=(12,), out_features=5, group_size=3))
    with torch.no_grad():  # rows of unequal L1 norm: a tie in a group's max bound has no unique gradient
        for layer in model.linear_layers():
            layer.weight.mul_(torch.rand(len(layer.weight), 1) + 0.5)
    x = torch.rand(16, 20).clamp(*PIXEL_RANGE)
    return model, x, torch.randint(0, 5, (16,))


@pytest.mark.parametrize("loss", LOSSES)
def test_the_compiled_loss_and_its_gradients_match_eager(loss):
    model, x, y = small_batch()
    schedule = Schedule.at(0.5, 0.1, 1.0)
    results = []
    for loss_fn in (batch_loss, train_mnist.compiled(batch_loss)):
        model.zero_grad()
        value, class_loss, logits, bounds = loss_fn(model, x, y, loss, "linf", 0.01, schedule, 1.0)
        value.backward()
        results.append((value, class_loss, logits, bounds, *(p.grad for p in model.parameters())))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_a_ramping_radius_does_not_recompile_every_step():
    model, x, y = small_batch(1)
    loss_fn = train_mnist.compiled(batch_loss)
    counters.clear()
    for step in range(6):  # IBP at six different radii, as during --ramp-epochs
        loss_fn(model, x, y, "ibp", "linf", 0.01, Schedule.at(step / 6, 0.1, 1.0), 1.0)
    assert counters["stats"]["unique_graphs"] <= 2  # one specialised graph, then one general


def test_a_compile_failure_is_one_line_naming_the_flag(monkeypatch):
    def broken(function):
        def call(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found\nlong details")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model, x, y = small_batch()
    with pytest.raises(cli.Failure, match=r"^torch.compile failed \(no C\+\+ compiler found\): run without --compile$"):
        train_mnist.compiled(batch_loss)(model, x, y, "ce", "linf", 0.01, Schedule.at(1, 0.1, 0), 1.0)
