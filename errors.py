"""The project's own failures: expected conditions that end a script with one line, never a traceback.

Every other exception is a programming error and keeps its traceback (see `cli.run`).
"""

from __future__ import annotations


class Failure(Exception):
    """An expected failure, reported in one line with the exit status `status`."""

    status = 2


class ConfigError(Failure):
    """An architecture, recipe, norm or method that cannot be built or does not exist."""


class OutputError(Failure):
    """An output file or folder cannot be written."""
