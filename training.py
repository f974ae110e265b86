"""Training: the recipe (what a run is), one optimiser step, one epoch, and the state a run carries.

A `Recipe` is built once, from its defaults (the demo's), a recipe file in
`recipes/` and the command line's flags, and then passed down unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch.nn.utils import parametrize

import bcop
import certificates
import lipschitz
import orthonormal
from checkpoints import TrainingState
from errors import ConfigError, Failure
from groupsort import ACTIVATIONS
from mnist_data import Split
from models import BatchNormMLP, LipschitzMLP, MLPConfig
from objectives import LOSSES, RAMP_SHAPES, LossFn, Objective, Schedule, batch_loss
from operators import Linear

RECIPES = Path(__file__).resolve().parent / "recipes"
CONSTRAINTS = ("none", "linf-proj", "bjorck", "orthonormal")
PRECISIONS = ("float32", "bfloat16")  # of a training step's arithmetic, see `train_step`
BJORCK_STEP_ITERATIONS = 1  # after each optimiser step, see `constrain_`

Check = Literal["", "positive", "nonnegative", "unit", "half"]
CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {  # a number's check: its test, and the bound in words
    "positive": (lambda value: value > 0 and math.isfinite(value), "> 0"),
    "nonnegative": (lambda value: value >= 0 and math.isfinite(value), ">= 0"),
    "unit": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "half": (lambda value: 0 < value <= 0.5, "in (0, 0.5]"),
}


@dataclass(frozen=True)
class Setting:
    """How one `Recipe` field is given and checked: the single declaration of a training setting.

    The flag of train_mnist.py (`cli.add_recipe_flags`), the checks of a recipe file's entry and the
    row of docs/usage.md's flag table (`recipe_flag_table`) all come from it.
    """

    kind: type  # int, float, bool, str (one of `choices`) or tuple (of ints; of strings for item "layers")
    help: str
    check: Check = ""  # of a number, beside its kind; a tuple's entries are always >= 1
    choices: tuple[str, ...] = ()
    item: str = ""  # what a tuple's entries are: "widths" or "epochs" (its flag parser, see cli.py)
    flags: tuple[str, ...] = ()  # the flag's spellings, where not --<field with dashes>
    unset: str = ""  # where None is allowed: what it stands for, shown as the default

    def names(self, field_name: str) -> tuple[str, ...]:
        """The flag's spellings (a bool's --no- form aside, which argparse.BooleanOptionalAction adds)."""
        return self.flags or (f"--{field_name.replace('_', '-')}",)

    def shown(self, value: Any) -> str:
        """A value as --help and the docs show a default."""
        if value is None:
            return self.unset
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ",".join(map(str, value)) or "none"
        return str(value)

    def values(self) -> str:
        """What the setting takes, in words: the values column of docs/usage.md's flag table."""
        if self.choices:
            return ", ".join(f"`{choice}`" for choice in self.choices)
        if self.kind is bool:
            return "on or off"
        if self.kind is tuple and self.item == "layers":
            return "`C:K:S:P`, `bcop:C:K` or `down`, comma-separated"
        if self.kind is tuple:
            return f"{self.item} >= 1, comma-separated"
        number = "an integer" if self.kind is int else "a number"
        return f"{number} {CHECKS[self.check][1]}" if self.check else number

    def check_type(self, name: str, value: Any) -> None:
        """A recipe file can hold any JSON type: a wrong one is refused here, not met later as a TypeError."""
        integer = lambda item: isinstance(item, int) and not isinstance(item, bool)  # noqa: E731
        if self.kind is tuple:
            entry = (lambda item: isinstance(item, str)) if self.item == "layers" else integer
            valid, wanted = isinstance(value, (list, tuple)) and all(map(entry, value)), f"a list of {self.item}"
        elif self.kind is bool:
            valid, wanted = isinstance(value, bool), "true or false"
        elif self.kind is int:
            valid, wanted = integer(value), "an integer"
        elif self.kind is float:
            valid = integer(value) or isinstance(value, float) or (value is None and bool(self.unset))
            wanted = "a number"
        else:
            return  # a choice: checked among its names
        if not valid:
            raise ConfigError(f"{name} must be {wanted}, got {value!r}")

    def check_value(self, name: str, value: Any) -> None:
        """A choice among the known ones, a number within its check, a tuple's entries >= 1."""
        if self.choices and value not in self.choices:
            raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(self.choices)}")
        if self.kind is tuple and self.item != "layers" and any(item < 1 for item in value):
            raise ConfigError(f"{name} must be {self.item} >= 1, got {list(value)}")
        if self.check and value is not None and not CHECKS[self.check][0](value):
            raise ConfigError(f"{name} must be a finite number {CHECKS[self.check][1]}, got {value}")


