"""How far bounds alone can go on the hard digits: every open comparison bounded by its own cone's root node.

    OMP_NUM_THREADS=2 python scripts/probe_group_bounds.py --data-dir ../shared/mnist \
        --json results/verification/group_bounds.json

For the first LIMIT digits that timed out in results/verification/groupsort_best_all.csv (`best` on the original
demo's GroupSort net at L-inf 0.1), the program of `milp.verify` is built three ways:

- `carried`: as `milp.verify` builds it (`milp.encode`), each compare-exchange's big-M constants the differences
  carried from the first layer (`groupsort.sort`);
- `ordered`: the same with rows saying that each group's outputs ascend (`ordered`);
- `tightened`: `milp.encode` with a deadline SECONDS after the build starts: each difference that the carried
  bounds leave open bounded instead by what HiGHS proves at the root node of its cone, the part of the program
  that defines the two wires (`program.Program.bound`: the input box, the first-layer rows and the
  compare-exchanges before it, binaries kept), when lower.

Per digit and build: the compare-exchanges left open, the relaxation's minimum of the gap for every rival class
that IBP leaves open (`milp.open_rivals`), against its threshold, and the seconds to build it and solve the
relaxations; for `tightened`, how many bounds HiGHS was asked for and how many it proved; for `carried` and
`tightened`, HiGHS on the program with its cut-off row for SEARCH seconds (`probe_hard_digits.search`, as in the
run): its verdict, seconds and proved bound. Digits run two at a time in spawned processes, one thread each (the
machine's two cores); `ordered` replaces `groupsort.sort`, and the count of bounds wraps `Program.bound`, in
those processes only.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import groupsort  # noqa: E402
import milp  # noqa: E402
import rounding  # noqa: E402
from probe_hard_digits import BALL, arguments, digit, on_timeouts, search  # noqa: E402 (beside this script)
from program import Program, Wire  # noqa: E402

SEARCH = 60.0  # seconds of HiGHS on the whole program, as a digit has in the whole-test-set run


def ordered(original: Callable[..., list[Wire]]) -> Callable[..., list[Wire]]:
    """`groupsort.sort` with rows saying that its outputs ascend (true of every sorted group, so valid): with
    them the relaxation's outputs majorise the group's inputs (each compare-exchange's max is at least both
    inputs), so no part of the gap that is convex in the group's inputs (weights rising along the sorted
    outputs) drops below its true value; what the relaxation loosens is the concave part."""
    def sort(program: Program, wires: list[Wire], apart=None) -> list[Wire]:
        out = original(program, wires, apart)
        for low, high in zip(out, out[1:]):
            program.add([], [(high, 1.0), (low, -1.0)], 0.0, math.inf)
        return out
    return sort


def counted(bound: Callable[[Program, Wire, Wire], float], tally: dict[str, int]
            ) -> Callable[[Program, Wire, Wire], float]:
    """`Program.bound`, counting in `tally` the bounds asked for and those proved (finite)."""
    def bound_counted(program: Program, plus: Wire, minus: Wire) -> float:
        value = bound(program, plus, minus)
        tally["asked"] += 1
        tally["proved"] += math.isfinite(value)
        return value
    return bound_counted


VARIANTS = ("carried", "ordered", "tightened")


def built(index: int, data_dir: str, variant: str, seconds: float) -> dict:
    """Test digit `index`'s program built as `variant` says (the module's docstring): the compare-exchanges
    open, the relaxation's minimum of each open rival's gap against its threshold, the seconds."""
    with torch.no_grad(), rounding.exact_arithmetic():
        model64, x64, label, gaps, thresholds = digit(index, data_dir)
        start = time.perf_counter()
        sort, bound, tally = groupsort.sort, Program.bound, {"asked": 0, "proved": 0}
        groupsort.sort, Program.bound = ordered(sort) if variant == "ordered" else sort, counted(bound, tally)
        try:
            deadline = start + seconds if variant == "tightened" else None
            network = milp.encode(model64, x64, BALL, gaps.boxes, deadline=deadline)
        finally:
            groupsort.sort, Program.bound = sort, bound
        relaxation, rivals = network.program.highs(relax=True), []
        for rival, threshold in thresholds.items():
            milp.Gap.of(network, model64, label, rival).minimise(relaxation)
            relaxation.run()
            rivals.append({"rival": rival, "relaxation": relaxation.getObjectiveValue(), "threshold": threshold})
        spent = round(time.perf_counter() - start, 1)
        hard = [r["rival"] for r in rivals if r["relaxation"] <= r["threshold"]]
        found = None if variant == "ordered" else search(network, model64, label, hard, thresholds, SEARCH, {})
    return {"open": network.program.binaries, "rivals": rivals, "seconds": spent, "bounds_asked": tally["asked"],
            "bounds_proved": tally["proved"], "highs": found}


def probe(index: int, data_dir: str, seconds: float) -> dict:
    """Every build of test digit `index`."""
    return {"index": index, **{variant: built(index, data_dir, variant, seconds) for variant in VARIANTS}}


def main() -> None:
    args = arguments(__doc__, 4, 600.0, "the tightened build's deadline, seconds from its start",
                     REPO / "results" / "verification" / "group_bounds.json")
    on_timeouts(probe, args, "scripts/probe_group_bounds.py", deadline_seconds=args.seconds, search_seconds=SEARCH)


if __name__ == "__main__":
    main()
