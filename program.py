"""A mixed-integer program under construction: columns, rows and integrality, passed whole to HiGHS.

The operators write their own encodings into it (`operators.Operator.encode`);
`milp` builds one program per example and solves it. HiGHS works in floating
point with feasibility and integrality tolerances of `TOLERANCE` (see `milp`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highspy
import numpy as np

from errors import ConfigError

TOLERANCE = 1e-9  # HiGHS's feasibility and integrality tolerances
SPARSIFY = 1 << 14  # HiGHS's presolve rule 14, Sparsify: switched off (see Program.highs)


@dataclass
class Wire:
    """A quantity of the program: a variable (`column`), or the constant 0 (`column` None); with bounds."""

    column: int | None
    lower: float
    upper: float


class Wires(list):
    """The wires of one layer. After the input normalisation each wire w stands for (w - mean) / std, which
    only a Linear operator absorbs (into its weights); every other operator takes plain wires."""

    def __init__(self, wires: list[Wire], mean: float = 0.0, std: float = 1.0, pending: bool = False) -> None:
        super().__init__(wires)
        self.mean, self.std, self.pending = mean, std, pending

    def plain(self, operator: object) -> list[Wire]:
        """The wires, refused when a normalisation is still pending on them."""
        if self.pending:
            raise ConfigError(f"{type(operator).__name__} cannot be encoded on normalised inputs: "
                              "a Linear layer must come first")
        return list(self)


@dataclass
class Program:
    """Columns, rows and integrality of a mixed-integer program, built up and then passed to HiGHS."""

    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    row_index: list[np.ndarray] = field(default_factory=list)
    row_value: list[np.ndarray] = field(default_factory=list)
    binaries: int = 0

    def variable(self, lower: float, upper: float, integer: bool = False) -> int:
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(integer)
        self.binaries += integer
        return len(self.lower) - 1

    def row(self, index: list[int] | np.ndarray, value: list[float] | np.ndarray, lower: float, upper: float) -> None:
        self.row_index.append(np.asarray(index, dtype=np.int32))
        self.row_value.append(np.asarray(value, dtype=np.float64))
        self.row_lower.append(lower)
        self.row_upper.append(upper)

    def add(self, terms: list[tuple[int, float]], wires: list[tuple[Wire, float]], lower: float, upper: float) -> None:
        """A row over columns and wires; a constant-zero wire drops out."""
        index = [c for c, _ in terms] + [w.column for w, _ in wires if w.column is not None]
        value = [v for _, v in terms] + [v for w, v in wires if w.column is not None]
        self.row(index, value, lower, upper)

    def highs(self, relax: bool) -> highspy.Highs:
        """The program in a silent single-threaded HiGHS instance (binaries relaxed to [0, 1] with `relax`).

        Presolve runs without its Sparsify rule, which cancels nonzeros with the equality rows: on the dense
        first layer (one row of 785 nonzeros per unit) it took 7 to 12 s of a GroupSort program's presolve and
        most of a short one's time, and its absence left ReLU programs faster too (docs/results.md, "Every
        core and many machines"). Which rules presolve runs changes the search, never the program."""
        lp = highspy.HighsLp()
        columns = len(self.lower)
        lp.num_col_, lp.num_row_ = columns, len(self.row_lower)
        lp.col_cost_ = np.zeros(columns)
        lp.col_lower_, lp.col_upper_ = np.array(self.lower), np.array(self.upper)
        lp.row_lower_, lp.row_upper_ = np.array(self.row_lower), np.array(self.row_upper)
        lengths = np.array([len(i) for i in self.row_index])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        lp.a_matrix_.index_ = np.concatenate([np.zeros(0, np.int32), *self.row_index]).astype(np.int32)
        lp.a_matrix_.value_ = np.concatenate([np.zeros(0), *self.row_value])
        if not relax and self.binaries:
            integer, continuous = highspy.HighsVarType.kInteger, highspy.HighsVarType.kContinuous
            lp.integrality_ = [integer if flag else continuous for flag in self.integer]
        solver = highspy.Highs()
        for option, value in (("output_flag", False), ("threads", 1), ("mip_feasibility_tolerance", TOLERANCE),
                              ("primal_feasibility_tolerance", TOLERANCE), ("dual_feasibility_tolerance", TOLERANCE),
                              ("random_seed", 0), ("presolve_rule_off", SPARSIFY)):
            solver.setOptionValue(option, value)
        solver.passModel(lp)
        return solver

