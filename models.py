"""The Lipschitz MLP: its configuration, its initialisation, and its logit bounds in any p-norm.

The network is a list of operators (`operators`): the input normalisation,
then Linear and activation layers in turn. Its logit bounds are one loop over
them, each passing a `Slope` by its own rule.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

import lipschitz
import rounding
from errors import ConfigError
from convolution import Convolution, Downsample
from groupsort import ACTIVATIONS, make_activation
from lipschitz import LogitBounds
from operators import Affine, Linear, Normalise, Operator, Slope, require


@dataclass(frozen=True)
class MLPConfig:
    """Everything needed to rebuild the network; the defaults are the demo's.

    Inputs are pixels in [0, 1]; the model normalises them as (x - mean) / std. `convs` are the layers
    before the hidden Linear ones, on the square one-channel image of in_features pixels (`conv_layers`).
    """

    in_features: int = 784
    convs: tuple[str, ...] = ()
    hidden: tuple[int, ...] = (500,)
    out_features: int = 10
    activation: str = "groupsort"
    group_size: int = 10
    mean: float = 0.1307
    std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "convs", tuple(self.convs))
        widths = (self.in_features, *self.hidden, self.out_features)
        if min(widths) < 1:
            raise ConfigError(f"layer widths must be positive, got {widths}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.std <= 0:
            raise ConfigError(f"normalisation std must be positive, got {self.std}")

        conv_layers(self)  # every entry checked

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden), "convs": list(self.convs)}


CONV_FORMS = "C:K:S:P (a convolution: channels, kernel, stride, padding), bcop:C:K (orthogonal, odd K) or down"


def conv_layers(config: MLPConfig) -> tuple[list[Operator], int]:
    """The layers that `config.convs` names, in order, on the square image of config.in_features pixels: for
    "C:K:S:P" a convolution of C channels, kernel K, stride S and zero padding P, then the activation; for
    "bcop:C:K" one whose kernel training keeps orthogonal (`bcop.py`: stride 1, circular padding K // 2), then the
    activation; for "down" invertible downsampling. Also the units of their output. A bad entry is refused in
    one line."""
    side = math.isqrt(config.in_features)
    if config.convs and side * side != config.in_features:
        raise ConfigError(f"convolutions take a square image: {config.in_features} inputs are not one")
    shape, layers = (side, side, 1), []
    for spec in config.convs:
        parts = str(spec).split(":")
        try:
            if parts == ["down"]:
                layers.append(Downsample(shape))
                shape = layers[-1].out_shape
                continue
            bcop = parts[0] == "bcop"
            numbers = [int(part) for part in parts[bcop:]]
            if len(numbers) != (2 if bcop else 4) or (bcop and numbers[1] % 2 == 0):
                raise ValueError
        except ValueError:
            raise ConfigError(f"convolution {spec!r}: write {CONV_FORMS}") from None
        channels, kernel, stride, padding = (*numbers, 1, numbers[1] // 2) if bcop else numbers
        group = {"groupsort": config.group_size, "maxmin": 2}.get(config.activation, 1)
        if channels % group:
            raise ConfigError(f"convolution {spec!r}: GroupSort sorts the channels of a pixel in groups of {group}, "
                              f"which do not divide {channels}")
        conv = Convolution(shape, channels, kernel, stride, padding, orthogonal=bcop,
                           padding_mode="circular" if bcop else "zeros")
        layers += [conv, make_activation(config.activation, config.group_size, conv.out_features)]
        shape = conv.out_shape
    return layers, math.prod(shape) if layers else config.in_features


class CertifiedSlopes(NamedTuple):
    """See `LipschitzMLP.certified_slopes`; one entry per operator but the last."""

    units: list[torch.Tensor]  # per unit of its output
    operators: list[torch.Tensor | None]  # ||W||_2 of a Linear layer, None for the others
    wholes: list[torch.Tensor]  # of the whole output, in the input p-norm (a scalar)


class LipschitzMLP(nn.Module):
    """Linear -> activation -> ... -> Linear, with Lipschitz bounds of its logits in L-inf, L2 and L1.

    Built with PyTorch's default initialisation, then every row of every weight
    divided by its L1 norm, so each layer starts with L-inf operator norm 1.
    """

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        self.config = config
        self.input = Normalise(config.mean, config.std)
        layers, features = conv_layers(config)
        widths = (features, *config.hidden, config.out_features)
        for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(Linear(fan_in, fan_out))
            if depth < len(config.hidden):  # every layer but the last is followed by one
                layers.append(make_activation(config.activation, config.group_size, fan_out))
        self.layers = nn.Sequential(*layers)
        normalise_rows_l1_(self.affine_layers())
        self._spectral_memo: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # _proved_spectral_norms

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (n, 784) or (n, 1, 28, 28) to the first layer's input, (x - mean) / std."""
        return self.input(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for pixel inputs x of shape (n, 784) or (n, 1, 28, 28)."""
        return self.layers(self.input(x))

    def operators(self) -> list[Operator]:
        """The network as its operators, in order: the normalisation, then every layer; the last is Linear."""
        return [self.input, *self.layers]

    def affine_layers(self) -> list[Affine]:
        """The affine layers (convolutions and Linear layers), in order."""
        return [layer for layer in self.layers if isinstance(layer, Affine)]

    def hidden_bounds(
        self, norm: str, operator_norm: lipschitz.OperatorNorm = lipschitz.operator_norm
    ) -> Slope:
        """The `Slope` of h, the input of the last Linear layer, in the input p-norm `norm` (pixel units):
        the last of `layer_bounds`."""
        return self.layer_bounds(norm, operator_norm)[-1]

    def layer_bounds(
        self, norm: str, operator_norm: lipschitz.OperatorNorm = lipschitz.operator_norm
    ) -> list[Slope]:
        """The `Slope` of the output of every operator but the last, in order, from the pixels' (every pixel
        moves by at most ||dx||_p, the vector by exactly that), each operator passing it by its own rule."""
        lipschitz.check_norm(norm)
        operators = self.operators()
        require(operators, "Lipschitz bounds", "slope")
        like = self.affine_layers()[0].weight
        slope = Slope(like.new_ones(self.config.in_features), like.new_ones(()))
        chain = []
        for operator in operators[:-1]:
            slope = operator.slope(slope, norm, operator_norm)
            chain.append(slope)
        return chain

    def logit_bounds(self, norm: str, estimate: bool = False, per_pair: bool = True) -> LogitBounds:
        """Bounds of every logit, every logit difference, and the whole output, in the p-norm `norm`.

        The last layer is applied to h's bounds row by row: W_k for logit k, and
        W_i - W_j for the difference f_i - f_j, which is tighter than L_i + L_j
        because the two rows' weights can cancel. Differentiable: the training
        penalty is built from `logits`. With `estimate`, l2 spectral norms are
        power-iteration estimates (an SVD per batch would dominate a training
        step); an estimate can fall below the true norm, so such bounds are for
        the penalty only. In linf it changes nothing. Without `per_pair`, the
        rows W_i - W_j are skipped (a training step that does not need them
        saves their cost) and `differences` holds the looser but still sound
        L_i + L_j. Computed in the weights' precision: certificates take
        `certified_logit_bounds`.
        """
        operator_norm = lipschitz.operator_norm_estimate if estimate else lipschitz.operator_norm
        return self._logit_bounds(norm, operator_norm, per_pair)

    @torch.no_grad()
    @rounding.exact_arithmetic()
    def certified_logit_bounds(self, norm: str) -> LogitBounds:
        """`logit_bounds` that hold despite rounding, for certificates: float64 upper bounds of the
        Lipschitz constants of the network with the stored weights in exact arithmetic.

        The float32 weights are exact in float64. The l2 spectral norms are
        proved upper bounds (`lipschitz.l2_spectral_norm_upper_bound`). Every
        other step is a sum, product, maximum, minimum or norm of nonnegative
        numbers: along the chain through the layers there are at most
        sum_l (n_l + 8) + 8 roundings, n_l the longest sum of layer l's rules
        (`operators.Affine.longest_sum`), so each computed bound is at least the
        exact one times (1 - gamma_K), and multiplying by 1 + 2 gamma_K restores
        an upper bound.
        """
        model64 = in_float64(self)
        bounds = model64._logit_bounds(norm, model64._proved_operator_norm, per_pair=True)
        factor = model64._rounding_factor()
        return LogitBounds(norm, bounds.per_logit * factor, bounds.per_gap * factor, bounds.output * factor)

    @torch.no_grad()
    @rounding.exact_arithmetic()
    def certified_slopes(self, norm: str) -> CertifiedSlopes:
        """Per operator but the last, float64 upper bounds that hold despite rounding: every unit's Lipschitz
        bound in the input p-norm `norm` and the whole output's (the bounds of `layer_bounds`, a prefix of the
        chain that `certified_logit_bounds` proves), and a Linear layer's L2 operator norm (None for the others)."""
        model64 = in_float64(self)
        factor = model64._rounding_factor()
        chain = model64.layer_bounds(norm, model64._proved_operator_norm)
        units = [slope.unit * factor for slope in chain]
        norms = iter(model64._proved_spectral_norms())
        operators = [next(norms) if isinstance(op, Affine) else None for op in model64.operators()[:-1]]
        return CertifiedSlopes(units, operators, [slope.whole * factor for slope in chain])

    def _proved_spectral_norms(self) -> list[torch.Tensor]:
        """`lipschitz.l2_spectral_norm_upper_bound` of every affine layer's matrix: one float64 eigensolve each, so
        kept for the last weights and served again only while every weight equals them by value (a
        certificate asks once per block of examples)."""
        weights = [layer.matrix().detach() for layer in self.affine_layers()]
        memo = self._spectral_memo
        if memo is not None and len(memo[0]) == len(weights) and all(
                a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(memo[0], weights)):
            return memo[1]
        norms = [lipschitz.l2_spectral_norm_upper_bound(w) for w in weights]
        self._spectral_memo = ([w.clone() for w in weights], norms)
        return norms

    def _proved_operator_norm(self, weight: torch.Tensor, norm: str) -> torch.Tensor:
        """`lipschitz.operator_norm_upper_bound`, its l2 case for this model's weights from
        `_proved_spectral_norms`."""
        if norm == "l2":
            for layer, bound in zip(self.affine_layers(), self._proved_spectral_norms()):
                if layer.matrix() is weight:
                    return bound.to(weight.dtype)
        return lipschitz.operator_norm_upper_bound(weight, norm)

    def _rounding_factor(self) -> float:
        """1 + 2 gamma_K, K the roundings along the bound chain (see `certified_logit_bounds`)."""
        chain = sum(layer.longest_sum + 8 for layer in self.affine_layers()) + 8
        return 1 + 2 * rounding.gamma(chain, torch.float64)

    def _logit_bounds(self, norm: str, operator_norm: lipschitz.OperatorNorm, per_pair: bool) -> LogitBounds:
        """The last layer's slope rule on h's bounds gives the logits' and the output's; its gaps' rows
        (`Linear.pairs`) give the gaps'."""
        hidden = self.hidden_bounds(norm, operator_norm)
        last = self.layers[-1]
        logits = last.slope(hidden, norm, operator_norm)
        if per_pair:
            out = last.out_features
            per_gap = last.pairs().row_bounds(hidden, norm).unflatten(-1, (out, out))
        else:
            per_gap = logits.unit[:, None] + logits.unit[None, :]
        return LogitBounds(norm, logits.unit, per_gap, logits.whole)


