"""The Lipschitz MLP: its configuration, its initialisation, and its logit bounds in any p-norm."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

import lipschitz
import rounding
from errors import ConfigError
from groupsort import ACTIVATIONS, make_activation
from lipschitz import LogitBounds


@dataclass(frozen=True)
class MLPConfig:
    """Everything needed to rebuild the network; the defaults are the demo's.

    Inputs are pixels in [0, 1]; the model normalises them as (x - mean) / std.
    """

    in_features: int = 784
    hidden: tuple[int, ...] = (500,)
    out_features: int = 10
    activation: str = "groupsort"
    group_size: int = 10
    mean: float = 0.1307
    std: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        widths = (self.in_features, *self.hidden, self.out_features)
        if min(widths) < 1:
            raise ConfigError(f"layer widths must be positive, got {widths}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        if self.std <= 0:
            raise ConfigError(f"normalisation std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}


class CertifiedSlopes(NamedTuple):
    """See `LipschitzMLP.certified_slopes`."""

    units: list[torch.Tensor]      # per unit, of the normalised input and of every layer's output but the last
    operators: list[torch.Tensor]  # ||W||_2 of every Linear layer


class LipschitzMLP(nn.Module):
    """Linear -> activation -> ... -> Linear, with Lipschitz bounds of its logits in L-inf, L2 and L1.

    Built with PyTorch's default initialisation, then every row of every weight
    divided by its L1 norm, so each layer starts with L-inf operator norm 1.
    """

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        self.config = config
        widths = (config.in_features, *config.hidden, config.out_features)
        layers: list[nn.Module] = []
        for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if depth < len(config.hidden):  # every layer but the last is followed by one
                activation = make_activation(config.activation, config.group_size)
                activation.check_width(fan_out)
                layers.append(activation)
        self.layers = nn.Sequential(*layers)
        normalise_rows_l1_(self)
        self._spectral_memo: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # _proved_spectral_norms

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (n, 784) or (n, 1, 28, 28) to the first layer's input, (x - mean) / std."""
        return (x.flatten(1) - self.config.mean) / self.config.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for pixel inputs x of shape (n, 784) or (n, 1, 28, 28)."""
        return self.layers(self.normalise(x))

    def linear_layers(self) -> list[nn.Linear]:
        return [layer for layer in self.layers if isinstance(layer, nn.Linear)]

    def hidden_bounds(
        self, norm: str, operator_norm: lipschitz.OperatorNorm = lipschitz.lp_operator_norm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, B) for h, the input of the last Linear layer, in the input p-norm `norm` (pixel units).

        |h_j(x) - h_j(x')| <= b_j ||x - x'||_p and ||h(x) - h(x')||_p <= B ||x - x'||_p:
        the last of `layer_bounds`.
        """
        return self.layer_bounds(norm, operator_norm)[-1]

    def layer_bounds(
        self, norm: str, operator_norm: lipschitz.OperatorNorm = lipschitz.lp_operator_norm
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(b, B) of the normalised input, then of the output of every layer but the last, in order.

        Chained layer by layer: `lipschitz.lp_row_bounds` (per unit) and
        `lipschitz.lp_whole_bound` (operator norms) for a Linear layer, the
        activation's own rules for the others.
        """
        lipschitz.check_norm(norm)
        first = self.layers[0].weight
        unit, whole = lipschitz.lp_input_bounds(self.config.in_features, 1 / self.config.std, first)
        chain = [(unit, whole)]
        for layer in self.layers[:-1]:
            if isinstance(layer, nn.Linear):
                out_unit = lipschitz.lp_row_bounds(layer.weight, unit, whole, norm)
                whole = lipschitz.lp_whole_bound(layer.weight, out_unit, whole, norm, operator_norm)
                unit = out_unit
            else:
                unit, whole = layer.propagate_bound(unit), layer.propagate_whole_bound(whole)
            chain.append((unit, whole))
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
        operator_norm = lipschitz.operator_norm_estimate if estimate else lipschitz.lp_operator_norm
        return self._logit_bounds(norm, operator_norm, per_pair)

    @torch.no_grad()
    def certified_logit_bounds(self, norm: str) -> LogitBounds:
        """`logit_bounds` that hold despite rounding, for certificates: float64 upper bounds of the
        Lipschitz constants of the network with the stored weights in exact arithmetic.

        The float32 weights are exact in float64. The l2 spectral norms are
        proved upper bounds (`lipschitz.l2_spectral_norm_upper_bound`). Every
        other step is a sum, product, maximum, minimum or norm of nonnegative
        numbers: along the chain through the layers there are at most
        sum_l (fan_in_l + 8) + 8 roundings, so each computed bound is at least
        the exact one times (1 - gamma_K), and multiplying by 1 + 2 gamma_K
        restores an upper bound.
        """
        exact = self._float64()
        bounds = exact._logit_bounds(norm, exact._proved_operator_norm, per_pair=True)
        factor = exact._rounding_factor()
        return LogitBounds(norm, bounds.logits * factor, bounds.differences * factor, bounds.output * factor)

    @torch.no_grad()
    def certified_slopes(self, norm: str) -> CertifiedSlopes:
        """Per layer, float64 upper bounds that hold despite rounding: every unit's Lipschitz bound in the
        input p-norm `norm` (the b of `layer_bounds`, a prefix of the chain that `certified_logit_bounds`
        proves) and every Linear layer's L2 operator norm."""
        exact = self._float64()
        factor = exact._rounding_factor()
        units = [unit * factor for unit, _ in exact.layer_bounds(norm, exact._proved_operator_norm)]
        return CertifiedSlopes(units, exact._proved_spectral_norms())

    def _proved_spectral_norms(self) -> list[torch.Tensor]:
        """`lipschitz.l2_spectral_norm_upper_bound` of every Linear weight: one float64 eigensolve each, so
        kept for the last weights and served again only while every weight equals them by value (a
        certificate asks once per block of examples)."""
        weights = [layer.weight.detach() for layer in self.linear_layers()]
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
            for layer, bound in zip(self.linear_layers(), self._proved_spectral_norms()):
                if layer.weight is weight:
                    return bound.to(weight.dtype)
        return lipschitz.operator_norm_upper_bound(weight, norm)

    def _float64(self) -> LipschitzMLP:
        return self if self.layers[0].weight.dtype == torch.float64 else copy.deepcopy(self).double()

    def _rounding_factor(self) -> float:
        """1 + 2 gamma_K, K the roundings along the bound chain (see `certified_logit_bounds`)."""
        chain = sum(layer.in_features + 8 for layer in self.linear_layers()) + 8
        return 1 + 2 * rounding.gamma(chain, torch.float64)

    def _logit_bounds(self, norm: str, operator_norm: lipschitz.OperatorNorm, per_pair: bool) -> LogitBounds:
        unit, whole = self.hidden_bounds(norm, operator_norm)
        last = self.layers[-1].weight
        logits = lipschitz.lp_row_bounds(last, unit, whole, norm)
        if per_pair:
            differences = lipschitz.lp_row_bounds(lipschitz.pair_difference_rows(last), unit, whole, norm)
        else:
            differences = logits[:, None] + logits[None, :]
        output = lipschitz.lp_whole_bound(last, logits, whole, norm, operator_norm)
        return LogitBounds(norm, logits, differences, output)


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
        last = len(self.mlp.layers) - 1
        norms = iter(self.norms)
        folded: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.mlp.layers):
            if not isinstance(layer, nn.Linear) or index == last:
                h = None if h is None else layer(h)
                continue
            norm = next(norms)
            if h is None:
                mean, var = norm.running_mean, norm.running_var
            else:
                z = nn.functional.linear(h, layer.weight, layer.bias)
                mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
            scale = norm.weight * torch.rsqrt(var + norm.eps)
            folded[f"layers.{index}.weight"] = scale[:, None] * layer.weight
            folded[f"layers.{index}.bias"] = scale * (layer.bias - mean) + norm.bias
            if h is not None:  # torch's own batch norm of the batch, which also updates the running statistics
                h = nn.functional.batch_norm(z, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                             training=True, momentum=norm.momentum, eps=norm.eps)
                norm.num_batches_tracked += 1
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
def normalise_rows_l1_(model: nn.Module) -> None:
    """Divide every row of every Linear weight by its L1 norm (the demo's initialisation)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.div_(module.weight.abs().sum(dim=1, keepdim=True))
