"""Hypothesis strategies and helpers shared by the certification tests: small random nets, norms, points."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import lipschitz
from models import LipschitzMLP, MLPConfig

norms = st.sampled_from(lipschitz.NORMS)
seeds = st.integers(0, 2**31 - 1)


@st.composite
def random_nets(draw, max_hidden_layers: int = 2) -> LipschitzMLP:
    """Small float64 nets of either activation, 0 to `max_hidden_layers` hidden layers, weights of any scale."""
    activation = draw(st.sampled_from(["groupsort", "relu"]))
    group_size = draw(st.sampled_from([1, 2, 3, 4]))
    hidden = tuple(group_size * draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, max_hidden_layers))))
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


def random_directions(n: int, d: int, norm: str, generator: torch.Generator) -> torch.Tensor:
    """n random directions of unit p-norm: cube corners (linf), Gaussian (l2), signed vertices or Laplace (l1)."""
    if norm == "linf":
        v = torch.randn(n, d, generator=generator, dtype=torch.float64).sign()
    elif norm == "l2":
        v = torch.randn(n, d, generator=generator, dtype=torch.float64)
    else:
        signs = torch.randn(n, d, generator=generator, dtype=torch.float64).sign()
        v = signs * torch.empty(n, d, dtype=torch.float64).exponential_(generator=generator)
    return v / lipschitz.lp_vector_norm(v, norm)[:, None].clamp_min(1e-300)


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
