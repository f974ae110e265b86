"""What the command-line scripts share: one-line errors, argument types, recipe flags, data and device."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import torch

from errors import Failure
from groupsort import ACTIVATIONS
from shards import Shard

if TYPE_CHECKING:
    from training import Recipe, Setting

EXIT_USAGE = 2  # bad input: arguments, data files, checkpoints, output folders


class UsageError(Failure):
    """Bad input found after argument parsing."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not usage plus message.

    Abbreviated flags are refused: `--epoch 3` is a typo, not `--epochs 3`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def machine() -> str:
    """The machine a measurement ran on: its architecture, its processor's model name (Linux's /proc/cpuinfo;
    the same code on another processor may sum floats in another order) and its cores."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"{platform.machine()}, {names[0] if names else platform.processor() or 'unknown processor'}, " \
           f"{os.cpu_count()} cores"


def provenance(script: str, argv: list[str] | None = None) -> dict[str, Any]:
    """What a measurement ran with, for the JSON beside its figures: the command (`script` and its arguments,
    `sys.argv[1:]` unless given, quoted for a shell to run as written), torch's threads, the machine, torch's
    version and the date."""
    return {"command": " ".join([f"python {script}", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
            "threads": torch.get_num_threads(), "machine": machine(),
            "torch": str(torch.__version__), "date": time.strftime("%Y-%m-%d")}


def run(main: Callable[[], None]) -> None:
    """Run a script's main, turning the project's own failures into one line on stderr and their exit status,
    and Ctrl-C or a termination signal (`Stopped`) into one line and 130 (or 128 + the signal).

    Any other exception is a programming error: it keeps its traceback.
    """
    try:
        main()
    except Failure as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.status)
    except (KeyboardInterrupt, Stopped) as stop:  # a run that keeps partial results says so before it gets here
        print("\ninterrupted", file=sys.stderr)
        sys.exit(getattr(stop, "status", 130))


def _number(kind: type, minimum: float, strict: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
        if value in (float("inf"), float("-inf")) or value != value:
            raise argparse.ArgumentTypeError(f"{text} is not finite")
        if value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"{text} must be {relation} {minimum}")
        return value

    return parse


finite_float = _number(float, float("-inf"), strict=False)
positive_int = _number(int, 0, strict=True)
positive_float = _number(float, 0.0, strict=True)
nonnegative_float = _number(float, 0.0, strict=False)


def shard(text: str) -> Shard:
    """A shard K/N, 0 <= K < N."""
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (what a scheduler such as
    SLURM grants), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def unit_float(text: str) -> float:
    """A number in [0, 1]."""
    value = nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text} must be <= 1")
    return value


def half_float(text: str) -> float:
    """A number in (0, 0.5]."""
    value = positive_float(text)
    if value > 0.5:
        raise argparse.ArgumentTypeError(f"{text} must be <= 0.5")
    return value


def _integers(text: str, what: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. '1024,1024'."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
    return values


def widths(text: str) -> tuple[int, ...]:
    """Hidden widths: '500' or '1024,1024'."""
    values = _integers(text, "widths")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return values


def indices(text: str) -> tuple[int, ...]:
    """Distinct non-negative indices: '675,880'."""
    values = _integers(text, "indices")
    if min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"indices must be distinct and non-negative, got {text!r}")
    return values


def layers(text: str) -> tuple[str, ...]:
    """Convolutional layers: '16:4:2:1,32:4:2:1' or 'down,bcop:16:3', or 'none' for none (checked by the model)."""
    if text.strip().lower() == "none":
        return ()
    return tuple(part.strip() for part in text.split(","))


def epochs(text: str) -> tuple[int, ...]:
    """Epochs: '50,55', or 'none' for no epoch."""
    if text.strip().lower() == "none":
        return ()
    values = _integers(text, "epochs")
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"epochs must be >= 1, got {text!r}")
    return values


def add_recipe_flags(group: argparse._ArgumentGroup, recipe: type[Recipe]) -> None:
    """A flag for every setting of `recipe` (`training.Recipe.settings`), absent from the namespace unless given.

    The default is only shown in the help, since the recipe's own default (or its file's entry)
    applies when the flag is not given.
    """
    defaults = recipe()
    for name, setting in recipe.settings().items():
        help = f"{setting.help} (default: {setting.shown(getattr(defaults, name))})"
        if setting.kind is bool:
            parse: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
        elif setting.choices:
            parse = {"choices": setting.choices}
        else:
            parse = {"type": recipe_flag_type(setting)}
        group.add_argument(*setting.names(name), dest=name, default=argparse.SUPPRESS, help=help, **parse)


def recipe_flag_type(setting: Setting) -> Callable[[str], Any]:
    """The parser of a recipe flag's value: of its kind, and refusing what the setting's check refuses."""
    if setting.kind is tuple:
        return {"widths": widths, "epochs": epochs, "layers": layers}[setting.item]
    if setting.kind is int:
        return {"": int, "positive": positive_int}[setting.check]
    return {"positive": positive_float, "nonnegative": nonnegative_float, "unit": unit_float,
            "half": half_float}[setting.check]


def recipe_overrides(args: argparse.Namespace, recipe: type) -> dict[str, Any]:
    """The recipe fields given on the command line (recipe flags are absent unless given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(recipe) if hasattr(args, f.name)}


def check_output_file(path: Path, flag: str) -> None:
    """Fail before any work when `path` cannot become a file: it is a folder, or what should be a folder
    above it is a file, or the nearest existing folder cannot be written. Nothing is created here."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path} cannot be written: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} cannot be written: no permission to write in {folder}")


class Stopped(BaseException):
    """A termination signal (SIGTERM, SIGHUP) turned into an exception, so that a run stops as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.status = 128 + signum


def stop_on_signals() -> None:
    """Raise `Stopped` on SIGTERM and SIGHUP, as a scheduler or `timeout` sends them."""

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def add_architecture_flags(parser: argparse.ArgumentParser) -> None:
    """--activation, --group_size, --hidden of a checkpoint, None when not given."""
    parser.add_argument("--activation", choices=ACTIVATIONS, default=None, help="activation")
    parser.add_argument("--group_size", "--group-size", type=positive_int, default=None,
                        help="GroupSort group size")
    parser.add_argument("--hidden", type=widths, default=None, help="hidden widths, e.g. 500 or 1024,1024")


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    """--data-dir, by default $MNIST_ROOT when set, else ./data."""
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MNIST_ROOT", "data")),
                        help="folder holding MNIST/raw; downloaded there if missing "
                             "(default: $MNIST_ROOT if set, else data; now %(default)s)")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (default: auto, CUDA when available)")
    parser.add_argument("--no-cuda", action="store_true", help="same as --device cpu")


def pick_device(name: str, no_cuda: bool) -> torch.device:
    """--device, --no-cuda: the device to run on; the two flags may not contradict each other."""
    if no_cuda and name == "cuda":
        raise UsageError("--no-cuda and --device cuda contradict each other: give one")
    if no_cuda or name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
