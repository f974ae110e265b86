"""Orthonormal Linear layers: Bjorck orthonormalisation inside the forward pass (Anil, Lucas & Grosse 2019).

Each Linear weight becomes a function of a free parameter V: W = bjorck(V / s),
s = sqrt(||V||_1 ||V||_inf) >= ||V||_2, so that every singular value starts in
(0, 1], where the iteration converges to 1. The gradient flows through the
iterations, so a training step moves V and the layer stays orthonormal: with
GroupSort after it, every layer keeps the gradient's norm. Nothing here is
trusted by a certificate: `freeze` stores the orthonormalised float32 matrix in
the plain Linear layer, and every bound is then proved for those stored weights
(`lipschitz.l2_spectral_norm_upper_bound`), never assumed to be 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

import groupsort
import lipschitz
from errors import ConfigError
from models import LipschitzMLP
from operators import Linear

@dataclass(frozen=True)
class Bjorck:
    """The iteration's settings (`lipschitz.orthonormalise`): `iterations` steps of order `order` (1 to 4),
    order 1 with the step size `beta`. The defaults are those of Anil, Lucas & Grosse's code."""

    iterations: int = 20
    order: int = 1
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"Bjorck iterations must be >= 0, got {self.iterations}")
        if not 1 <= self.order < len(lipschitz.BJORCK_TAYLOR):
            raise ConfigError(f"Bjorck order must be between 1 and {len(lipschitz.BJORCK_TAYLOR) - 1}, "
                              f"got {self.order}")
        if not 0 < self.beta <= 0.5:
            raise ConfigError(f"Bjorck beta must be in (0, 0.5], got {self.beta}")


def safe_scale(weight: torch.Tensor) -> torch.Tensor:
    """sqrt(||W||_1 ||W||_inf) >= ||W||_2 (Hoelder's inequality for operator norms): W divided by it has every
    singular value in [0, 1], where the iteration converges (a zero matrix stays zero). Of each matrix of a
    stack (..., m, n), shaped to divide it."""
    columns = weight.abs().sum(dim=-2).amax(dim=-1)
    rows = weight.abs().sum(dim=-1).amax(dim=-1)
    return (columns * rows).sqrt().clamp_min(torch.finfo(weight.dtype).tiny)[..., None, None]


def bjorck(weight: torch.Tensor, settings: Bjorck = Bjorck()) -> torch.Tensor:
    """`lipschitz.orthonormalise` of W / safe_scale(W) (or of each matrix of a stack): every nonzero singular
    value tends to 1 and the singular vectors stay, so the limit is the polar factor. Differentiable."""
    return lipschitz.orthonormalise(weight / safe_scale(weight), settings.iterations, settings.order, settings.beta)


class Orthonormalise(nn.Module):
    """The parametrisation W = bjorck(V) of one Linear weight (torch.nn.utils.parametrize)."""

    def __init__(self, settings: Bjorck) -> None:
        super().__init__()
        self.settings = settings

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return bjorck(weight, self.settings)


def orthonormalise_layers_(model: LipschitzMLP, settings: Bjorck = Bjorck()) -> LipschitzMLP:
    """Every Linear weight of `model` drawn orthogonal (torch.nn.init.orthogonal_) and from then on computed
    as bjorck(V) from its free parameter V. Returns the model."""
    for layer in linear_layers(model):
        with torch.no_grad():
            nn.init.orthogonal_(layer.weight)
        parametrize.register_parametrization(layer, "weight", Orthonormalise(settings))
    return model


def start_as_sorting_network_(model: LipschitzMLP) -> LipschitzMLP:
    """A MaxMin MLP whose hidden layers all keep its input's width n (a power of two) started as Batcher's
    bitonic sorter (`groupsort.bitonic_stages`): each Linear layer the permutation that pairs one stage's
    wires, its bias 0, so that the hidden layers compute a full sort of the input, as one FullSort layer does,
    and the last layer starts as a weighted sum of the sorted values; hidden layers beyond the sorter's stages
    pass the sorted wires on unchanged. A permutation is orthonormal, a fixed point of Björck's iteration, so
    a parametrised layer starts there too. Returns the model."""
    config = model.config
    n = config.in_features
    if config.activation != "maxmin" and (config.activation, config.group_size) != ("groupsort", 2):
        raise ConfigError(f"a sorting network is a start for MaxMin layers, not {config.activation}")
    if config.convs or set(config.hidden) != {n}:
        raise ConfigError(f"a sorting network keeps the input's {n} wires in every hidden layer: give hidden "
                          f"widths of {n} and no convolution")
    stages = groupsort.bitonic_stages(n)
    if len(config.hidden) < len(stages):
        raise ConfigError(f"Batcher's bitonic sorter on {n} wires takes {len(stages)} MaxMin layers, not "
                          f"{len(config.hidden)}")
    stages += [[(2 * t, 2 * t + 1) for t in range(n // 2)]] * (len(config.hidden) - len(stages))
    position = list(range(n))  # where each wire's value is now
    for layer, pairs in zip(linear_layers(model), stages):
        permutation = torch.zeros_like(layer.weight)
        for t, (low, high) in enumerate(pairs):
            permutation[2 * t, position[low]] = permutation[2 * t + 1, position[high]] = 1.0
            position[low], position[high] = 2 * t, 2 * t + 1  # MaxMin sorts each pair ascending
        free = layer.parametrizations.weight.original if parametrize.is_parametrized(layer, "weight") else layer.weight
        with torch.no_grad():
            free.copy_(permutation)
            layer.bias.zero_()
    return model


def linear_layers(model: LipschitzMLP) -> list[Linear]:
    """The Linear layers of `model` (its convolutions aside)."""
    return [layer for layer in model.affine_layers() if isinstance(layer, Linear)]


def is_orthonormalised(model: LipschitzMLP) -> bool:
    """Whether some weight of `model` is still computed by a parametrisation (Bjorck's iteration, BCOP), not
    yet frozen."""
    return any(parametrize.is_parametrized(layer, "weight") for layer in model.affine_layers())


def freeze_(model: LipschitzMLP) -> LipschitzMLP:
    """Each parametrised weight replaced by the matrix it computes now, a plain parameter: the weights that are
    saved, evaluated and certified. Returns the model."""
    for layer in model.affine_layers():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    model._spectral_memo = None
    return model


def frozen(model: LipschitzMLP) -> LipschitzMLP:
    """`model` itself where no weight is parametrised, else a plain copy holding the matrices it computes now.
    Built on the meta device and filled in, so that no random number is drawn (a run saved mid-way goes on
    bit for bit), and not by deepcopy, which would share the parametrised class with the model."""
    if not is_orthonormalised(model):
        return model
    with torch.device("meta"):
        plain = type(model)(model.config)
    state = {}
    with torch.no_grad():  # as `freeze_` and every evaluation compute them: autograd's kernels may round otherwise
        for name in plain.state_dict():
            module, _, attribute = name.rpartition(".")
            state[name] = getattr(model.get_submodule(module), attribute).detach().clone()
    plain.load_state_dict(state, assign=True)
    return plain.train(model.training)
