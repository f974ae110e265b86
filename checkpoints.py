"""Every file format: atomic writes, checkpoints, the original demo's state_dict, training states for --resume."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch

from errors import ConfigError, Failure, OutputError
import orthonormal
from models import LipschitzMLP, MLPConfig

CHECKPOINT_FORMAT = "lipschitz-mlp/1"
TRAINING_STATE_FORMAT = "lipschitz-mlp-training/2"
# The bare state_dict saved by the original demo's ShallowNet.
ORIGINAL_KEYS = {
    "inlayer.weight": "layers.0.weight",
    "inlayer.bias": "layers.0.bias",
    "outlayer.weight": "layers.2.weight",
    "outlayer.bias": "layers.2.bias",
}
# Recipe entries a resumed run may change: more epochs, another rule for the final report.
RESUMABLE_CHANGES = ("epochs", "method")


class CheckpointError(Failure):
    """A checkpoint or training state is missing, unreadable, or disagrees with what was asked for."""


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file whole or not at all: into a temporary file beside it, then rename."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as stream:  # "x": never clobber; the umask sets the mode
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as err:
        discard(temporary)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        discard(temporary)
        raise


def discard(temporary: Path) -> None:
    """Remove a temporary file if it is there. Its folder may be missing or a file, which unlink
    reports as NotADirectoryError, not as a missing file: that must not replace the real error."""
    with contextlib.suppress(OSError):
        temporary.unlink()


def write_json(path: Path, content: Any) -> None:
    """`content` as indented JSON, written atomically."""
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda stream: stream.write(text.encode()))


def csv_bytes(rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows (the header first) as the bytes of a CSV file."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def write_csv(path: Path, rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows (the header first) as CSV, written atomically; returns the bytes written."""
    content = csv_bytes(rows)
    atomic_write(path, lambda stream: stream.write(content))
    return content


COUNTEREXAMPLE_FORMATS = (".pt", ".npz")  # the inputs themselves; ".png" draws them (grids.py)


def write_counterexamples(path: Path, found: Sequence[Any], eps: float, norm: str) -> None:
    """Every counterexample's inputs, atomically: index, label, predicted class (n,), the perturbed input in
    [0, 1] (n, 784, float32), the ball's radius and norm; `.pt` for torch.load(weights_only=True), `.npz` for
    numpy.load. `found` holds `attacks.Counterexample` records."""
    columns = {
        "index": torch.tensor([c.index for c in found], dtype=torch.int64),
        "label": torch.tensor([c.label for c in found], dtype=torch.int64),
        "predicted": torch.tensor([c.predicted for c in found], dtype=torch.int64),
        "input": (torch.stack([c.perturbed.flatten().cpu() for c in found]) if found
                  else torch.zeros(0, 784)).to(torch.float32),
    }
    if path.suffix == ".pt":
        atomic_write(path, lambda stream: torch.save({**columns, "radius": eps, "norm": norm}, stream))
    else:
        arrays = {name: value.numpy() for name, value in columns.items()}
        atomic_write(path, lambda stream: np.savez(stream, **arrays, radius=np.float64(eps), norm=np.str_(norm)))


def metrics_path(checkpoint: Path) -> Path:
    """The JSON file of metrics written next to a checkpoint."""
    return checkpoint.with_suffix(".json")


def training_state_path(checkpoint: Path) -> Path:
    """The per-epoch training state kept beside a checkpoint, for --resume."""
    return checkpoint.with_suffix(".last.p")


def save_checkpoint(path: Path, model: LipschitzMLP, metrics: dict[str, Any]) -> None:
    """Save weights, config and metrics atomically, and the metrics as JSON beside them. Orthonormalised
    weights are stored as the matrices they compute (`orthonormal.frozen`): those are what is certified."""
    model = orthonormal.frozen(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics,
    }
    atomic_write(path, lambda stream: torch.save(payload, stream))
    write_json(metrics_path(path), metrics)


@dataclass
class Checkpoint:
    model: LipschitzMLP
    metrics: dict[str, Any] = field(default_factory=dict)
    original: bool = False  # a bare state_dict from the original demo


@dataclass(frozen=True)
class Expected:
    """What the user says a checkpoint holds (None: not said). Must agree with what it records."""

    activation: str | None = None
    group_size: int | None = None
    hidden: tuple[int, ...] | None = None
    normalisation: tuple[float, float] | None = None  # (mean, std)