class BatchNormMLP(nn.Module):
    """A LipschitzMLP trained with batch normalisation after every hidden Linear layer, and only ever
    used folded into those layers.

    Batch norm maps each pre-activation z to s (z - mean) + beta, s = gamma / sqrt(var + eps): an
    affine map, so BN(W h + b) = (s W) h + s (b - mean) + beta is one Linear layer. In a training
    step (mean, var) are the batch's, as in torch.nn.BatchNorm1d, and the folded layers carry the
    gradients (`call_folded`); `folded` takes the running statistics and gives the plain
    LipschitzMLP that is evaluated, saved and certified, so every bound is of the network that runs.
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.mlp = LipschitzMLP(config)
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for width in config.hidden)

    def folded_parameters(
        self, batch: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The hidden Linear layers' folded weights and biases, by the MLP's parameter names, and the
        logits: from the statistics of the pixel batch `batch` (updating the running ones as
        BatchNorm1d does in training), with the logits at `batch` of the network they make, computed
        in the same pass; or from the running statistics, with no logits, without a batch."""
        h = None if batch is None else self.mlp.normalise(batch)
        layers = list(self.mlp.layers)
        folded: dict[str, torch.Tensor] = {}
        for index, (linear, norm) in enumerate(zip(layers[0:-1:2], self.norms)):
            if h is None:
                mean, var = norm.running_mean, norm.running_var
            else:
                z = linear(h)
                mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
            scale = norm.weight * torch.rsqrt(var + norm.eps)
            folded[f"layers.{2 * index}.weight"], folded[f"layers.{2 * index}.bias"] = linear.folded(scale, mean,
                                                                                                   norm.bias)
            if h is not None:  # torch's own batch norm of the batch, which also updates the running statistics
                h = nn.functional.batch_norm(z, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                             training=True, momentum=norm.momentum, eps=norm.eps)
                norm.num_batches_tracked += 1
                h = layers[2 * index + 1](h)  # the activation
        h = None if h is None else layers[-1](h)
        return folded, h

    def call_folded(self, fn: Callable[..., Any], batch: torch.Tensor, *args: Any) -> Any:
        """fn(mlp, batch, *args, logits=logits) with the MLP's hidden Linear layers folded with `batch`'s
        statistics, and their logits at `batch` (so that fn need not compute them again)."""
        folded, logits = self.folded_parameters(batch)
        named = {f"mlp.{name}": value for name, value in folded.items()}
        return torch.func.functional_call(_Apply(self.mlp), named, (fn, batch, *args), {"logits": logits})

    @torch.no_grad()
    def folded(self) -> LipschitzMLP:
        """The plain MLP this network computes with its running statistics (a copy)."""
        plain = copy.deepcopy(self.mlp)
        for name, value in self.folded_parameters()[0].items():
            plain.get_parameter(name).copy_(value)
        return plain


