"""Training: the recipe (what a run is), one optimiser step, one epoch, and the state a run carries.

A `Recipe` is built once, from its defaults (the demo's), a recipe file in
`recipes/` and the command line's flags, and then passed down unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

import certificates
import lipschitz
from checkpoints import TrainingState
from errors import ConfigError, Failure
from groupsort import ACTIVATIONS
from mnist_data import Split
from models import BatchNormMLP, LipschitzMLP, MLPConfig
from objectives import LOSSES, RAMP_SHAPES, LossFn, Objective, Schedule, batch_loss

RECIPES = Path(__file__).resolve().parent / "recipes"
CONSTRAINTS = ("none", "linf-proj", "bjorck")
PRECISIONS = ("float32", "bfloat16")  # of a training step's arithmetic, see `train_step`
BJORCK_STEP_ITERATIONS = 1  # after each optimiser step, see `constrain_`


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a training run computes; the defaults are the original demo's."""

    # the network
    hidden: tuple[int, ...] = (500,)
    activation: str = "groupsort"
    group_size: int = 10
    batch_norm: bool = False  # after every hidden Linear layer in training, folded into it (models.BatchNormMLP)
    # the optimisation: Adam, the learning rate times gamma after every epoch and times lr_drop_factor
    # after each epoch listed in lr_drops; gradients clipped to grad_clip in L2 norm (0: not clipped)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    gamma: float = 0.985
    lr_drops: tuple[int, ...] = ()
    lr_drop_factor: float = 0.2
    grad_clip: float = 0.0
    precision: str = "float32"  # of a step's objective: float32, or bfloat16 under torch.autocast
    seed: int = 0
    # the objective (see objectives.py)
    loss: str = "ce"
    lc_penalty: float = 0.01
    norm: str = "linf"
    train_eps: float | None = None  # None: the certificate's radius, cert_magnitude
    warmup_epochs: float = 0.0  # at radius 0, before the ramp
    ramp_epochs: float = 0.0
    ramp_shape: str = "linear"
    final_clean_weight: float = 0.5  # of the ibp loss's clean part, reached with the radius
    hinge_target: float = 1.0
    constraint: str = "none"
    constraint_radius: float = 1.0
    # the certificate of the final report
    cert_magnitude: float = 0.1
    method: str = "global"

    def __post_init__(self) -> None:
        self.check_types()
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "lr_drops", tuple(self.lr_drops))
        self.check_values()

    def check_types(self) -> None:
        """A recipe file can hold any JSON type: a wrong one is refused here, not met later as a TypeError."""
        integer = lambda value: isinstance(value, int) and not isinstance(value, bool)  # noqa: E731
        if not isinstance(self.hidden, (list, tuple)) or not all(integer(width) for width in self.hidden):
            raise ConfigError(f"hidden must be a list of widths, got {self.hidden!r}")
        if not isinstance(self.lr_drops, (list, tuple)) or not all(integer(epoch) for epoch in self.lr_drops):
            raise ConfigError(f"lr_drops must be a list of epochs, got {self.lr_drops!r}")
        if not isinstance(self.batch_norm, bool):
            raise ConfigError(f"batch_norm must be true or false, got {self.batch_norm!r}")
        for name in ("group_size", "epochs", "batch_size", "seed"):
            if not integer(getattr(self, name)):
                raise ConfigError(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("lr", "gamma", "lc_penalty", "train_eps", "ramp_epochs", "hinge_target", "constraint_radius",
                     "cert_magnitude", "lr_drop_factor", "grad_clip", "warmup_epochs", "final_clean_weight"):
            value = getattr(self, name)
            if not (integer(value) or isinstance(value, float) or (value is None and name == "train_eps")):
                raise ConfigError(f"{name} must be a number, got {value!r}")

    def check_values(self) -> None:
        """Choices among the known ones, sizes and rates positive, radii and weights non-negative, all finite."""
        for name, value, choices in (("activation", self.activation, ACTIVATIONS), ("loss", self.loss, LOSSES),
                                     ("norm", self.norm, lipschitz.NORMS), ("method", self.method, certificates.METHODS),
                                     ("constraint", self.constraint, CONSTRAINTS),
                                     ("ramp_shape", self.ramp_shape, RAMP_SHAPES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
        numbers = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "gamma": self.gamma,
                   "group_size": self.group_size, "hinge_target": self.hinge_target,
                   "constraint_radius": self.constraint_radius, "lr_drop_factor": self.lr_drop_factor}
        for name, value in numbers.items():
            if not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        for name in ("lc_penalty", "cert_magnitude", "ramp_epochs", "train_eps", "grad_clip", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None and (not value >= 0 or not math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.final_clean_weight <= 1:
            raise ConfigError(f"final_clean_weight must be in [0, 1], got {self.final_clean_weight}")
        if self.batch_norm and self.constraint != "none":
            raise ConfigError(f"batch_norm rescales every hidden layer, so constraint {self.constraint} would not "
                              "hold: use one of the two")
        if any(epoch < 1 for epoch in self.lr_drops):
            raise ConfigError(f"lr_drops must be epochs >= 1, got {list(self.lr_drops)}")

    @property
    def train_radius(self) -> float:
        """The radius the certificate-aware losses train at."""
        return self.cert_magnitude if self.train_eps is None else self.train_eps

    def objective(self) -> Objective:
        """The part of the recipe that a batch's loss reads."""
        return Objective(**{f.name: getattr(self, f.name) for f in fields(Objective)})

    def model_config(self) -> MLPConfig:
        return MLPConfig(hidden=self.hidden, activation=self.activation, group_size=self.group_size)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden), "lr_drops": list(self.lr_drops)}

    def schedule(self, progress: float) -> Schedule:
        """The radius and clean weight after `progress` epochs (fractions included)."""
        return Schedule.at(progress, self.train_radius, self.ramp_epochs, self.warmup_epochs, self.ramp_shape,
                           self.final_clean_weight)

    @classmethod
    def build(cls, file: Path | None = None, **overrides: Any) -> Recipe:
        """The defaults, then the recipe file's entries, then `overrides` (the flags given)."""
        entries = {} if file is None else read_recipe(file)
        return cls(**{**entries, **overrides})


def recipe_path(name: str) -> Path:
    """A recipe's file: `name` itself if it is a file, else recipes/<name>.json."""
    path = Path(name)
    return path if path.suffix == ".json" or path.is_file() else RECIPES / f"{name}.json"


def read_recipe(path: Path) -> dict[str, Any]:
    """The entries of a JSON recipe file, each a field of `Recipe`."""
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.json")))
        raise ConfigError(f"no recipe {path}: the named recipes are {known}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read recipe {path}: {err}") from None
    names = {f.name for f in fields(Recipe)}
    if not isinstance(entries, dict) or not set(entries) <= names:
        unknown = sorted(set(entries) - names) if isinstance(entries, dict) else entries
        raise ConfigError(f"recipe {path} holds unknown entries {unknown}")
    return entries


class NonFiniteError(Failure):
    """The loss or a bound became NaN or infinite."""

    status = 3


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch: loss and class loss per batch, error rates per example."""

    loss: float
    class_loss: float
    error: float
    cert_error: float
    max_logit_bound: float  # max_k L_k after the epoch's last step


@dataclass
class Run:
    """Everything a training run carries from one epoch to the next."""

    recipe: Recipe
    model: LipschitzMLP | BatchNormMLP  # what trains; `network()` is what it computes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    loss_fn: LossFn = batch_loss
    epoch: int = 0
    epoch_seconds: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, recipe: Recipe, device: torch.device, compile: bool = False, config: MLPConfig | None = None) -> Run:
        """A fresh run: the model initialised from the recipe's seed, fused Adam, the decay schedule.

        `config` replaces the recipe's model configuration (bench.py's original
        data path normalises in its loader, so its model must not).
        """
        torch.manual_seed(recipe.seed)
        config = config or recipe.model_config()
        model = (BatchNormMLP(config) if recipe.batch_norm else LipschitzMLP(config)).to(device)
        start_constrained_(model, recipe)
        # fused: one kernel for all parameters; the step is a large share of this small model's time
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, fused=True)
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, recipe.gamma)
        if recipe.lr_drops:  # both multiply the rate in place, one after the other
            drops = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.lr_drops), recipe.lr_drop_factor)
            scheduler = torch.optim.lr_scheduler.ChainedScheduler([scheduler, drops], optimizer)
        generator = torch.Generator(device=device).manual_seed(recipe.seed)
        return cls(recipe, model, optimizer, scheduler, generator, compiled(batch_loss) if compile else batch_loss)

    def network(self) -> LipschitzMLP:
        """The plain MLP the run has trained: with batch norm, folded with the running statistics (a copy)."""
        return self.model.folded() if isinstance(self.model, BatchNormMLP) else self.model

    def state(self) -> TrainingState:
        return TrainingState(self.recipe.to_dict(), self.epoch, list(self.epoch_seconds), self.model.state_dict(),
                             self.optimizer.state_dict(), self.scheduler.state_dict(), self.generator.get_state())

    def restore(self, state: TrainingState) -> None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.generator.set_state(state.generator.to(torch.uint8).cpu())
        self.epoch, self.epoch_seconds = state.epoch, list(state.epoch_seconds)


def compiled(loss_fn: LossFn) -> LossFn:
    """`loss_fn` under torch.compile; a failure to compile stops the run with one line."""
    fast = torch.compile(loss_fn)

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fast(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise Failure(f"torch.compile failed ({reason}): run without --compile") from None

    return call


@torch.no_grad()
def start_constrained_(model: LipschitzMLP | BatchNormMLP, recipe: Recipe) -> None:
    """Start a fresh model in the recipe's constraint set. bjorck: orthonormal weights
    (torch.nn.init.orthogonal_). linf-proj acts from the first step on, as it always has: the
    demo's start has row L1 norm 1, inside the set for a radius of 1 or more."""
    if recipe.constraint == "bjorck":
        for layer in model.linear_layers():
            torch.nn.init.orthogonal_(layer.weight)


@torch.no_grad()
def constrain_(model: LipschitzMLP | BatchNormMLP, recipe: Recipe) -> None:
    """Pull every Linear weight back into the recipe's constraint set after a step.

    linf-proj: each row projected onto the L1 ball of radius constraint_radius,
    so each layer's L-inf operator norm is at most that. bjorck: one Bjorck
    iteration takes each weight back towards orthonormal rows or columns,
    leaving no singular value above 1 unless the step pushed one past 2
    (`lipschitz.orthonormalise`). A projection after the step, not Anil et
    al.'s reparametrisation through 15 or more iterations in every forward
    pass, which on a CPU would cost several plain steps. Certificates bound
    the weights as they are, either way. none, the only choice with batch
    norm: nothing to do.
    """
    if recipe.constraint == "none":
        return
    for layer in model.linear_layers():
        if recipe.constraint == "linf-proj":
            lipschitz.project_rows_l1_ball_(layer.weight, recipe.constraint_radius)
        elif recipe.constraint == "bjorck":
            lipschitz.orthonormalise_(layer.weight, BJORCK_STEP_ITERATIONS)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, schedule: Schedule | None = None) -> torch.Tensor:
    """One optimiser step on the recipe's objective; returns [loss, class loss, errors, certified].

    Without a schedule the losses train at the recipe's full radius. With precision bfloat16 the
    objective runs under torch.autocast: matrix products, and what follows them, in bfloat16, the
    weights and their updates in float32. It changes how the network is trained, not what is
    certified: evaluation and certificates take the float32 network as always.
    The certified count uses the global rule with the penalty's bounds (in l2
    their power-iteration norms make it an estimate). Nothing leaves the
    device, so a step never waits on it.
    """
    recipe = run.recipe
    schedule = schedule or Schedule.at(1.0, recipe.train_radius, 0.0)
    args = (x, y, recipe.objective(), schedule)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=recipe.precision == "bfloat16"):
        if isinstance(run.model, BatchNormMLP):  # the objective of the network folded with this batch's statistics
            loss, class_loss, logits, threshold = run.model.call_folded(run.loss_fn, *args)
        else:
            loss, class_loss, logits, threshold = run.loss_fn(run.model, *args)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), recipe.grad_clip)
    run.optimizer.step()
    constrain_(run.model, recipe)
    with torch.no_grad():
        errors = (logits.argmax(dim=1) != y).sum()
        certified = certificates.certified(logits, y, threshold, recipe.cert_magnitude).sum()
        return torch.stack([loss, class_loss, errors, certified])


def train_epoch(run: Run, train: Split, max_batches: int | None = None) -> EpochStats:
    """One shuffled pass over `train` (its first `max_batches` batches, if given), after `run.epoch` epochs.

    Statistics stay on the device and are read back once, at the end.
    """
    recipe = run.recipe
    run.model.train()
    order = torch.randperm(len(train), generator=run.generator, device=train.labels.device)
    batches = order.split(recipe.batch_size)[:max_batches]
    totals = torch.zeros(4, device=train.labels.device)
    for number, index in enumerate(batches):
        schedule = recipe.schedule(run.epoch + number / len(batches))
        totals += train_step(run, train.images[index], train.labels[index], schedule)
    with torch.no_grad():
        max_logit_bound = run.network().logit_bounds(recipe.norm).logits.max()
    loss_sum, class_sum, errors, certified, max_logit_bound = torch.cat([totals, max_logit_bound[None]]).tolist()
    seen = sum(len(index) for index in batches)
    return EpochStats(loss_sum / len(batches), class_sum / len(batches), errors / seen,
                      1 - certified / seen, max_logit_bound)
