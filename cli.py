"""What the two command-line scripts share: one-line errors, argument types, device choice."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

import torch

from groupsort import ACTIVATIONS
from mnist_data import DataError
from models import CheckpointError

EXIT_USAGE = 2  # bad input: arguments, data files, checkpoints, output folders


class Failure(Exception):
    """An error reported in one line, with its own exit status."""

    status = EXIT_USAGE


class UsageError(Failure):
    """Bad input found after argument parsing."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not usage plus message.

    Abbreviated flags are refused: `--epoch 3` is a typo, not `--epochs 3`.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def run(main: Callable[[], None]) -> None:
    """Run a script's main, turning bad input into one line on stderr and exit status 2."""
    try:
        main()
    except Failure as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.status)
    except (DataError, CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _number(kind: type, minimum: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value != value or value < minimum or (strict and value == minimum):
            relation = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"{text} must be {relation} {minimum}")
        return value

    return parse


positive_int = _number(int, 0, strict=True)
positive_float = _number(float, 0.0, strict=True)
nonnegative_float = _number(float, 0.0, strict=False)


def widths(text: str) -> tuple[int, ...]:
    """Hidden widths: '500' or '1024,1024'."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"hidden widths must be positive, got {text!r}")
    return values


def add_architecture_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--activation, --group_size, --hidden; without defaults they default to None."""
    parser.add_argument("--activation", choices=ACTIVATIONS, default="groupsort" if defaults else None,
                        help="activation: groupsort or relu (default: %(default)s)")
    parser.add_argument("--group_size", "--group-size", type=positive_int, default=10 if defaults else None,
                        help="GroupSort group size (default: %(default)s)")
    parser.add_argument("--hidden", type=widths, default=(500,) if defaults else None,
                        help="hidden widths, e.g. 500 or 1024,1024 (default: 500)")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (default: auto, CUDA when available)")
    parser.add_argument("--no-cuda", action="store_true", help="same as --device cpu")


def pick_device(name: str, no_cuda: bool) -> torch.device:
    if no_cuda or name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
