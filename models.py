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
    """Linear -> activation -> ... -> Linear, with per-logit L-inf Lipschitz bounds.

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
) -> Checkpoint:
    """Rebuild a saved model on the CPU.

    Accepts this project's checkpoints and the original demo's bare state_dict
    (`inlayer.*`, `outlayer.*`), whose activation and group size come from the
    arguments (default: the demo's groupsort, 10). Arguments that are given must
    agree with what the checkpoint records, so a wrong model is never certified.
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
