"""The tightest bound of the gap that a relaxation seeing one GroupSort group's units at a time can prove.

    OMP_NUM_THREADS=2 python scripts/probe_group_hulls.py --data-dir ../shared/mnist \
        --json results/epyc/probes/group_hulls.json

For a net of one hidden GroupSort layer (the original demo's: Normalise, Linear, GroupSort, Linear) the gap to a
rival is c + sum over groups g of h_g(z_g), with z_g = W_g x + b_g the group's first-layer units and
h_g(z) = v_g . sort(z). Let Z_g be what the program knows of z_g on its own: its box and the bounds of its
pairwise differences (`operators.Box.apart`). Every relaxation of one group that knows no more of z_g than these
bounds (the program's big-M rows, the top-k and ordering rows of scripts/probe_relaxation.py, a linear bound
carried backwards through the sorting network, CROWN-style, with the same intervals) holds at every point of
the graph of h_g over Z_g, hence at every point of its convex hull; with the inputs coupled exactly (z_g = W_g x
+ b_g over the ball's box, as in the program), none proves more than the minimum of c + sum_g of the convex
envelope of h_g over Z_g. This probe computes that minimum. (A relaxation that sees the pixels behind a group's
units, such as the ideal cuts of scripts/probe_relaxation.py, is not bounded by it.)

It is found by Dantzig-Wolfe column generation. The master LP takes x in the box and, for each group, a convex
combination of points (z, h_g(z)) of Z_g generated so far, tied by z_g = W_g x + b_g (artificial columns at
cost ARTIFICIAL keep it feasible from the first round; its minimum bounds the envelope's from above only once
none of them is left in its solution). Its row duals pi price each group's mixed-integer program, min over z in
Z_g of h_g(z) - pi_g . z (the sorting network of `groupsort.sort` over Z_g, on HiGHS), whose solution joins the
master when it lowers it. Each round also gives a lower bound of the gap over the
ball, whatever pi (Lagrangian duality, the rows z_g = W_g x + b_g dualised):

    c + pi . b + min over the box of (W^T pi) . x + sum_g min over Z_g of (h_g(z) - pi_g . z),

each group's minimum taken as HiGHS's dual bound of its program (as sound as HiGHS's arithmetic: a probe, not a
certificate). The best of these lower bounds and the master's minimum, with no artificial column left, enclose
the envelope's minimum; the rounds stop when they are within TOLERANCE, or after `--seconds`.

For the first LIMIT digits that timed out in results/verification/groupsort_best_all.csv (as
scripts/probe_hard_digits.py takes them), on the rival that `milp.verify` searches first: the threshold, the
relaxation's minimum of the gap (the program of `milp.verify`, relaxed), the envelope's bounds, the artificial
columns' total in the master's last solution (0 where its minimum bounds the envelope's from above), the rounds,
the columns generated and the seconds. Digits run two at a time in spawned processes, one thread each.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import highspy
import numpy as np
import scipy.sparse as sparse
import torch
from scipy.optimize import linprog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_hard_digits import BALL, REPO, arguments, digit, on_timeouts  # noqa: E402  (it puts the repository
import allowance  # noqa: E402                                                          on the path)
import milp  # noqa: E402
import rounding  # noqa: E402
from groupsort import GroupSort, sort  # noqa: E402
from lipschitz import Ball  # noqa: E402
from operators import Linear, Normalise, fold_normalisation  # noqa: E402
from probe_relaxation import relaxation  # noqa: E402
from program import Program, Wire  # noqa: E402

TOLERANCE = 2e-4  # logit units: the envelope's minimum found to within this, far below the thresholds' distance
ARTIFICIAL = 100.0  # the cost of leaving a row z_g = W_g x + b_g unmet in the master, per unit


class Group:
    """One group's pricing program: min over Z_g of v . sort(z) - pi . z, the sorting network of `groupsort.sort`
    over the group's box and the bounds of its pairwise differences, on HiGHS."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, apart: np.ndarray, weights: np.ndarray) -> None:
        program = Program()
        wires = [Wire(program.variable(float(lo), float(hi)), float(lo), float(hi)) for lo, hi in zip(lower, upper)]
        for a, first in enumerate(wires):
            for b, second in enumerate(wires):
                if a != b and apart[a, b] < first.upper - second.lower:
                    program.row([first.column, second.column], [1.0, -1.0], -math.inf, float(apart[a, b]))
        outputs = sort(program, wires, apart)
        self.solver = program.highs(relax=False)
        self.inputs = np.array([w.column for w in wires])
        self.value = np.zeros(self.solver.getNumCol())  # h's coefficients on the program's columns
        for weight, wire in zip(weights, outputs):
            self.value[wire.column] += weight

    def price(self, pi: np.ndarray) -> tuple[float, np.ndarray, float]:
        """The group's minimum of h(z) - pi . z over Z_g: h at the minimiser, the minimiser z, and the lower bound
        HiGHS proves (its dual bound, or the minimum itself where that is lower: where presolve solves a program
        outright, HiGHS leaves its dual bound at a placeholder 0, `program.Program.bound`)."""
        cost = self.value.copy()
        cost[self.inputs] -= pi
        self.solver.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
        self.solver.run()
        if self.solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(f"a group's program ended {self.solver.getModelStatus()}")
        solution, info = np.array(self.solver.getSolution().col_value), self.solver.getInfo()
        return (float(self.value @ solution), solution[self.inputs],
                min(info.mip_dual_bound, info.objective_function_value))


