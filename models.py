"""The Lipschitz MLP: its configuration, initialisation, logit bounds and checkpoints."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import lipschitz
from groupsort import make_activation

CHECKPOINT_FORMAT = "lipschitz-mlp/1"
# The bare state_dict saved by the original demo's ShallowNet.
ORIGINAL_KEYS = {
    "inlayer.weight": "layers.0.weight",
    "inlayer.bias": "layers.0.bias",
    "outlayer.weight": "layers.2.weight",
    "outlayer.bias": "layers.2.bias",
}


@dataclass(frozen=True)
class LogitBounds:
    """Lipschitz bounds of a model's logits in one input p-norm, in pixel units.

    logits[k]:         |f_k(x) - f_k(x')| <= logits[k] ||x - x'||_p
    differences[i, j]: |(f_i - f_j)(x) - (f_i - f_j)(x')| <= differences[i, j] ||x - x'||_p
    output:            ||f(x) - f(x')||_p <= output ||x - x'||_p
    """

    norm: str
    logits: torch.Tensor
    differences: torch.Tensor
    output: torch.Tensor


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or disagrees with what was asked for."""


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
            raise ValueError(f"layer widths must be positive, got {widths}")
        if self.std <= 0:
            raise ValueError(f"normalisation std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}


class LipschitzMLP(nn.Module):
    """Linear -> activation -> ... -> Linear, with Lipschitz bounds in L-inf, L2 and L1, and IBP.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for pixel inputs x of shape (n, 784) or (n, 1, 28, 28)."""
        return self.layers((x.flatten(1) - self.config.mean) / self.config.std)

    def linear_layers(self) -> list[nn.Linear]:
        return [layer for layer in self.layers if isinstance(layer, nn.Linear)]

    def linf_logit_bounds(self) -> torch.Tensor:
        """L_k with |f_k(x) - f_k(x')| <= L_k ||x - x'||_inf for every logit k, in pixel units.

        Chains the per-unit bound rules of `lipschitz` and the activations through
        the layers. Differentiable: the training penalty is built from it.
        """
        first = self.layers[0].weight
        bound = lipschitz.linf_input_bound(self.config.in_features, 1 / self.config.std, first)
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                bound = lipschitz.linf_linear_bound(layer.weight, bound)
            else:
                bound = layer.propagate_linf_bound(bound)
        return bound

    def lp_hidden_bounds(
        self, norm: str, operator_norm: Callable = lipschitz.lp_operator_norm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, B) for h, the input of the last Linear layer, in the input p-norm `norm` (pixel units).

        |h_j(x) - h_j(x')| <= b_j ||x - x'||_p and ||h(x) - h(x')||_p <= B ||x - x'||_p,
        chained layer by layer with `lipschitz.lp_row_bounds` (per unit) and
        `lipschitz.lp_whole_bound` (operator norms). In linf, b is exactly the
        chain of `linf_logit_bounds`.
        """
        lipschitz.check_norm(norm)
        first = self.layers[0].weight
        unit, whole = lipschitz.lp_input_bounds(self.config.in_features, 1 / self.config.std, first)
        for layer in self.layers[:-1]:
            if isinstance(layer, nn.Linear):
                out_unit = lipschitz.lp_row_bounds(layer.weight, unit, whole, norm)
                whole = lipschitz.lp_whole_bound(layer.weight, out_unit, whole, norm, operator_norm)
                unit = out_unit
            else:
                unit, whole = layer.propagate_lp_bound(unit), layer.propagate_lp_whole_bound(whole)
        return unit, whole

    def lp_bounds(self, norm: str) -> LogitBounds:
        """Bounds of every logit, every logit difference, and the whole output, in the p-norm `norm`.

        The last layer is applied to h's bounds row by row: W_k for logit k, and
        W_i - W_j for the difference f_i - f_j, which is tighter than L_i + L_j
        because the two rows' weights can cancel.
        """
        unit, whole = self.lp_hidden_bounds(norm)
        last = self.layers[-1].weight
        logits = lipschitz.lp_row_bounds(last, unit, whole, norm)
        differences = lipschitz.lp_row_bounds(lipschitz.pair_difference_rows(last), unit, whole, norm)
        output = lipschitz.lp_whole_bound(last, logits, whole, norm)
        return LogitBounds(norm, logits, differences, output)

    def lp_logit_bounds(self, norm: str) -> torch.Tensor:
        """L_k with |f_k(x) - f_k(x')| <= L_k ||x - x'||_p; equal to `linf_logit_bounds` in linf."""
        unit, whole = self.lp_hidden_bounds(norm)
        return lipschitz.lp_row_bounds(self.layers[-1].weight, unit, whole, norm)

    def lp_penalty_bounds(self, norm: str) -> torch.Tensor:
        """Differentiable per-logit bounds for the TRAINING PENALTY in the p-norm `norm`.

        The chain of `lp_logit_bounds`, except that in l2 the spectral norms are
        power-iteration estimates (an SVD per batch would dominate the step).
        An estimate can fall below the true norm, so these are not certified
        bounds: certificates use `lp_bounds`. In linf, `linf_logit_bounds` itself.
        """
        if norm == "linf":
            return self.linf_logit_bounds()

        def operator_norm(weight: torch.Tensor, p: str) -> torch.Tensor:
            if p == "l2":
                return lipschitz.l2_spectral_norm_estimate(weight)
            return lipschitz.lp_operator_norm(weight, p)

        unit, whole = self.lp_hidden_bounds(norm, operator_norm)
        return lipschitz.lp_row_bounds(self.layers[-1].weight, unit, whole, norm)

    def ibp_pair_lower(
        self,
        x: torch.Tensor,
        eps: float | torch.Tensor,
        norm: str,
        domain: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Lower bounds of f_i(x') - f_j(x') over ||x' - x||_p <= eps (within `domain`): (n, out, out).

        Interval bound propagation. The input box is the L-inf ball of radius
        eps, which holds the p-ball for every p, cut to the pixel range `domain`
        when given (then the bounds hold for valid images only). The first
        layer's interval is also cut to the exact range over the p-ball,
        w . x +- eps ||w||_q / std. Activations pass intervals end by end; the
        last layer is folded into the logit differences. `eps` is one radius,
        or one per example.
        """
        lipschitz.check_norm(norm)
        x = x.flatten(1)
        if isinstance(eps, torch.Tensor):
            eps = eps.to(dtype=x.dtype, device=x.device)
        eps = x.new_ones(len(x)) * eps  # not torch.as_tensor, which torch.compile would specialise on
        lower, upper = x - eps[:, None], x + eps[:, None]
        if domain is not None:
            lower, upper = lower.clamp(min=domain[0]), upper.clamp(max=domain[1])
        mean, std = self.config.mean, self.config.std
        lower, upper = (lower - mean) / std, (upper - mean) / std
        center, radius = (x - mean) / std, eps / std
        for index, layer in enumerate(self.layers[:-1]):
            if isinstance(layer, nn.Linear):
                lower, upper = lipschitz.interval_linear(layer.weight, layer.bias, lower, upper)
                if index == 0:
                    ball = lipschitz.lp_ball_interval(layer.weight, layer.bias, center, radius, norm)
                    lower, upper = torch.maximum(lower, ball[0]), torch.minimum(upper, ball[1])
            else:
                lower, upper = layer.propagate_interval(lower, upper)
        last = self.layers[-1]
        pair_lower = lipschitz.interval_pair_lower(last.weight, last.bias, lower, upper)
        if len(self.layers) == 1:  # no hidden layer: the differences' range over the ball is exact
            rows = lipschitz.pair_difference_rows(last.weight)
            offsets = last.bias[:, None] - last.bias[None, :]
            ball_lower, _ = lipschitz.lp_ball_interval(rows, offsets, center, radius, norm)
            pair_lower = torch.maximum(pair_lower, ball_lower)
        return pair_lower


@torch.no_grad()
def normalise_rows_l1_(model: nn.Module) -> None:
    """Divide every row of every Linear weight by its L1 norm (the demo's initialisation)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.div_(module.weight.abs().sum(dim=1, keepdim=True))


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file whole or not at all: into a temporary file beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as stream:  # "x": never clobber; the umask sets the mode
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def metrics_path(checkpoint: Path) -> Path:
    """The JSON file of metrics written next to a checkpoint."""
    return checkpoint.with_suffix(".json")


def save_checkpoint(path: Path, model: LipschitzMLP, metrics: dict[str, Any]) -> None:
    """Save weights, config and metrics atomically, and the metrics as JSON beside them."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics,
    }
    atomic_write(path, lambda stream: torch.save(payload, stream))
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    atomic_write(metrics_path(path), lambda stream: stream.write(text.encode()))


@dataclass
class Checkpoint:
    model: LipschitzMLP
    metrics: dict[str, Any] = field(default_factory=dict)
    original: bool = False  # a bare state_dict from the original demo


def load_checkpoint(
    path: Path,
    activation: str | None = None,
    group_size: int | None = None,
    hidden: tuple[int, ...] | None = None,
    normalisation: tuple[float, float] | None = None,
) -> Checkpoint:
    """Rebuild a saved model on the CPU.

    Accepts this project's checkpoints and the original demo's bare state_dict
    (`inlayer.*`, `outlayer.*`), whose activation, group size and normalisation
    (mean, std) come from the arguments (default: the demo's groupsort, 10,
    (0.1307, 1)). Arguments that are given must agree with what the checkpoint
    records, so a wrong model is never certified.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder, not a file") from None
    except Exception as err:  # unpickling arbitrary bytes can raise almost anything
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__})") from None

    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        config = MLPConfig(**payload["config"])
        for name, asked, recorded in (
            ("activation", activation, config.activation),
            ("group_size", group_size, config.group_size),
            ("hidden", hidden, config.hidden),
            ("normalisation", normalisation, (config.mean, config.std)),
        ):
            if asked is not None and asked != recorded:
                raise CheckpointError(
                    f"{path} was trained with {name} {recorded}, not {asked}: "
                    f"drop --{name} or give the checkpoint's value"
                )
        state, metrics, original = payload["state_dict"], payload.get("metrics", {}), False
    elif isinstance(payload, dict) and set(payload) == set(ORIGINAL_KEYS):
        state = {ORIGINAL_KEYS[key]: value for key, value in payload.items()}
        shape_in, shape_out = state["layers.0.weight"].shape, state["layers.2.weight"].shape
        if hidden is not None and tuple(hidden) != (shape_in[0],):
            raise CheckpointError(f"{path} has hidden width {shape_in[0]}, not {hidden}")
        config = MLPConfig(
            in_features=shape_in[1],
            hidden=(shape_in[0],),
            out_features=shape_out[0],
            activation=activation or "groupsort",
            group_size=group_size or 10,
            **({} if normalisation is None else {"mean": normalisation[0], "std": normalisation[1]}),
        )
        metrics, original = {}, True
    else:
        raise CheckpointError(f"{path} is not a checkpoint of this project or of the original demo")

    try:
        model = LipschitzMLP(config)
        model.load_state_dict(state)
    except (ValueError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit the architecture: {first_line}") from None
    return Checkpoint(model.eval(), metrics, original)
