"""An ONNX graph under construction, as plain records (no onnx package needed): nodes, constants, fresh names.

The operators append their own nodes to it (`operators.Operator.onnx`), as they write their encodings into a
`program.Program`; `export` turns it into an ONNX model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from errors import ConfigError


@dataclass(frozen=True)
class Node:
    """One ONNX node: its operator type, input and output names, and attributes."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, object]


@dataclass(frozen=True)
class Flow:
    """A tensor of the graph, by name. After the input normalisation it stands for (x - mean) / std of the
    named tensor x, which only a Linear operator folds in (into its Gemm); every other operator takes it plain."""

    name: str
    mean: float = 0.0
    std: float = 1.0
    pending: bool = False

    def plain(self, operator: object) -> str:
        """The tensor's name, refused while a normalisation is pending on it."""
        if self.pending:
            raise ConfigError(f"{type(operator).__name__} cannot be exported on normalised inputs: "
                              "a Linear layer must come first")
        return self.name


@dataclass
class Graph:
    """Nodes in order and named constants (initialisers), with names that never repeat."""

    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    names: int = 0

    def fresh(self, hint: str) -> str:
        self.names += 1
        return f"{hint}_{self.names}"

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.constants[name] = np.ascontiguousarray(value)
        return name

    def node(self, op: str, inputs: list[str], hint: str, outputs: int = 1, **attributes: object) -> list[str]:
        """Append a node; returns its `outputs` fresh output names."""
        names = [self.fresh(hint) for _ in range(outputs)]
        self.nodes.append(Node(op, tuple(inputs), tuple(names), attributes))
        return names
