"""What valid rows and probing do to the relaxation of the hard digits' programs.

    OMP_NUM_THREADS=2 python scripts/probe_relaxation.py --data-dir ../shared/mnist \
        --json results/epyc/probes/relaxation_rows.json

For the first LIMIT digits that timed out in results/verification/groupsort_best_all.csv (as
scripts/probe_hard_digits.py takes them), each digit's program as `milp.verify` builds it, relaxed (binaries
in [0, 1]), minimising the gap to the rival that IBP leaves weakest (the first one `milp.verify` searches):

- the relaxation's minimum of the gap, and the threshold it must pass;
- top-k rows: at that minimum, how many of the valid rows "the k largest outputs of a group sum to at least
  the k largest of its inputs" (every group of the GroupSort layer, k = 1 to size - 1) are violated;
- ordering rows: how many of "each output of a group at most the next" are violated; those are added and the
  relaxation solved again until none is, and the rows added, the rounds and the new minimum are recorded;
- ideal cuts: the compare-exchanges with a binary whose two wires p, q are first-layer units, affine in the
  pixels x over the box; max(p, q) = q + relu(p - q) has the ideal formulation of Anderson et al. (*Strong
  mixed-integer programming formulations for trained neural networks*, 2020) for the ReLU of an affine function,
  shifted by q: t - q <= sum over i in I of v_i (x_i - L_i'(1 - d)) + (beta + sum over i not in I of v_i U_i') d,
  for every set I of pixels (v, beta the weights and bias of p - q; L_i', U_i' the ends of pixel i's interval
  that minimise and maximise v_i x_i; d = 1 where p is the larger). At the relaxation's minimum the most violated
  of each one's cuts is found pixel by pixel (i in I where v_i (x_i - L_i'(1 - d)) < v_i U_i' d), added, and the
  relaxation solved again, CUT_ROUNDS times or until none is violated: the cuts added and the new minimum;
- probing: every binary (or `--probe N` drawn at random, seed 0) fixed in turn to the value that the relaxation's
  minimum does not take (both values where it is fractional), in the relaxation with the cut-off row (gap <=
  threshold). A value that leaves it infeasible holds at no input whose gap is within the threshold, so the binary
  is fixed to its other value at once (what MIP solvers call probing, here with the LP); rounds repeat until one
  fixes none: the binaries fixed in the first round and in all, the rounds, the LPs and their seconds;
- HiGHS on the program with its cut-off row, `--mip-seconds` (60, as the run) with and without the binaries that
  probing fixed: the status and the lower bound of the gap proved.

Digits run two at a time in spawned processes, one thread each (the machine's two cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import highspy
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_hard_digits import BALL, REPO, arguments, digit, on_timeouts  # noqa: E402  (it puts the repository
import cli  # noqa: E402                                                       on the path)
import groupsort  # noqa: E402
import milp  # noqa: E402
import rounding  # noqa: E402
from groupsort import GroupSort, compare_exchange  # noqa: E402
from lipschitz import Ball  # noqa: E402
from program import Program, Wire, Wires, limit_lp_time  # noqa: E402

TOLERANCE = 1e-7  # a row counts as violated beyond this, well above HiGHS's 1e-9 feasibility tolerance
ROUNDS = 50
CUT_ROUNDS = 6


class CompareExchange(NamedTuple):
    """An open compare-exchange of the program: its wires p, q, the column t of their maximum, and its binary d
    (1 where p is the larger)."""

    p: Wire
    q: Wire
    t: int
    d: int


def encode_with_groups(model64: torch.nn.Module, x64: torch.Tensor, ball: Ball, boxes: list
                       ) -> tuple[milp.Network, list, list[CompareExchange]]:
    """`milp.encode`'s program, each GroupSort group's input and output wires, and the open compare-exchanges:
    `GroupSort.encode` and `groupsort.compare_exchange` are watched as `milp.encode` calls them."""
    groups, exchanges = [], []
    sort_groups = GroupSort.encode

    def watched_sort(self: GroupSort, program: Program, wires: Wires, before: object, after: object) -> Wires:
        sorted_wires = sort_groups(self, program, wires, before, after)
        size = self.group_size
        groups.extend((list(wires[start:start + size]), list(sorted_wires[start:start + size]))
                      for start in range(0, len(wires), size))
        return sorted_wires

    def watched_exchange(program: Program, first: Wire, second: Wire, apart: float, back: float
                         ) -> tuple[Wire, Wire]:
        columns = len(program.lower)
        low, high = compare_exchange(program, first, second, apart, back)
        if len(program.lower) > columns:  # open: the columns t, s, d were added, in this order
            exchanges.append(CompareExchange(first, second, columns, columns + 2))
        return low, high

    with mock.patch.object(GroupSort, "encode", watched_sort), \
            mock.patch.object(groupsort, "compare_exchange", watched_exchange):
        network = milp.encode(model64, x64, ball, boxes)
    return network, groups, exchanges


def value(solution: np.ndarray, wire: Wire) -> float:
    return 0.0 if wire.column is None else float(solution[wire.column])


def violated_top_k(solution: np.ndarray, groups: list) -> tuple[int, int]:
    """(rows checked, rows violated) of: the k largest outputs of a group sum to at least its k largest inputs."""
    checked = violated = 0
    for ins, outs in groups:
        inputs = sorted(value(solution, w) for w in ins)
        outputs = [value(solution, w) for w in outs]  # ascending, as the sorting network orders them
        for k in range(1, len(ins)):
            checked += 1
            violated += sum(outputs[-k:]) < sum(inputs[-k:]) - TOLERANCE
    return checked, violated


def violated_ordering(solution: np.ndarray, groups: list) -> list[tuple[Wire, Wire]]:
    """The pairs of consecutive outputs of a group that the solution puts out of order."""
    return [(low, high) for _, outs in groups for low, high in zip(outs, outs[1:])
            if value(solution, low) > value(solution, high) + TOLERANCE]


def minimum(solver: highspy.Highs, seconds: float) -> tuple[float, np.ndarray]:
    """The relaxation's optimum within `seconds` and its solution; anything but optimal (a time limit included)
    stops the probe."""
    limit_lp_time(solver, seconds)
    solver.run()
    if solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"the relaxation ended {solver.getModelStatus()}")
    return solver.getObjectiveValue(), np.array(solver.getSolution().col_value)


def relaxation(network: milp.Network, gap: milp.Gap, seconds: float) -> tuple[highspy.Highs, float, np.ndarray]:
    """The program relaxed, minimising the gap (each LP within `seconds`): the solver, the minimum, its solution."""
    solver = network.program.highs(relax=True)
    gap.minimise(solver)
    return (solver, *minimum(solver, seconds))


def ordering_rows(solver: highspy.Highs, groups: list, solution: np.ndarray, seconds: float) -> dict:
    """The ordering rows that `solution` violates, then added round by round (ROUNDS at most) until none is."""
    first = len(violated_ordering(solution, groups))
    added = rounds = 0
    relaxed = solver.getObjectiveValue()
    while rounds < ROUNDS and (pairs := violated_ordering(solution, groups)):
        for low, high in pairs:
            solver.addRow(-math.inf, 0.0, 2, np.array([low.column, high.column], dtype=np.int32), np.array([1.0, -1.0]))
        added, rounds = added + len(pairs), rounds + 1
        relaxed, solution = minimum(solver, seconds)
    return {"violated": first, "added": added, "rounds": rounds, "relaxation": relaxed,
            "violated_after": len(violated_ordering(solution, groups))}


def affine(program: Program, column: int, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """A first-layer unit's weights on the pixel columns and its bias, from the row that defines it (the unit
    minus its weights times the pixels equals the bias)."""
    (row,) = program.defining[column]
    weights = np.zeros(len(pixels))
    at = {int(c): k for k, c in enumerate(pixels)}
    for c, v in zip(program.row_index[row][1:].tolist(), program.row_value[row][1:].tolist()):
        weights[at[c]] = -v
    return weights, program.row_lower[row]


def ideal_cuts(solver: highspy.Highs, network: milp.Network, exchanges: list[CompareExchange], first_layer: set[int],
               solution: np.ndarray, seconds: float) -> dict:
    """The ideal cuts of the module's docstring, CUT_ROUNDS rounds at most (each LP within `seconds`): the
    compare-exchanges they apply to, the cuts added, the rounds and the relaxation's minimum after them."""
    program = network.program
    pixels = np.array([w.column for w in network.inputs], dtype=np.int32)
    lower, upper = np.array(program.lower)[pixels], np.array(program.upper)[pixels]
    pieces = []  # per compare-exchange of two first-layer units: it, v, beta, and L', U' per pixel
    for exchange in exchanges:
        if exchange.p.column in first_layer and exchange.q.column in first_layer:
            (wp, bp), (wq, bq) = affine(program, exchange.p.column, pixels), affine(program, exchange.q.column, pixels)
            v = wp - wq
            pieces.append((exchange, v, bp - bq, np.where(v >= 0, lower, upper), np.where(v >= 0, upper, lower)))
    cuts = rounds = 0
    relaxed = solver.getObjectiveValue()
    while rounds < CUT_ROUNDS:
        added = 0
        for exchange, v, beta, low, high in pieces:
            x, d = solution[pixels], solution[exchange.d]
            inside = v * (x - low * (1 - d)) < v * high * d  # the most violated set I
            constant = (v * low)[inside].sum()  # the cut: t - q - v_I x_I - (beta + v U' outside I + constant) d
            slope = beta + (v * high)[~inside].sum() + constant  #          <= -constant
            if solution[exchange.t] - value(solution, exchange.q) - v[inside] @ x[inside] - slope * d \
                    <= -constant + TOLERANCE:
                continue
            index = np.concatenate([[exchange.t, exchange.q.column, exchange.d], pixels[inside]]).astype(np.int32)
            solver.addRow(-math.inf, -float(constant), len(index), index,
                          np.concatenate([[1.0, -1.0, -slope], -v[inside]]))
            added += 1
        if not added:
            break
        cuts, rounds = cuts + added, rounds + 1
        relaxed, solution = minimum(solver, seconds)
    return {"compare_exchanges": len(pieces), "cuts": cuts, "rounds": rounds, "relaxation": relaxed}