def one_hidden_layer(model64: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The first layer's weights and bias with the normalisation folded in, the last layer's, the GroupSort layer's
    group size and its place among the operators; any other net is refused."""
    operators = model64.operators()
    if [type(o) for o in operators] != [Normalise, Linear, GroupSort, Linear]:
        raise SystemExit("probe_group_hulls.py: nets of one hidden GroupSort layer only (Normalise, Linear, "
                         "GroupSort, Linear)")
    normalise, first, activation, last = operators
    weight, bias = fold_normalisation(first.weight.detach().numpy(), first.bias.detach().numpy(), normalise.mean,
                                      normalise.std)
    return (weight, bias, last.weight.detach().numpy(), last.bias.detach().numpy(), activation.group_size,
            operators.index(activation))


@torch.no_grad()
def group_hull(model64: torch.nn.Module, x64: torch.Tensor, label: int, rival: int, ball: Ball,
               gaps: allowance.CertifiedGaps, seconds: float) -> dict:
    """The minimum of the gap f_label - f_rival with each group's h_g replaced by its convex envelope over Z_g, by
    column generation within `seconds` (the module's docstring): the best lower bound proved (`lower`), the master's
    minimum (`master`, at least the envelope's minimum when `artificial`, the artificial columns' total in its
    solution, is 0), the rounds, the columns and the seconds."""
    start = time.perf_counter()
    weight, bias, last_weight, last_bias, size, place = one_hidden_layer(model64)
    before = gaps.boxes[place]
    zl, zu, apart = before.lower[0].numpy(), before.upper[0].numpy(), before.apart[0].numpy()
    v, offset = last_weight[label] - last_weight[rival], float(last_bias[label] - last_bias[rival])
    count, units = len(zl) // size, len(zl)
    groups = [Group(zl[g * size:(g + 1) * size], zu[g * size:(g + 1) * size], apart[g], v[g * size:(g + 1) * size])
              for g in range(count)]
    lower, upper = (end[0].numpy() for end in ball.box(x64))
    points: list[list[tuple[float, np.ndarray]]] = [[group.price(np.zeros(size))[:2]] for group in groups]
    best, master, artificial, rounds = -math.inf, math.inf, math.inf, 0
    # the master's rows: z_g = W_g x + b_g (units), then each group's weights sum to 1 (count)
    fixed = sparse.hstack([sparse.vstack([sparse.csr_matrix(-weight), sparse.csr_matrix((count, len(lower)))]),
                           sparse.vstack([sparse.identity(units), sparse.csr_matrix((count, units))]),
                           sparse.vstack([-sparse.identity(units), sparse.csr_matrix((count, units))])])
    rhs = np.concatenate([bias, np.ones(count)])
    while time.perf_counter() - start < seconds:
        rounds += 1
        entries = [(g * size + np.arange(size), z, h, g) for g in range(count) for h, z in points[g]]
        rows = np.concatenate([np.append(unit, units + g) for unit, _, _, g in entries])
        columns = np.repeat(np.arange(len(entries)), size + 1)
        values = np.concatenate([np.append(z, 1.0) for _, z, _, _ in entries])
        combination = sparse.csr_matrix((values, (rows, columns)), shape=(units + count, len(entries)))
        cost = np.concatenate([np.zeros(len(lower)), np.full(2 * units, ARTIFICIAL), [h for _, _, h, _ in entries]])
        result = linprog(cost, A_eq=sparse.hstack([fixed, combination]).tocsr(), b_eq=rhs,
                         bounds=list(zip(lower, upper)) + [(0, None)] * (2 * units + len(entries)), method="highs")
        if result.status != 0:
            raise RuntimeError(f"the master LP ended: {result.message}")
        master, artificial = result.fun + offset, float(result.x[len(lower):len(lower) + 2 * units].sum())
        duals = result.eqlin.marginals
        pi, convexity = duals[:units].reshape(count, size), duals[units:]
        reduced = weight.T @ duals[:units]  # x's reduced cost in the Lagrangian: 0 - (-W)^T pi
        bound = offset + float(duals[:units] @ bias) + float(np.minimum(reduced * lower, reduced * upper).sum())
        added = 0
        for g, group in enumerate(groups):
            h, z, proved = group.price(pi[g])
            bound += proved
            if h - pi[g] @ z - convexity[g] < -1e-9:
                points[g].append((h, z))
                added += 1
        best = max(best, bound)
        if added == 0 or master - best <= TOLERANCE:
            break
    return {"lower": best, "master": master, "artificial": artificial, "rounds": rounds,
            "columns": sum(map(len, points)), "seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
@rounding.exact_arithmetic()
def probe(index: int, data_dir: str, seconds: float) -> dict:
    """The module's docstring's figures for test digit `index`, on the rival `milp.verify` searches first."""
    model64, x64, label, gaps, thresholds = digit(index, data_dir)
    rival = next(iter(thresholds))
    network = milp.encode(model64, x64, BALL, gaps.boxes)
    _, relaxed, _ = relaxation(network, milp.Gap.of(network, model64, label, rival), seconds)
    return {"index": index, "label": label, "rival": rival, "threshold": thresholds[rival], "relaxation": relaxed,
            "binaries": network.program.binaries,
            "hull": group_hull(model64, x64, label, rival, BALL, gaps, seconds)}


def main() -> None:
    args = arguments(__doc__, 3, 1200.0, "time limit of each digit's column generation, seconds",
                     REPO / "results" / "epyc" / "probes" / "group_hulls.json")
    on_timeouts(probe, args, "scripts/probe_group_hulls.py", seconds=args.seconds, tolerance=TOLERANCE)


if __name__ == "__main__":
    main()
