"""Hypothesis strategies and helpers shared by the certification tests: small random nets, nets with given
weights, norms, points."""

from __future__ import annotations

from typing import Sequence

import torch
from hypothesis import strategies as st

import lipschitz
from models import LipschitzMLP, MLPConfig

norms = st.sampled_from(lipschitz.NORMS)
seeds = st.integers(0, 2**31 - 1)


@st.composite
def random_nets(draw, max_hidden_layers: int = 2) -> LipschitzMLP:
    """Small float64 nets of every activation (MaxMin and FullSort being GroupSort), 0 to `max_hidden_layers` hidden layers, weights of any scale."""
    activation = draw(st.sampled_from(["groupsort", "relu", "maxmin", "fullsort"]))
    group_size = 2 if activation == "maxmin" else draw(st.sampled_from([1, 2, 3, 4]))
    unit = 1 if activation == "fullsort" else group_size  # FullSort takes any width: one group of all of it
    hidden = tuple(unit * draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, max_hidden_layers))))
    config = MLPConfig(
        in_features=draw(st.integers(1, 10)),
        hidden=hidden,
        out_features=draw(st.integers(2, 5)),
        activation=activation,
        group_size=group_size,
        mean=draw(st.floats(-1, 1)),
        std=draw(st.floats(0.2, 3)),
    )
    torch.manual_seed(draw(seeds))
    model = LipschitzMLP(config).double()
    with torch.no_grad():  # not the L1-normalised initialisation
        for layer in model.linear_layers():
            layer.weight.mul_(torch.empty_like(layer.weight).uniform_(0.1, 3.0))
            layer.bias.normal_()
    return model.eval()


def net_from_weights(
    weights: Sequence[torch.Tensor | list],
    biases: Sequence[torch.Tensor | list | float | None] | None = None,
    activation: str = "groupsort",
    group_size: int = 1,
    mean: float = 0.0,
    std: float = 1.0,
) -> LipschitzMLP:
    """A float64 net in eval mode whose Linear layers hold exactly `weights` (each (out, in)) and `biases`.

    The widths follow from the weights' shapes; a bias left out (None, or no `biases`) is zero, and a
    number fills the whole bias. Reading the weights back: `model.linear_layers()[k].weight`.
    """
    weights = [torch.as_tensor(w, dtype=torch.float64) for w in weights]
    biases = list(biases) if biases is not None else [None] * len(weights)
    if len(biases) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(biases)} biases")
    for before, after in zip(weights[:-1], weights[1:]):
        if after.shape[1] != before.shape[0]:
            raise ValueError(f"a layer of {before.shape[0]} units cannot feed a weight of shape {tuple(after.shape)}")
    config = MLPConfig(in_features=weights[0].shape[1], hidden=tuple(w.shape[0] for w in weights[:-1]),
                       out_features=weights[-1].shape[0], activation=activation, group_size=group_size,
                       mean=mean, std=std)
    model = LipschitzMLP(config).double()
    with torch.no_grad():
        for layer, weight, bias in zip(model.linear_layers(), weights, biases):
            layer.weight.copy_(weight)
            layer.bias.copy_(torch.zeros(len(weight)) if bias is None else torch.as_tensor(bias, dtype=torch.float64))
    return model.eval()


def random_directions(n: int, d: int, norm: str, generator: torch.Generator) -> torch.Tensor:
    """n random directions of unit p-norm: cube corners (linf), Gaussian (l2), signed vertices or Laplace (l1)."""
    if norm == "linf":
        v = torch.randn(n, d, generator=generator, dtype=torch.float64).sign()
    elif norm == "l2":
        v = torch.randn(n, d, generator=generator, dtype=torch.float64)
    else:
        signs = torch.randn(n, d, generator=generator, dtype=torch.float64).sign()
        v = signs * torch.empty(n, d, dtype=torch.float64).exponential_(generator=generator)
    return v / lipschitz.vector_norm(v, norm)[:, None].clamp_min(1e-300)


def ball_vertices(x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Points x_i + eps_i * v for the vertices v of the unit p-ball when it has few (l1: +-e_k), else none.

    Shape (n, vertices, d). The extreme of a linear function over an L1 ball is at one of these.
    """
    if norm != "l1":
        return x.new_zeros(len(x), 0, x.shape[1])
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    vertices = torch.cat([eye, -eye])
    return x[:, None, :] + eps[:, None, None] * vertices[None]


def input_jacobian(model: LipschitzMLP, x: torch.Tensor) -> torch.Tensor:
    """d f_k / d x for every example: shape (n, out, in)."""
    return torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x)


def with_singular_values(rows: int, cols: int, values: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A float64 matrix U diag(values) V^T with random orthonormal U, V, and U, V."""
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=g, dtype=torch.float64))
    return u @ torch.diag(values) @ v.T, u, v