def setting(default: Any, kind: type, help: str, **details: Any) -> Any:
    """A `Recipe` field with its default and its `Setting` (kind, help and the `details`: check, choices, ...)."""
    return field(default=default, metadata={"setting": Setting(kind, help, **details)})


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a training run computes; the defaults are the original demo's.

    Each field declares its setting once (`setting`): its flag, checks and help come from there.
    """

    # the network
    convs: tuple[str, ...] = setting((), tuple, "convolutional layers before the hidden ones: C:K:S:P (channels, "
                                     "kernel, stride, padding), bcop:C:K (orthogonal) or down (invertible "
                                     "downsampling), e.g. 16:4:2:1,32:4:2:1", item="layers")
    hidden: tuple[int, ...] = setting((500,), tuple, "hidden widths, e.g. 500 or 1024,1024", item="widths")
    activation: str = setting("groupsort", str, "activation", choices=ACTIVATIONS)
    group_size: int = setting(10, int, "GroupSort group size", check="positive",
                              flags=("--group_size", "--group-size"))
    batch_norm: bool = setting(False, bool, "train with batch norm after every hidden Linear layer, folded into it "
                               "for evaluation, saving and certificates")  # models.BatchNormMLP
    # the optimisation: Adam, the learning rate times gamma after every epoch and times lr_drop_factor
    # after each epoch listed in lr_drops; gradients clipped to grad_clip in L2 norm (0: not clipped)
    epochs: int = setting(100, int, "training epochs", check="positive")
    batch_size: int = setting(128, int, "training batch size", check="positive")
    lr: float = setting(1e-3, float, "Adam learning rate", check="positive")
    gamma: float = setting(0.985, float, "learning-rate decay per epoch", check="positive")
    lr_drops: tuple[int, ...] = setting((), tuple, "multiply the learning rate by --lr-drop-factor after these "
                                        "epochs, e.g. 50,55", item="epochs")
    lr_drop_factor: float = setting(0.2, float, "learning-rate factor of each drop", check="positive")
    grad_clip: float = setting(0.0, float, "clip the gradient to this L2 norm (0: no clipping)", check="nonnegative")
    precision: str = setting("float32", str, "arithmetic of a training step: bfloat16 runs it under torch.autocast "
                             "(faster matrix products where the processor has them); the saved network and its "
                             "certificates are float32", choices=PRECISIONS)
    seed: int = setting(0, int, "random seed")
    # the objective (see objectives.py)
    loss: str = setting("ce", str, "training objective, see objectives.py", choices=LOSSES)
    lc_penalty: float = setting(0.01, float, "weight of the soft-max logit-bound penalty", check="nonnegative",
                                flags=("--lc_penalty", "--lc-penalty"))
    norm: str = setting("linf", str, "input norm of the penalised bound and of the certificate",
                        choices=lipschitz.NORMS)
    train_eps: float | None = setting(None, float, "radius the lmt, hinge and ibp losses train at",
                                      check="nonnegative", unset="--cert_magnitude")  # see `train_radius`
    warmup_epochs: float = setting(0.0, float, "epochs at training radius 0 before the ramp", check="nonnegative")
    ramp_epochs: float = setting(0.0, float, "ramp the training radius up from 0 over this many epochs",
                                 check="nonnegative")
    ramp_shape: str = setting("linear", str, "linear, or smooth: polynomial, then linear (auto_LiRPA)",
                              choices=RAMP_SHAPES)
    final_clean_weight: float = setting(0.5, float, "weight of the clean cross-entropy in the ibp loss once the "
                                        "radius is reached", check="unit")
    hinge_target: float = setting(1.0, float, "target certified gap of the hinge loss", check="positive")
    constraint: str = setting("none", str, "linf-proj: after every step, project each weight row onto the L1 ball, "
                              "so every layer's L-inf operator norm stays <= --constraint-radius; bjorck: start "
                              "orthonormal and take each weight back to orthonormal after every step, so every "
                              "layer's L2 operator norm stays <= 1; orthonormal: every weight computed by Bjorck's "
                              "iteration inside the forward pass (orthonormal.py), stored orthonormalised",
                              choices=CONSTRAINTS)
    constraint_radius: float = setting(1.0, float, "L1 radius of the rows under linf-proj", check="positive")
    bjorck_iterations: int = setting(20, int, "Bjorck iterations in each forward pass under orthonormal",
                                     check="positive")
    bjorck_order: int = setting(1, int, "order of each Bjorck iteration under orthonormal (1 to 4)",
                                check="positive")
    bjorck_beta: float = setting(0.5, float, "step of an order-1 Bjorck iteration under orthonormal",
                                 check="half")
    # the certificate of the final report
    cert_magnitude: float = setting(0.1, float, "radius of the certificate in --norm, pixel units",
                                    check="nonnegative", flags=("--cert_magnitude", "--cert-magnitude"))
    method: str = setting("global", str, "certificate rule of the final report, see certify.py",
                          choices=certificates.METHODS)

    def __post_init__(self) -> None:
        """Every field checked against its setting (a tuple's given as a list made a tuple), then the pairs."""
        for name, declared in self.settings().items():
            value = getattr(self, name)
            declared.check_type(name, value)
            if declared.kind is tuple:
                value = tuple(value)
                object.__setattr__(self, name, value)
            declared.check_value(name, value)
        self.model_config()  # the layers checked
        plain_convs = [spec for spec in self.convs if not spec.startswith("bcop") and spec != "down"]
        if plain_convs and self.constraint in ("bjorck", "orthonormal"):
            raise ConfigError(f"constraint {self.constraint} keeps Linear layers orthonormal and bcop convolutions "
                              f"orthogonal, not the plain convolution {plain_convs[0]}: use bcop:C:K")
        if self.batch_norm and self.convs:
            raise ConfigError("batch_norm is for Linear layers only: drop it or the convolutions")
        if self.batch_norm and self.constraint != "none":
            raise ConfigError(f"batch_norm rescales every hidden layer, so constraint {self.constraint} would not "
                              "hold: use one of the two")
        self.bjorck()  # its settings checked

    def bjorck(self) -> orthonormal.Bjorck:
        """The settings of Bjorck's iteration under the orthonormal constraint."""
        return orthonormal.Bjorck(self.bjorck_iterations, self.bjorck_order, self.bjorck_beta)

    @classmethod
    def settings(cls) -> dict[str, Setting]:
        """Every field's setting, by field name, in the fields' order."""
        return {f.name: f.metadata["setting"] for f in fields(cls)}

    @property
    def train_radius(self) -> float:
        """The radius the certificate-aware losses train at."""
        return self.cert_magnitude if self.train_eps is None else self.train_eps

    def objective(self) -> Objective:
        """The part of the recipe that a batch's loss reads."""
        return Objective(**{f.name: getattr(self, f.name) for f in fields(Objective)})

    def model_config(self) -> MLPConfig:
        return MLPConfig(convs=self.convs, hidden=self.hidden, activation=self.activation, group_size=self.group_size)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON entries: tuples as lists."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    def schedule(self, progress: float) -> Schedule:
        """The radius and clean weight after `progress` epochs (fractions included)."""
        return Schedule.at(progress, self.train_radius, self.ramp_epochs, self.warmup_epochs, self.ramp_shape,
                           self.final_clean_weight)

    @classmethod
    def build(cls, file: Path | None = None, **overrides: Any) -> Recipe:
        """The defaults, then the recipe file's entries, then `overrides` (the flags given). Every entry of the
        file is checked against its setting, also one that a flag overrides: a bad file is a bad file."""
        entries = {} if file is None else read_recipe(file)
        settings = cls.settings()
        for name, value in entries.items():
            try:
                settings[name].check_type(name, value)
                settings[name].check_value(name, tuple(value) if settings[name].kind is tuple else value)
            except ConfigError as err:
                raise ConfigError(f"recipe {file}: {err}") from None
        return cls(**{**entries, **overrides})


def recipe_flag_table() -> str:
    """The Markdown table of the recipe's flags that docs/usage.md holds between its recipe-flags markers."""
    defaults = Recipe()
    rows = ["| flag | recipe entry | default | values | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, declared in Recipe.settings().items():
        names = declared.names(name)
        if declared.kind is bool:
            names += (f"--no-{names[0].removeprefix('--')}",)
        flags = ", ".join(f"`{flag}`" for flag in names)
        default = declared.shown(getattr(defaults, name))
        rows.append(f"| {flags} | `{name}` | `{default}` | {declared.values()} | {declared.help} |")
    return "\n".join(rows) + "\n"


def recipe_files_table() -> str:
    """The Markdown table of the named recipes (recipes/*.json) as the flags they amount to, which docs/usage.md
    holds between its recipe-files markers."""
    settings = Recipe.settings()
    rows = ["| recipe | entries (flags) |", "| --- | --- |"]
    for path in sorted(RECIPES.glob("*.json"), key=lambda path: path.stem):
        entries = read_recipe(path)
        flags = []
        for name, value in entries.items():
            declared = settings[name]
            if isinstance(value, bool):
                flags.append(declared.names(name)[0] if value else f"--no-{declared.names(name)[0].removeprefix('--')}")
            else:
                flags.append(f"{declared.names(name)[0]} {declared.shown(tuple(value) if isinstance(value, list) else value)}")
        rows.append(f"| `{path.stem}` | " + (f"`{' '.join(flags)}`" if flags else "none: the defaults") + " |")
    return "\n".join(rows) + "\n"


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
        """The plain MLP the run has trained: with batch norm, folded with the running statistics (a copy);
        with orthonormal layers, the matrices they compute now (a copy, `orthonormal.frozen`)."""
        return self.model.folded() if isinstance(self.model, BatchNormMLP) else orthonormal.frozen(self.model)

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
    (torch.nn.init.orthogonal_); orthonormal: the same start, and from then on every weight computed by
    Bjorck's iteration (`orthonormal.orthonormalise_layers_`). linf-proj acts from the first step on, as it
    always has: the demo's start has row L1 norm 1, inside the set for a radius of 1 or more. Whatever the
    constraint, a bcop convolution's kernel is computed by BCOP from then on (`bcop.py`)."""
    plain = model.mlp if isinstance(model, BatchNormMLP) else model
    for layer in plain.affine_layers():
        if getattr(layer, "orthogonal", False):
            bcop.orthogonalise_(layer, recipe.bjorck())
    if recipe.constraint == "orthonormal":
        orthonormal.orthonormalise_layers_(model, recipe.bjorck())
    elif recipe.constraint == "bjorck":
        for layer in orthonormal.linear_layers(model):
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
    pass, which on a CPU would cost several plain steps (that is the
    orthonormal constraint). Certificates bound the weights as they are,
    either way. none and orthonormal (the forward pass keeps it), the only
    choice with batch norm being none: nothing to do.
    """
    if recipe.constraint in ("none", "orthonormal"):
        return
    for layer in model.affine_layers():
        if recipe.constraint == "linf-proj":  # a kernel's rows: its matrix's rows are those cut at the border
            lipschitz.project_rows_l1_ball_(layer.weight.flatten(1), recipe.constraint_radius)
        elif recipe.constraint == "bjorck" and isinstance(layer, Linear):
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
    with (torch.autocast(x.device.type, torch.bfloat16, enabled=recipe.precision == "bfloat16"),
          parametrize.cached()):  # a parametrised weight (Bjorck, BCOP) computed once per step, not at each use
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

    Statistics stay on the device and are read back once, at the end, beside whether the weights are finite.
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
        network = run.network()  # a diverged step's non-finite weights have no bound (an L2 one's SVD would fail)
        finite = all(bool(torch.isfinite(parameter).all()) for parameter in network.parameters())
        max_logit_bound = (network.logit_bounds(recipe.norm).per_logit.max() if finite
                           else torch.tensor(math.inf, device=totals.device))
    loss_sum, class_sum, errors, certified, max_logit_bound = torch.cat([totals, max_logit_bound[None]]).tolist()
    seen = sum(len(index) for index in batches)
    return EpochStats(loss_sum / len(batches), class_sum / len(batches), errors / seen,
                      1 - certified / seen, max_logit_bound)
