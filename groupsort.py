"""GroupSort and ReLU as operators: each activation with its bound, interval, rounding and encoding rules.

A per-unit bound b says that unit j of a layer is b_j-Lipschitz in the input's
p-norm: |h_j(x) - h_j(x')| <= b_j * ||x - x'||_p. The rules hold word for word
in every p-norm, because they only compare the units' changes with each other.
A whole-vector bound ||h(x) - h(x')||_p <= B ||x - x'||_p passes unchanged, both
activations being 1-Lipschitz in every p-norm. An interval lower <= h <= upper
passes by applying the activation to both ends, both being monotone in each
coordinate. Neither rounds: a sort or a max returns one of its inputs exactly,
so a bound on the inputs' errors passes by the per-unit bound rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import rounding
from errors import ConfigError
from lipschitz import OperatorNorm
from onnxgraph import Flow, Graph
from operators import Activation, Box, Slope
from program import Program, Wire, Wires

ACTIVATIONS = ("groupsort", "relu", "maxmin", "fullsort")


def sorting_network(size: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs (i, j), i < j, that sort `size` wires ascending: Batcher's odd-even merge sort
    for the next power of two, without the pairs that touch a wire beyond `size` (padding wires holding
    +inf, which no comparison moves)."""
    padded = 1 << max(0, (size - 1).bit_length())
    pairs = []
    p = 1
    while p < padded:
        k = p
        while k >= 1:
            for j in range(k % p, padded - k, 2 * k):
                for i in range(min(k, padded - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return [(i, j) for i, j in pairs if j < size]


def bitonic_stages(size: int) -> list[list[tuple[int, int]]]:
    """Batcher's bitonic sorter on `size` wires (a power of two) as stages of compare-exchanges (low, high):
    after a stage, wire low holds the smaller value of the two and wire high the larger. Each stage pairs
    every wire once, so each is one MaxMin layer behind a permutation; the log2(size) (log2(size) + 1) / 2
    stages sort the wires ascending."""
    if size < 2 or size & (size - 1):
        raise ConfigError(f"a bitonic sorter takes a power of two wires, at least 2, got {size}")
    stages = []
    block = 2
    while block <= size:
        step = block // 2
        while step >= 1:
            stages.append([(i, i ^ step) if i & block == 0 else (i ^ step, i) for i in range(size) if i ^ step > i])
            step //= 2
        block *= 2
    return stages


class GroupSort(Activation):
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

    @property
    def compares(self) -> int:
        """The size of the groups whose units are compared with each other."""
        return self.group_size

    def check_width(self, width: int) -> None:
        """Raise a clear error when `width` units do not split into whole groups."""
        if width % self.group_size:
            raise ConfigError(f"group size {self.group_size} does not divide the layer width {width}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.unflatten(-1, (-1, self.group_size))
        return groups.sort(dim=-1).values.flatten(-2)

    def group_maximum(self, bound: torch.Tensor) -> torch.Tensor:
        """Per-unit bounds after sorting: each unit gets its group's maximum.

        Sound because the k-th smallest of a group is 1-Lipschitz in the group's
        max norm: |sort(a)_k - sort(a')_k| <= max_i |a_i - a'_i| <= max_i b_i ||dx||_p.
        """
        groups = bound.unflatten(-1, (-1, self.group_size))
        return groups.amax(dim=-1, keepdim=True).expand_as(groups).flatten(-2)

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        """Per unit, the group's maximum (`group_maximum`); whole unchanged, since ||sort(a) - sort(a')||_p <=
        ||a - a'||_p for every p >= 1 (sorting is a contraction)."""
        return Slope(self.group_maximum(slope.unit), slope.whole)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sort both ends: the k-th smallest of a group is nondecreasing in every coordinate,
        so lower <= a <= upper gives sort(lower)_k <= sort(a)_k <= sort(upper)_k."""
        return self(lower), self(upper)

    def rounding(self, errors: torch.Tensor, error_norm: torch.Tensor | None, upper: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A sort rounds nothing: each output is within its group's largest input error of its exact value
        (`group_maximum`), and the error vector's L2 norm does not grow (a contraction)."""
        return self.group_maximum(errors), error_norm

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        """Each group sorted by a sorting network (`sort`), with the differences of its inputs bounded by the
        box before (`Box.apart`, from the Linear layer that feeds it) where it has them."""
        wires = wires.plain(self)
        apart = None if before.apart is None else before.apart[0]
        size = self.group_size
        return Wires([w for group, start in enumerate(range(0, len(wires), size))
                      for w in sort(program, wires[start:start + size],
                                    None if apart is None else apart[group].numpy())])

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        """The sort as the sorting network of `sort`, every compare-exchange one Min and one Max node, on all
        groups at once: Reshape to (batch, groups, size), Split into the size wires, the network, Concat and
        Reshape back. Exact (a min or max returns one of its inputs), and Min/Max are what verifiers read,
        where TopK (a sort in one node) is not."""
        size = self.group_size
        if size == 1:
            return flow
        name = flow.plain(self)
        grouped = graph.node("Reshape", [name, graph.constant("shape", np.array([0, -1, size], dtype=np.int64))], "groups")[0]
        wires = graph.node("Split", [grouped, graph.constant("split", np.ones(size, dtype=np.int64))], "wire",
                           outputs=size, axis=2)
        for i, j in sorting_network(size):
            low = graph.node("Min", [wires[i], wires[j]], "min")[0]
            high = graph.node("Max", [wires[i], wires[j]], "max")[0]
            wires[i], wires[j] = low, high
        joined = graph.node("Concat", wires, "sorted", axis=2)[0]
        return Flow(graph.node("Reshape", [joined, graph.constant("shape", np.array([0, -1], dtype=np.int64))], "flat")[0])

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


def compare_exchange(program: Program, first: Wire, second: Wire, apart: float, back: float) -> tuple[Wire, Wire]:
    """(min, max) of two wires p, q with p - q <= `apart` and q - p <= `back`. Decided by these bounds: the
    wires themselves. Otherwise the max t has t >= p, t >= q, t <= p + back (1 - d), t <= q + apart d (one
    binary d), and the min is p + q - t."""
    if apart <= 0:
        return first, second
    if back <= 0:
        return second, first
    p, q = first, second
    t = program.variable(max(p.lower, q.lower), max(p.upper, q.upper))
    s = program.variable(min(p.lower, q.lower), min(p.upper, q.upper))
    d = program.variable(0.0, 1.0, integer=True)
    for wire in (p, q):
        program.add([(t, 1.0)], [(wire, -1.0)], 0.0, math.inf)
    program.add([(t, 1.0), (d, back)], [(p, -1.0)], -math.inf, back)
    program.add([(t, 1.0), (d, -apart)], [(q, -1.0)], -math.inf, 0.0)
    program.add([(s, 1.0), (t, 1.0)], [(p, -1.0), (q, -1.0)], 0.0, 0.0)
    return Wire(s, min(p.lower, q.lower), min(p.upper, q.upper)), Wire(t, max(p.lower, q.lower),
                                                                          max(p.upper, q.upper))


def sort(program: Program, wires: list[Wire], apart: np.ndarray | None = None) -> list[Wire]:
    """The wires sorted ascending by a sorting network. `apart[a, b]` bounds w_a - w_b from above (the wires'
    own intervals when not given); it is carried through every compare-exchange, since max(p, q) - w =
    max(p - w, q - w) and min(p, q) - w = min(p - w, q - w); a comparison that it decides needs no binary.
    Where it leaves a comparison open, the program's own bound of each difference (`Program.bound`, +inf but
    in a program that tightens) takes its place when lower, and is carried on the same way."""
    wires = list(wires)
    own = np.array([[a.upper - b.lower for b in wires] for a in wires])
    bound = own if apart is None else np.minimum(np.array(apart, dtype=np.float64), own)
    np.fill_diagonal(bound, 0.0)
    for i, j in sorting_network(len(wires)):
        if bound[i, j] > 0 and bound[j, i] > 0:  # open: tightened where the program tightens
            bound[i, j] = min(bound[i, j], program.bound(wires[i], wires[j]))
            if bound[i, j] > 0:
                bound[j, i] = min(bound[j, i], program.bound(wires[j], wires[i]))
        low, high = compare_exchange(program, wires[i], wires[j], bound[i, j], bound[j, i])
        if low is wires[j]:  # decided: the two wires swap places
            bound[[i, j]] = bound[[j, i]]
            bound[:, [i, j]] = bound[:, [j, i]]
        elif low is not wires[i]:
            p, q = bound[[i, j]], bound[:, [i, j]]
            bound[i], bound[j] = np.minimum(p[0], p[1]), np.maximum(p[0], p[1])
            bound[:, i], bound[:, j] = np.maximum(q[:, 0], q[:, 1]), np.minimum(q[:, 0], q[:, 1])
            bound[j, i], bound[i, j] = max(p[0, j], p[1, i]), 0.0  # max - min = |p - q|, min - max <= 0
            bound[i, i] = bound[j, j] = 0.0
        wires[i], wires[j] = low, high
    return wires


class ReLU(Activation):
    """ReLU, elementwise and 1-Lipschitz."""

    def check_width(self, width: int) -> None:
        """Any width works for an elementwise activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        """Unchanged: |relu(a) - relu(a')| <= |a - a'| per unit, hence also in every p-norm of the vector."""
        return slope

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ReLU is nondecreasing: relu(lower) <= relu(a) <= relu(upper)."""
        return self(lower), self(upper)

    def rounding(self, errors: torch.Tensor, error_norm: torch.Tensor | None, upper: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A max with 0 rounds nothing and is 1-Lipschitz per unit: every error bound passes unchanged, but for
        a unit that is off over the whole ball in both arithmetics, where the box's float64 upper end `upper`
        plus both errors is below 0 (the exact end lies within errors[1] of it, the float32 value within
        errors[0] of the exact one): there both values are exactly 0, and so are both errors. The error
        vector's L2 norm passes unchanged (zeroing entries only shrinks it)."""
        if upper is None:
            return errors, error_norm
        off = upper < -errors.sum(dim=0) * (1 + 4 * rounding.unit_roundoff(torch.float64))
        return errors.masked_fill(off, 0.0), error_norm

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        """Each unit by itself or 0 where its bounds decide, else the big-M encoding with one binary d
        (Tjeng, Xiao & Tedrake 2019): h >= a, h <= a - L (1 - d), h <= U d. Where the interval [L, U] leaves a
        unit open, the program's own bounds of a and -a (`Program.bound`, +inf but in a program that tightens)
        take the place of U and -L when lower."""
        out, zero = [], Wire(None, 0.0, 0.0)
        for wire in wires.plain(self):
            if wire.lower < 0 < wire.upper:
                upper = min(wire.upper, program.bound(wire, zero))
                lower = max(wire.lower, -program.bound(zero, wire)) if upper > 0 else wire.lower
                wire = Wire(wire.column, lower, upper)
            if wire.lower >= 0:
                out.append(wire)
            elif wire.upper <= 0:
                out.append(zero)
            else:
                low, high = wire.lower, wire.upper
                h, d = program.variable(0.0, high), program.variable(0.0, 1.0, integer=True)
                program.row([h, wire.column], [1.0, -1.0], 0.0, math.inf)
                program.row([h, wire.column, d], [1.0, -1.0, -low], -math.inf, -low)
                program.row([h, d], [1.0, -high], -math.inf, 0.0)
                out.append(Wire(h, 0.0, high))
        return Wires(out)

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        """One Relu node."""
        return Flow(graph.node("Relu", [flow.plain(self)], "relu")[0])


def make_activation(name: str, group_size: int, width: int) -> GroupSort | ReLU:
    """The activation called `name` after a layer of `width` units: "groupsort" (groups of `group_size`),
    "relu", "maxmin" (GroupSort with groups of 2) or "fullsort" (GroupSort with one group of the whole
    layer); MaxMin and FullSort are GroupSort itself, with every rule of it."""
    if name == "relu":
        return ReLU()
    sizes = {"groupsort": group_size, "maxmin": 2, "fullsort": width}
    if name not in sizes:
        raise ConfigError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    activation = GroupSort(sizes[name])
    activation.check_width(width)
    return activation