def read_payload(path: Path, device: torch.device | str = "cpu") -> Any:
    """Unpickle a file written by torch.save, with weights only; any failure becomes one line."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a file") from None
    except Exception as err:  # unpickling arbitrary bytes can raise almost anything
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: truncated, damaged or not written "
                              f"by torch.save ({type(err).__name__})") from None


def project_config(path: Path, payload: dict[str, Any], expected: Expected) -> MLPConfig:
    """The configuration a project checkpoint records, complete, refused where `expected` contradicts it."""
    recorded = payload.get("config")
    names = {f.name for f in fields(MLPConfig)}
    if isinstance(recorded, dict) and "convs" not in recorded:  # written before convolutions: an MLP
        recorded = {**recorded, "convs": []}
    if not isinstance(recorded, dict) or set(recorded) != names or not isinstance(payload.get("state_dict"), dict):
        missing = sorted(names - set(recorded)) if isinstance(recorded, dict) else ["config"]
        raise CheckpointError(f"{path} is an incomplete checkpoint: it lacks "
                              f"{', '.join(missing) if missing else 'a valid config or state_dict'}")
    try:
        config = MLPConfig(**recorded)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} records an impossible configuration: {err}") from None
    for name, flags, asked, recorded in (
        ("activation", "--activation", expected.activation, config.activation),
        ("group_size", "--group_size", expected.group_size, config.group_size),
        ("hidden", "--hidden", expected.hidden, config.hidden),
        ("normalisation", "--mean and --std", expected.normalisation, (config.mean, config.std)),
    ):
        if asked is not None and asked != recorded:
            raise CheckpointError(
                f"{path} was trained with {name} {recorded}, not {asked}: drop {flags} or give the checkpoint's value"
            )
    return config


def original_config(path: Path, state: dict[str, torch.Tensor], expected: Expected) -> MLPConfig:
    """The configuration of the original demo's state_dict: widths from its shapes, the rest from `expected`.

    The file records no activation, so `expected` must name it (and, for GroupSort, the group size):
    a guess would certify another function. The normalisation defaults to the demo's (x - 0.1307) / 1.
    """
    if expected.activation is None or (expected.activation == "groupsort" and expected.group_size is None):
        raise CheckpointError(f"{path} is the original demo's bare state_dict, which records no activation: "
                              f"give --activation relu, or --activation groupsort --group_size 10 (the demo's)")
    if any(not isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path} holds an entry that is not a tensor")
    shapes = {name: tuple(value.shape) for name, value in state.items()}
    if len(shapes["layers.0.weight"]) != 2 or len(shapes["layers.2.weight"]) != 2:
        raise CheckpointError(f"{path} holds weights of shapes {shapes['layers.0.weight']} and "
                              f"{shapes['layers.2.weight']}: the original demo's are matrices")
    shape_in, shape_out = shapes["layers.0.weight"], shapes["layers.2.weight"]
    if expected.hidden is not None and tuple(expected.hidden) != (shape_in[0],):
        raise CheckpointError(f"{path} has hidden width {shape_in[0]}, not {expected.hidden}")
    mean, std = expected.normalisation or (0.1307, 1.0)
    return MLPConfig(in_features=shape_in[1], hidden=(shape_in[0],), out_features=shape_out[0],
                     activation=expected.activation, group_size=expected.group_size or 10, mean=mean, std=std)


def hint(payload: object) -> str:
    """What a file that is not a checkpoint seems to be, for the one-line refusal."""
    if isinstance(payload, dict) and payload.get("format") == TRAINING_STATE_FORMAT:
        return (": it is a training state (.last.p), which train_mnist.py --resume continues; certify the "
                "checkpoint saved beside it")
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return (": it is a bare state_dict without the configuration that rebuilds the model; write one with "
                "checkpoints.save_checkpoint(path, model, {})")
    return ""


def load_checkpoint(path: Path, expected: Expected = Expected()) -> Checkpoint:
    """Rebuild a saved model on the CPU: this project's checkpoints, or the original demo's bare state_dict.

    Entries of `expected` that are given must agree with what the checkpoint
    records, so a wrong model is never certified.
    """
    payload = read_payload(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        config = project_config(path, payload, expected)
        state, metrics, original = payload["state_dict"], payload.get("metrics", {}), False
    elif isinstance(payload, dict) and set(payload) == set(ORIGINAL_KEYS):
        state = {ORIGINAL_KEYS[key]: value for key, value in payload.items()}
        config, metrics, original = original_config(path, state, expected), {}, True
    else:
        raise CheckpointError(f"{path} is not a checkpoint of this project or of the original demo{hint(payload)}")
    try:
        model = LipschitzMLP(config)
        model.load_state_dict(state)
    except (ConfigError, RuntimeError) as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise CheckpointError(f"{path} does not fit the architecture: {detail}") from None
    for name, value in model.state_dict().items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path} holds non-finite values (NaN or inf) in {name}")
    return Checkpoint(model.eval(), metrics, original)


@dataclass
class TrainingState:
    """A run after `epoch` finished epochs: what --resume needs to continue it bit for bit."""

    recipe: dict[str, Any]
    epoch: int
    epoch_seconds: list[float]
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor


def save_training_state(path: Path, state: TrainingState) -> None:
    """Write the training state atomically, tagged with its format."""
    payload = {"format": TRAINING_STATE_FORMAT, **state.__dict__}
    atomic_write(path, lambda stream: torch.save(payload, stream))


def load_training_state(
    path: Path, recipe: dict[str, Any], device: torch.device | str, defaults: dict[str, Any] | None = None
) -> TrainingState:
    """The training state at `path`, refused unless it was saved by a run of the same recipe.

    The recipes must agree on every entry except those in `RESUMABLE_CHANGES`. An entry the saved
    recipe lacks came into the project after it was saved, when the run had its default: it is
    compared as its value in `defaults`.
    """
    if not path.exists():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    payload = read_payload(path, device)
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"cannot resume from {path}: not a training state of this version of the project")
    payload.pop("format")
    state = TrainingState(**payload)
    saved = {**(defaults or {}), **state.recipe}
    differences = [f"{name} {saved.get(name)} (now {value})" for name, value in recipe.items()
                   if name not in RESUMABLE_CHANGES and saved.get(name) != value]
    if differences:
        raise CheckpointError(f"cannot resume {path}: it was trained with " + ", ".join(differences))
    return state
