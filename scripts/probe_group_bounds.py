"""How far bounds alone can go on the hard digits: every open comparison bounded by its own group's exact program.

    OMP_NUM_THREADS=2 python scripts/probe_group_bounds.py --data-dir ../shared/mnist \
        --json results/verification/group_bounds.json

For the first LIMIT digits that timed out in results/verification/groupsort_best_all.csv (`best` on the original
demo's GroupSort net at L-inf 0.1), the program of `milp.verify` is built three ways:

- `carried`: as `milp.encode` builds it, each compare-exchange's big-M constants the differences carried from
  the first layer (`groupsort.sort`);
- `ordered`: the same with rows saying that each group's outputs ascend (`ordered`);
- `group_exact`: each difference that the carried bounds leave open bounded instead by its maximum over the
  group's own mixed-integer program: the input box, the first-layer rows of the units it depends on and the
  compare-exchanges before it, binaries kept (HiGHS's proved bound, SECONDS at most each, plus MARGIN for its
  tolerances). No bound on a group's differences can be tighter: the input box is all that the group's
  program leaves out.

Per digit and build: the compare-exchanges left open, the relaxation's minimum of the gap for every rival class
that IBP leaves open (`milp.open_rivals`), against its threshold, and the seconds to build it and solve the
relaxations; for `carried` and `group_exact`, HiGHS on the program with its cut-off row for SEARCH seconds
(`probe_hard_digits.search`, as in the run): its verdict, seconds and proved bound. The builds replace
`groupsort.compare_exchange` or `groupsort.sort` in the probe's own processes only; digits run two at a time in
spawned processes, one thread each (the machine's two cores).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import groupsort  # noqa: E402
import milp  # noqa: E402
import rounding  # noqa: E402
from probe_hard_digits import BALL, arguments, digit, on_timeouts, search  # noqa: E402 (beside this script)
from program import Program, Wire  # noqa: E402

MARGIN = 1e-7  # above the effect of HiGHS's 1e-9 tolerances on a difference (as milp.SOLVER_MARGIN on a gap)
SEARCH = 60.0  # seconds of HiGHS on the whole program, as a digit has in the whole-test-set run


class GroupBounds:
    """`groupsort.compare_exchange` with each open difference bounded by the exact maximum over the rows it
    depends on: every row of a program begins with the column it defines (`operators.Linear.encode`, the
    compare-exchange's own rows), so the rows beginning with a column, and theirs in turn, are its cone."""

    def __init__(self, seconds: float, original: Callable[..., tuple[Wire, Wire]]) -> None:
        self.seconds, self.original, self.programs, self.defining, self.scanned = seconds, original, 0, {}, 0

    def __call__(self, program: Program, first: Wire, second: Wire, apart: float, back: float) -> tuple[Wire, Wire]:
        if apart > 0 and back > 0 and first.column is not None and second.column is not None:
            apart = min(apart, self.maximum(program, first.column, second.column) + MARGIN)
            back = min(back, self.maximum(program, second.column, first.column) + MARGIN)
        return self.original(program, first, second, apart, back)

    def cone(self, program: Program, columns: list[int]) -> list[int]:
        """The rows defining `columns`, and the columns those rows use, back to the inputs."""
        for row in range(self.scanned, len(program.row_index)):
            if len(program.row_index[row]):
                self.defining.setdefault(int(program.row_index[row][0]), []).append(row)
        self.scanned = len(program.row_index)
        rows, seen, stack = set(), set(columns), list(columns)
        while stack:
            for row in self.defining.get(stack.pop(), []):
                rows.add(row)
                for column in program.row_index[row].tolist():
                    if column not in seen:
                        seen.add(column)
                        stack.append(column)
        return sorted(rows)

    def maximum(self, program: Program, plus: int, minus: int) -> float:
        """An upper bound of column `plus` minus column `minus` over their cone's mixed-integer program."""
        rows = self.cone(program, [plus, minus])
        cone = Program(program.lower, program.upper, program.integer, [program.row_lower[r] for r in rows],
                       [program.row_upper[r] for r in rows], [program.row_index[r] for r in rows],
                       [program.row_value[r] for r in rows], binaries=program.binaries)
        solver = cone.highs(relax=False)
        total = solver.getNumCol()
        cost = np.zeros(total)
        cost[plus], cost[minus] = -1.0, 1.0  # minimise minus - plus
        solver.changeColsCost(total, np.arange(total, dtype=np.int32), cost)
        solver.setOptionValue("time_limit", self.seconds)
        solver.run()
        self.programs += 1
        return -solver.getInfo().mip_dual_bound


def ordered(original: Callable[..., list[Wire]]) -> Callable[..., list[Wire]]:
    """`groupsort.sort` with rows saying that its outputs ascend (true of every sorted group, so valid): with
    them the relaxation's outputs majorise the group's inputs (each compare-exchange's max is at least both
    inputs), so no part of the gap that is convex in the group's inputs (weights rising along the sorted
    outputs) drops below its true value; what the relaxation loosens is the concave part."""
    def sort(program: Program, wires: list[Wire], apart: np.ndarray | None = None) -> list[Wire]:
        out = original(program, wires, apart)
        for low, high in zip(out, out[1:]):
            program.add([], [(high, 1.0), (low, -1.0)], 0.0, math.inf)
        return out
    return sort


VARIANTS = ("carried", "ordered", "group_exact")


def relaxed(index: int, data_dir: str, variant: str, seconds: float) -> dict:
    """Test digit `index`'s program built as `variant` says (the module's docstring): the compare-exchanges
    open, the relaxation's minimum of each open rival's gap against its threshold, the seconds."""
    with torch.no_grad(), rounding.exact_arithmetic():
        model64, x64, label, gaps, thresholds = digit(index, data_dir)
        start = time.perf_counter()
        exchange, sort = groupsort.compare_exchange, groupsort.sort
        bounds = GroupBounds(seconds, exchange)
        groupsort.compare_exchange = bounds if variant == "group_exact" else exchange
        groupsort.sort = ordered(sort) if variant == "ordered" else sort
        try:
            network = milp.encode(model64, x64, BALL, gaps.boxes)
        finally:
            groupsort.compare_exchange, groupsort.sort = exchange, sort
        relaxation, rivals = network.program.highs(relax=True), []
        for rival, threshold in thresholds.items():
            milp.Gap.of(network, model64, label, rival).minimise(relaxation)
            relaxation.run()
            rivals.append({"rival": rival, "relaxation": relaxation.getObjectiveValue(), "threshold": threshold})
        built = round(time.perf_counter() - start, 1)
        hard = [r["rival"] for r in rivals if r["relaxation"] <= r["threshold"]]
        found = None if variant == "ordered" else search(network, model64, label, hard, thresholds, SEARCH, {})
    return {"open": network.program.binaries, "rivals": rivals, "seconds": built, "group_programs": bounds.programs,
            "highs": found}


def probe(index: int, data_dir: str, seconds: float) -> dict:
    """Every build of test digit `index`."""
    return {"index": index, **{variant: relaxed(index, data_dir, variant, seconds) for variant in VARIANTS}}


def main() -> None:
    args = arguments(__doc__, 4, 1.0, "HiGHS's time limit for each difference's program",
                     REPO / "results" / "verification" / "group_bounds.json")
    on_timeouts(probe, args, "scripts/probe_group_bounds.py", seconds_a_difference=args.seconds, margin=MARGIN,
                search_seconds=SEARCH)


if __name__ == "__main__":
    main()