def probing(program: Program, gap: milp.Gap, threshold: float, count: int | None, seconds: float
            ) -> tuple[dict[int, float], dict]:
    """Probing to a fixpoint, in the relaxation with the cut-off row (gap <= threshold): every binary (`count` of
    them drawn at random, seed 0, when given) fixed in turn to each value that the relaxation's minimum does not
    take (both where it is fractional; the minimum itself shows the value it takes to be feasible). A value that
    leaves the relaxation infeasible holds at no input whose gap is within the threshold, so the binary is fixed
    to the other value at once; rounds repeat until one fixes none. The binaries fixed (column: value), and the
    rounds, the LPs and their seconds; `settled` where the relaxation, or both values of one binary, turned out
    infeasible: then no input's gap comes within the threshold, and the digit is robust."""
    solver = program.highs(relax=True)
    gap.minimise(solver)
    solver.addRow(-math.inf, threshold - gap.offset, len(gap.columns), gap.columns, gap.coefficients)
    binaries = [column for column, integer in enumerate(program.integer) if integer]
    drawn = binaries if count is None else np.random.default_rng(0).choice(
        binaries, size=min(count, len(binaries)), replace=False).tolist()

    def feasible() -> bool:
        limit_lp_time(solver, seconds)
        solver.run()
        status = solver.getModelStatus()
        if status not in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kOptimal):
            raise RuntimeError(f"a probing LP ended {status}")
        return status == highspy.HighsModelStatus.kOptimal

    fixed: dict[int, float] = {}
    rounds, lps, start, first_round = 0, 0, time.perf_counter(), None

    def summary(settled: bool) -> dict:
        return {"binaries": len(binaries), "drawn": len(drawn), "first_round": first_round or 0, "fixed": len(fixed),
                "settled": settled, "rounds": rounds, "lps": lps, "seconds": round(time.perf_counter() - start, 1)}

    while True:
        rounds, lps = rounds + 1, lps + 1
        if not feasible():  # the relaxation with the cut-off and the fixings is empty: robust
            return fixed, summary(settled=True)
        minimum = solver.getSolution().col_value
        before = len(fixed)
        for column in (column for column in drawn if column not in fixed):
            taken = minimum[column]
            tried = [1.0] if taken < 1e-6 else [0.0] if taken > 1 - 1e-6 else [0.0, 1.0]
            refused = []
            for fixed_at in tried:
                solver.changeColBounds(column, fixed_at, fixed_at)
                lps += 1
                if not feasible():
                    refused.append(fixed_at)
            if len(refused) == 2:  # no input has its gap within the threshold: the digit is robust
                return fixed, summary(settled=True)
            if refused:
                fixed[column] = 1.0 - refused[0]
                solver.changeColBounds(column, fixed[column], fixed[column])
            else:
                solver.changeColBounds(column, 0.0, 1.0)
        first_round = len(fixed) if first_round is None else first_round
        if len(fixed) == before:
            break
    return fixed, summary(settled=False)


