"""GroupSort and ReLU activations, each with its rules for bounds and intervals (one rule per operator).

A per-unit bound b says that unit j of a layer is b_j-Lipschitz in the input's
p-norm: |h_j(x) - h_j(x')| <= b_j * ||x - x'||_p. The rules hold word for word
in every p-norm, because they only compare the units' changes with each other.
A whole-vector bound ||h(x) - h(x')||_p <= B ||x - x'||_p passes unchanged, both
activations being 1-Lipschitz in every p-norm. An interval lower <= h <= upper
passes by applying the activation to both ends, both being monotone in each
coordinate.
"""

from __future__ import annotations

import torch
from torch import nn

from errors import ConfigError

ACTIVATIONS = ("groupsort", "relu")


class GroupSort(nn.Module):
    """Sort consecutive groups of `group_size` units in ascending order.

    Group size 2 is MaxMin (each pair becomes (min, max)); group size equal to
    the width is FullSort. GroupSort is 1-Lipschitz in every p-norm and
    gradient-norm preserving (Anil, Lucas & Grosse, ICML 2019).
    """

    def __init__(self, group_size: int) -> None:
        super().__init__()
        if group_size < 1:
            raise ConfigError(f"group size must be a positive integer, got {group_size}")
        self.group_size = group_size

    def check_width(self, width: int) -> None:
        """Raise a clear error when `width` units do not split into whole groups."""
        if width % self.group_size:
            raise ConfigError(f"group size {self.group_size} does not divide the layer width {width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.unflatten(-1, (-1, self.group_size))
        return groups.sort(dim=-1).values.flatten(-2)

    def propagate_bound(self, bound: torch.Tensor) -> torch.Tensor:
        """Per-unit bounds after sorting: each unit gets its group's maximum.

        Sound because the k-th smallest of a group is 1-Lipschitz in the group's
        max norm: |sort(a)_k - sort(a')_k| <= max_i |a_i - a'_i| <= max_i b_i ||dx||_p.
        """
        groups = bound.unflatten(-1, (-1, self.group_size))
        return groups.amax(dim=-1, keepdim=True).expand_as(groups).flatten(-2)

    def propagate_whole_bound(self, bound: torch.Tensor) -> torch.Tensor:
        """||sort(a) - sort(a')||_p <= ||a - a'||_p for every p >= 1 (sorting is a contraction), so B is unchanged."""
        return bound

    def propagate_interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sort both ends: the k-th smallest of a group is nondecreasing in every coordinate,
        so lower <= a <= upper gives sort(lower)_k <= sort(a)_k <= sort(upper)_k."""
        return self(lower), self(upper)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class ReLU(nn.ReLU):
    """ReLU, elementwise and 1-Lipschitz."""

    def check_width(self, width: int) -> None:
        """Any width works for an elementwise activation."""

    def propagate_bound(self, bound: torch.Tensor) -> torch.Tensor:
        """Per-unit bounds after ReLU: unchanged, as |relu(a) - relu(a')| <= |a - a'|."""
        return bound

    def propagate_whole_bound(self, bound: torch.Tensor) -> torch.Tensor:
        """Elementwise 1-Lipschitz, so ||relu(a) - relu(a')||_p <= ||a - a'||_p: B is unchanged."""
        return bound

    def propagate_interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ReLU is nondecreasing: relu(lower) <= relu(a) <= relu(upper)."""
        return self(lower), self(upper)


def make_activation(name: str, group_size: int) -> GroupSort | ReLU:
    """The activation called `name` ("groupsort" or "relu")."""
    if name == "groupsort":
        return GroupSort(group_size)
    if name == "relu":
        return ReLU()
    raise ConfigError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
