"""A mixed-integer program under construction: columns, rows and integrality, passed whole to HiGHS.

The operators write their own encodings into it (`operators.Operator.encode`);
`milp` builds one program per example and solves it. HiGHS works in floating
point with feasibility and integrality tolerances of `TOLERANCE` (see `milp`).

A program with a deadline also tightens, while it is being built: an operator
asks it for an upper bound of the difference of two wires (`Program.bound`),
which HiGHS proves at the root node of the part of the program that defines
them, and sets its big-M constants from it.

Any multipliers of its rows, such as HiGHS's duals after an LP, prove a lower
bound of a linear objective over its relaxation that holds in exact arithmetic
(`Program.dual_bound`): what `milp` compares with a threshold.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse
import torch

import rounding
from errors import ConfigError

TOLERANCE = 1e-9  # HiGHS's feasibility and integrality tolerances
SPARSIFY = 1 << 14  # HiGHS's presolve rule 14, Sparsify: switched off (see Program.highs)
MARGIN = 1e-5  # added to a bound HiGHS proves (`Program.bound`), far above the effect of its tolerances on it
ROOT_SECONDS = 1.0  # the most time one bound's root node takes (`Program.bound`); the demo's take 0.1 to 0.2 s
PROVED = (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kSolutionLimit,
          highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kIterationLimit,
          highspy.HighsModelStatus.kInterrupt)  # a search that ends so has proved its dual bound


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
    """Columns, rows and integrality of a mixed-integer program, built up and then passed to HiGHS. With a
    `deadline` (a `time.perf_counter()` moment) `bound` tightens until then; `defining` lists each column's
    rows (those that begin with it: every encoding writes a column's rows so)."""

    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    row_index: list[np.ndarray] = field(default_factory=list)
    row_value: list[np.ndarray] = field(default_factory=list)
    binaries: int = 0
    deadline: float | None = None
    defining: dict[int, list[int]] = field(default_factory=dict)

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
        if len(index):
            self.defining.setdefault(int(index[0]), []).append(len(self.row_lower) - 1)

    def add(self, terms: list[tuple[int, float]], wires: list[tuple[Wire, float]], lower: float, upper: float) -> None:
        """A row over columns and wires; a constant-zero wire drops out."""
        index = [c for c, _ in terms] + [w.column for w, _ in wires if w.column is not None]
        value = [v for _, v in terms] + [v for w, v in wires if w.column is not None]
        self.row(index, value, lower, upper)

    def cone(self, columns: list[int]) -> list[int]:
        """The rows that define `columns`, and those that define the columns these rows use, back to the
        columns that no row defines (the inputs), in order."""
        rows: set[int] = set()
        seen, stack = set(columns), list(columns)
        while stack:
            for row in self.defining.get(stack.pop(), ()):
                rows.add(row)
                for column in self.row_index[row].tolist():
                    if column not in seen:
                        seen.add(column)
                        stack.append(column)
        return sorted(rows)

    def part(self, rows: list[int], columns: list[int]) -> Program:
        """The program of `rows` alone, over `columns` (every column they use), renumbered in that order."""
        position = np.full(len(self.lower), -1, dtype=np.int32)
        position[columns] = np.arange(len(columns), dtype=np.int32)
        part = Program()
        for column in columns:
            part.variable(self.lower[column], self.upper[column], self.integer[column])
        for row in rows:
            part.row(position[self.row_index[row]], self.row_value[row], self.row_lower[row], self.row_upper[row])
        return part

    def difference(self, plus: Wire, minus: Wire) -> tuple[Program, list[int], np.ndarray]:
        """The two wires' cone (`cone`) as a program of its own (`part`), the columns of this program that the
        part's columns are, in order, and the cost on them of minus - plus (for `highs`)."""
        columns = [wire.column for wire in (plus, minus) if wire.column is not None]
        rows = self.cone(columns)
        used = sorted({*columns, *(column for row in rows for column in self.row_index[row].tolist())})
        cost = np.zeros(len(used))
        for wire, sign in ((plus, -1.0), (minus, 1.0)):
            if wire.column is not None:
                cost[used.index(wire.column)] += sign
        return self.part(rows, used), used, cost

    def bound(self, plus: Wire, minus: Wire) -> float:
        """An upper bound of plus - minus over this program so far: without a deadline, after it, or where the
        two wires' cone (`cone`) has no binary, +inf; else the lower bound of minus - plus that HiGHS proves
        at the root node of the cone's own mixed-integer program (presolve, cuts, the relaxation; no
        branching; within ROOT_SECONDS and the deadline), negated, plus MARGIN.

        Sound because each column keeps its bounds and every row left out only widens the feasible set: the
        cone's maximum is at least the program's. HiGHS's dual bound counts only when its search reached a node
        and ended with the bound proved (PROVED), never from an infeasible or failed one: where presolve solves a
        program outright, HiGHS reports it optimal with the dual bound left at 0, which taken as a bound forced
        two units of the demo net equal (an earlier probe, docs/results.md). A cone without binaries is left
        alone, which also keeps HiGHS from that case: in these nets such a cone is one affine layer of the input
        box, whose intervals are already its range. Either guard alone keeps the tests' bounds sound; without
        both, the theorem of tests/test_milp.py fails. HiGHS 1.15.1 can stall on a rare small program, its
        time limit unheeded (seen on the tests' random nets, not on the demo's digits), so a tightened build
        has no sure end."""
        if self.deadline is None or time.perf_counter() >= self.deadline:
            return math.inf
        part, _, cost = self.difference(plus, minus)
        if not part.binaries:
            return math.inf
        solver = part.highs(relax=False, cost=cost)
        solver.setOptionValue("mip_max_nodes", 1)  # the root node only (with 0, HiGHS stops before it)
        solver.setOptionValue("mip_heuristic_effort", 0.0)  # a dual bound is wanted, no primal solution
        solver.setOptionValue("time_limit", max(min(self.deadline - time.perf_counter(), ROOT_SECONDS), 1e-3))
        solver.run()
        info = solver.getInfo()  # before the search's first node, its dual bound is a placeholder (0)
        proved = info.mip_dual_bound if solver.getModelStatus() in PROVED and info.mip_node_count >= 0 else -math.inf
        return -proved + MARGIN if math.isfinite(proved) else math.inf

    def dual_bound(self, cost: np.ndarray, offset: float, row_dual: np.ndarray) -> float:
        """A lower bound of cost . x + offset over the relaxation (every column in its interval, every row within
        its bounds, binaries in [0, 1]) that holds in exact arithmetic, from any multipliers y of the rows, such as
        HiGHS's row duals however inexact: by weak duality, c . x = y . (A x) + (c - A^T y) . x, so

            c . x >= sum_i y_i (L_i if y_i > 0 else U_i) + sum_j min(d_j l_j, d_j u_j),   d = c - A^T y,

        at every such x, without any optimality or tolerance (Neumaier & Shcherbina, 2004, "Safe bounds in linear
        and mixed-integer linear programming"). A multiplier whose row bound on its side is infinite is taken as 0
        (the bound stays valid); a column interval infinite on the side its d_j needs gives -inf. Computed in
        float64, then lowered by twice a bound on that computation's rounding: d_j is a sum of k_j + 1 products
        (k_j the column's nonzeros), within e_j = gamma_K (|c_j| + |A_j|^T |y|) of the exact d_j (K the largest
        k_j + 1), which moves the column's term by at most e_j |l_j| where d_j > e_j, e_j |u_j| where d_j < -e_j
        (there the exact d_j has the computed one's sign), e_j max(|l_j|, |u_j|) otherwise; the final sum of
        N = m + n + 1 rounded products is within gamma_N of the sum of their magnitudes; each product may also
        underflow. The factor 2 covers the bound's own float64 evaluation, whose relative error is of order
        gamma_N, far below 1."""
        rows, columns = len(self.row_lower), len(self.lower)
        matrix = self.matrix()
        y = np.asarray(row_dual, dtype=np.float64).copy()
        side = np.where(y > 0, np.array(self.row_lower), np.where(y < 0, np.array(self.row_upper), 0.0))
        y[~np.isfinite(side)], side[~np.isfinite(side)] = 0.0, 0.0
        c = np.asarray(cost, dtype=np.float64)
        d = c - matrix.T @ y
        widest = int(np.bincount(matrix.indices, minlength=columns).max(initial=0)) + 1
        moved = rounding.gamma(widest, torch.float64) * (np.abs(c) + abs(matrix).T @ np.abs(y))
        lower, upper = np.array(self.lower), np.array(self.upper)
        end = np.where(d > 0, lower, np.where(d < 0, upper, 0.0))
        reach = np.where(d > moved, np.abs(lower), np.where(d < -moved, np.abs(upper),  # the exact d_j's sign known
                                                           np.maximum(np.abs(lower), np.abs(upper))))
        reach[moved == 0] = 0.0
        if not (np.isfinite(end).all() and np.isfinite(reach).all()):
            return -math.inf
        row_terms, column_terms = y * side, d * end
        total = offset + row_terms.sum() + column_terms.sum()
        count = rows + columns + 1
        magnitudes = abs(offset) + np.abs(row_terms).sum() + np.abs(column_terms).sum()
        error = (rounding.gamma(count, torch.float64) * magnitudes + (moved * reach).sum()
                 + (matrix.nnz + count) * rounding.underflow(torch.float64))
        return float(total - 2 * error - 2 * rounding.unit_roundoff(torch.float64) * abs(total))

    def matrix(self) -> scipy.sparse.csr_matrix:
        """The rows' coefficients A as a sparse (rows, columns) matrix."""
        lengths = np.array([len(i) for i in self.row_index], dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(lengths)])
        index = np.concatenate([np.zeros(0, np.int32), *self.row_index])
        value = np.concatenate([np.zeros(0), *self.row_value])
        return scipy.sparse.csr_matrix((value, index, start), shape=(len(self.row_lower), len(self.lower)))

    def highs(self, relax: bool, cost: np.ndarray | None = None) -> highspy.Highs:
        """The program in a silent single-threaded HiGHS instance (binaries relaxed to [0, 1] with `relax`),
        minimising `cost` on its columns (nothing when not given).

        Presolve runs without its Sparsify rule, which cancels nonzeros with the equality rows: on the dense
        first layer (one row of 785 nonzeros per unit) it took 7 to 12 s of a GroupSort program's presolve and
        most of a short one's time, and its absence left ReLU programs faster too (docs/results.md, "Every
        core and many machines"). Which rules presolve runs changes the search, never the program."""
        lp = highspy.HighsLp()
        columns = len(self.lower)
        lp.num_col_, lp.num_row_ = columns, len(self.row_lower)
        lp.col_cost_ = np.zeros(columns) if cost is None else np.asarray(cost, dtype=np.float64)
        lp.col_lower_, lp.col_upper_ = np.array(self.lower), np.array(self.upper)
        lp.row_lower_, lp.row_upper_ = np.array(self.row_lower), np.array(self.row_upper)
        matrix = self.matrix()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = matrix.indptr.astype(np.int32)
        lp.a_matrix_.index_ = matrix.indices.astype(np.int32)
        lp.a_matrix_.value_ = matrix.data
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


def limit_lp_time(solver: highspy.Highs, seconds: float) -> None:
    """Let the next run of the LP in `solver` take `seconds`. HiGHS holds an LP's time limit against the instance's
    run time summed over all its runs (a MIP search's, against the search's own), so the limit starts from what
    the instance has run already."""
    solver.setOptionValue("time_limit", solver.getRunTime() + seconds)