def search_with(network: milp.Network, gap: milp.Gap, threshold: float, fixed: dict[int, float], seconds: float
                ) -> dict:
    """HiGHS on the mixed-integer program with its cut-off row (`milp.Gap.search`), `seconds`, with the binaries
    `fixed` at their values: the status, the seconds and the lower bound of the gap it proved."""
    solver = network.program.highs(relax=False)
    for column, fixed_at in fixed.items():
        solver.changeColBounds(column, fixed_at, fixed_at)
    start = time.perf_counter()
    searched = gap.search(solver, threshold, seconds)
    return {"status": str(searched.status).split(".")[-1], "seconds": round(time.perf_counter() - start, 1),
            "dual_bound": searched.bound}


@torch.no_grad()
@rounding.exact_arithmetic()
def probe(index: int, data_dir: str, seconds: float, probe_count: int | None = None, mip_seconds: float = 0.0
          ) -> dict:
    """Everything the module's docstring lists, for test digit `index`."""
    model64, x64, label, gaps, thresholds = digit(index, data_dir)
    network, groups, exchanges = encode_with_groups(model64, x64, BALL, gaps.boxes)
    rival = next(iter(thresholds))
    gap = milp.Gap.of(network, model64, label, rival)
    solver, relaxed, solution = relaxation(network, gap, seconds)
    checked, violated = violated_top_k(solution, groups)
    first_layer = {w.column for ins, _ in groups for w in ins}
    cut_solver, _, cut_solution = relaxation(network, gap, seconds)
    fixed, probed = probing(network.program, gap, thresholds[rival], probe_count, seconds)
    record = {"index": index, "label": label, "rival": rival, "threshold": thresholds[rival], "relaxation": relaxed,
              "binaries": network.program.binaries, "columns": len(network.program.lower),
              "top_k_rows": {"checked": checked, "violated": violated},
              "ordering_rows": ordering_rows(solver, groups, solution, seconds),
              "ideal_cuts": ideal_cuts(cut_solver, network, exchanges, first_layer, cut_solution, seconds),
              "probing": probed}
    if mip_seconds:
        record["highs"] = {"plain": search_with(network, gap, thresholds[rival], {}, mip_seconds),
                           "probed": search_with(network, gap, thresholds[rival], fixed, mip_seconds)}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", type=cli.positive_int, default=None, metavar="N",
                        help="probe N binaries drawn at random (default: every binary)")
    parser.add_argument("--mip-seconds", type=float, default=60.0, metavar="S",
                        help="HiGHS on the program with and without the binaries probing fixed, S seconds each, as "
                             "the run gave each digit (default: %(default)s; 0: not run)")
    args = arguments(__doc__, 3, 120.0, "time limit of each LP, seconds (one over it stops the probe)",
                     REPO / "results" / "probes" / "relaxation_rows.json", parser)
    on_timeouts(partial(probe, probe_count=args.probe, mip_seconds=args.mip_seconds), args,
                "scripts/probe_relaxation.py", lp_seconds=args.seconds, mip_seconds=args.mip_seconds, tolerance=TOLERANCE)


if __name__ == "__main__":
    main()
