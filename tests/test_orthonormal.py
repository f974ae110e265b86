"""Orthonormal layers: Bjorck's iteration from the safe scale converges to the polar factor in every order,
stays differentiable, keeps the layers orthonormal while they train, and is frozen into the weights that are
saved and certified."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import orthonormal
from checkpoints import load_checkpoint, save_checkpoint
from errors import ConfigError
from models import LipschitzMLP, MLPConfig, in_float64
from nets import seeds, with_singular_values
from orthonormal import Bjorck


@given(st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 2, 3, 4]), st.floats(1e-3, 1e3), seeds)
@settings(max_examples=60, deadline=None)
def test_bjorck_from_the_safe_scale_reaches_the_polar_factor_in_every_order(rows, cols, order, scale, seed):
    """Any scale: the safe scale bounds the spectral norm, so every singular value starts in (0, 1]."""
    g = torch.Generator().manual_seed(seed)
    values = scale * (0.1 + 9.9 * torch.rand(min(rows, cols), generator=g, dtype=torch.float64))  # condition <= 100
    weight, u, v = with_singular_values(rows, cols, values, g)
    assert torch.linalg.matrix_norm(weight / orthonormal.safe_scale(weight), 2) <= 1 + 1e-12
    result = orthonormal.bjorck(weight, Bjorck(iterations=40, order=order))
    assert torch.allclose(result, u @ v.T, atol=1e-9)
    side = result @ result.T if rows <= cols else result.T @ result
    assert torch.allclose(side, torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-9)


def test_bjorck_in_float32_is_orthonormal_to_float32_tolerance():
    weight = torch.randn(300, 784, generator=torch.Generator().manual_seed(0))
    result = orthonormal.bjorck(weight, Bjorck(iterations=30))
    assert torch.allclose(result @ result.T, torch.eye(300), atol=2e-5)
    singular = torch.linalg.svdvals(result.double())
    assert (singular - 1).abs().max() < 2e-5


def test_bjorck_with_beta_below_a_half_still_converges_and_a_bad_setting_is_one_line():
    weight = torch.randn(20, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = orthonormal.bjorck(weight, Bjorck(iterations=200, beta=0.25))
    assert torch.allclose(result @ result.T, torch.eye(20, dtype=torch.float64), atol=1e-9)
    for bad, message in [(dict(order=5), "order"), (dict(beta=0.6), "beta"), (dict(iterations=-1), "iterations")]:
        with pytest.raises(ConfigError, match=message):
            Bjorck(**bad)


def critic(activation: str = "maxmin", hidden: tuple[int, ...] = (16, 16)) -> LipschitzMLP:
    torch.manual_seed(0)
    config = MLPConfig(in_features=5, hidden=hidden, out_features=3, activation=activation, group_size=2,
                       mean=0.0, std=1.0)
    return orthonormal.orthonormalise_layers_(LipschitzMLP(config), Bjorck(iterations=25))


def test_layers_stay_orthonormal_while_they_train_and_the_gradient_reaches_every_parameter():
    model = critic()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(2))
    before = [layer.weight.detach().clone() for layer in model.affine_layers()]
    for _ in range(20):
        loss = model(x)[:, 0].mean() - model(x)[:, 1].mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
    for layer, old in zip(model.affine_layers(), before):
        w = layer.weight.detach()
        assert not torch.allclose(w, old)  # it trained
        singular = torch.linalg.svdvals(w.double())
        assert (singular - 1).abs().max() < 1e-4


def test_a_saved_orthonormal_net_stores_the_matrices_it_computes_and_certifies_them(tmp_path):
    model = critic("fullsort").eval()
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    logits = model(x).detach()
    save_checkpoint(tmp_path / "net.p", model, {})
    assert orthonormal.is_orthonormalised(model)  # saving froze a copy, not the model being trained
    loaded = load_checkpoint(tmp_path / "net.p").model
    assert torch.equal(loaded(x), logits)
    assert not orthonormal.is_orthonormalised(loaded)
    assert all("parametrizations" not in key for key in loaded.state_dict())
    bound = float(loaded.certified_logit_bounds("l2").output)
    assert 1 - 1e-5 < bound < 1 + 1e-4  # proved from the stored weights, never assumed to be 1
    frozen = orthonormal.freeze_(model)
    assert torch.equal(frozen(x), logits)


def test_a_parametrised_model_is_refused_by_the_float64_copy_and_its_frozen_copy_is_taken():
    """Certificates evaluate a float64 copy; a model whose weights are computed by a parametrisation is refused
    with the way out (copying it would break the original), and its frozen copy certifies."""
    model = LipschitzMLP(MLPConfig(in_features=6, hidden=(4,), out_features=3, group_size=2))
    orthonormal.orthonormalise_layers_(model, orthonormal.Bjorck(iterations=5))
    with pytest.raises(TypeError, match="orthonormal.frozen"):
        in_float64(model)
    frozen = in_float64(orthonormal.frozen(model))
    assert frozen.layers[0].weight.dtype == torch.float64
    assert orthonormal.is_orthonormalised(model)  # the original still works
    model(torch.rand(2, 6))


@pytest.mark.parametrize("extra_layers", [0, 3])
def test_a_maxmin_net_started_as_a_sorting_network_sorts_its_input(extra_layers):
    """`start_as_sorting_network_`: the hidden layers compute a full sort, so the critic is the same function of
    every permutation of its input, exactly; its layers are orthonormal (permutations) and stay so through
    Björck's iteration; layers beyond the sorter's 10 stages on 16 wires change nothing."""
    config = MLPConfig(in_features=16, hidden=(16,) * (10 + extra_layers), out_features=1, activation="maxmin",
                       mean=0.0, std=1.0)
    torch.manual_seed(0)
    model = orthonormal.start_as_sorting_network_(orthonormal.orthonormalise_layers_(LipschitzMLP(config),
                                                                                     Bjorck(10)))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    shuffled = x[:, torch.randperm(16, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        assert torch.equal(model(x), model(shuffled))
        hidden = model.layers[:-1](x)
        assert torch.equal(hidden.sort(dim=1).values, x.sort(dim=1).values)  # the sorted values, each once
        for layer in orthonormal.linear_layers(model)[:-1]:
            assert torch.equal(layer.weight @ layer.weight.T, torch.eye(16))
    plain = orthonormal.orthonormalise_layers_(LipschitzMLP(config), Bjorck(10))  # drawn orthogonal
    with torch.no_grad():
        assert not torch.equal(plain(x), plain(shuffled))


@pytest.mark.parametrize("config, message", [
    (MLPConfig(in_features=16, hidden=(16,) * 9, activation="maxmin"), "takes 10 MaxMin layers"),
    (MLPConfig(in_features=16, hidden=(16, 32) * 5, activation="maxmin"), "hidden widths of 16"),
    (MLPConfig(in_features=12, hidden=(12,) * 10, activation="maxmin"), "power of two"),
    (MLPConfig(in_features=16, hidden=(16,) * 10, activation="relu"), "for MaxMin layers"),
], ids=["too-shallow", "widths", "not-a-power-of-two", "relu"])
def test_a_net_that_cannot_be_a_sorting_network_is_refused_in_one_line(config, message):
    with pytest.raises(ConfigError, match=message):
        orthonormal.start_as_sorting_network_(LipschitzMLP(config))
