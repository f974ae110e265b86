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
def random_convs(draw, unit: int) -> tuple[int, tuple[str, ...]]:
    """A small square image (its pixel count) and one or two convolutions on it: channels a multiple of `unit`,
    kernels 1 to 3, strides 1 or 2, zero padding 0 or 1, or circular padding at stride 1; now and then an
    invertible downsampling before one."""
    side = draw(st.integers(3, 6))
    convs, size = [], side
    for _ in range(draw(st.integers(1, 2))):
        if size % 2 == 0 and size >= 4 and draw(st.integers(0, 3)) == 0:
            convs.append("down")  # invertible downsampling first
            size //= 2
        kernel = draw(st.integers(1, min(3, size)))
        circular = draw(st.booleans()) and kernel % 2 == 1
        channels = unit * draw(st.integers(1, 3))
        if circular:
            convs.append(f"bcop:{channels}:{kernel}")
            continue
        stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
        convs.append(f"{channels}:{kernel}:{stride}:{padding}")
        size = (size + 2 * padding - kernel) // stride + 1
    return side * side, tuple(convs)


@st.composite
def random_nets(draw, max_hidden_layers: int = 2, convs: bool = False) -> LipschitzMLP:
    """Small float64 nets of every activation (MaxMin and FullSort being GroupSort), 0 to `max_hidden_layers` hidden
    layers, weights of any scale; with `convs`, a third of them convolutional (`random_convs`: "bcop" entries
    are circular convolutions with random kernels, not orthogonal ones)."""
    activation = draw(st.sampled_from(["groupsort", "relu", "maxmin", "fullsort"]))
    group_size = 2 if activation == "maxmin" else draw(st.sampled_from([1, 2, 3, 4]))
    unit = 1 if activation == "fullsort" else group_size  # FullSort takes any width: one group of all of it
    hidden = tuple(unit * draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, max_hidden_layers))))
    in_features, layers = draw(random_convs(unit)) if convs and draw(st.integers(0, 2)) == 0 else (
        draw(st.integers(1, 10)), ())
    config = MLPConfig(
        in_features=in_features,
        convs=layers,
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
        for layer in model.affine_layers():
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
    number fills the whole bias. Reading the weights back: `model.affine_layers()[k].weight`.
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
        for layer, weight, bias in zip(model.affine_layers(), weights, biases):
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