class _Apply(nn.Module):
    """fn(mlp, *args, **kwargs) as a module's forward, so that torch.func.functional_call can swap mlp's parameters."""

    def __init__(self, mlp: LipschitzMLP) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.mlp, *args, **kwargs)


@torch.no_grad()
def normalise_rows_l1_(layers: list[Linear]) -> None:
    """Divide every row of every weight by its L1 norm (the demo's initialisation); a convolution's every
    kernel, so that no row of its matrix exceeds L1 norm 1."""
    for layer in layers:
        layer.weight.div_(layer.weight.abs().sum(dim=tuple(range(1, layer.weight.dim())), keepdim=True))


def in_float64(model: LipschitzMLP) -> LipschitzMLP:
    """The network with float64 weights, every float32 weight being exact in float64: the model itself when
    its weights are float64 already, else a copy in eval mode. A parametrised model (orthonormal layers in
    training) is refused: its weights are computed, not stored, and copying it would break it; certify
    `orthonormal.frozen(model)`."""
    if any(parametrize.is_parametrized(module) for module in model.modules()):
        raise TypeError("a parametrised model's weights are computed in each forward pass: certify "
                        "orthonormal.frozen(model), which stores them")
    if model.affine_layers()[0].weight.dtype == torch.float64:
        return model
    return copy.deepcopy(model).double().eval()
