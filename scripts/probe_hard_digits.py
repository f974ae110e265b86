"""Why the hard digits are hard: the timeouts of the whole-test-set run, one program at a time.

    OMP_NUM_THREADS=2 python scripts/probe_hard_digits.py --data-dir ../shared/mnist \
        --json results/verification/hard_digits.json

For the first LIMIT digits that timed out in results/verification/groupsort_best_all.csv (`best` on the original
demo's GroupSort net at L-inf 0.1, 60 s a digit), each digit's program as `milp.verify` builds it, and per digit:

- the compare-exchanges that each bound leaves open (each one binary of the program): the wires' own intervals
  alone (the first version of the program); differences carried through each sorting network from those
  intervals (`groupsort.sort` without `apart`); carried from the first layer's exact differences over the box
  (`operators.Box.apart`, what `milp` uses);
- per rival class that IBP leaves open, the relaxation's minimum of the gap against the threshold it must
  pass (`milp.open_rivals`);
- HiGHS on the program with its cut-off row (`milp.Gap.search`), SECONDS a digit as in the run, once with
  `milp`'s settings and once without HiGHS's primal heuristics (`NO_HEURISTICS`: a robust digit's proof needs
  none of them): the verdict, the seconds, the nodes of the search tree finished (0: still at the root) and the
  simplex iterations, and the lower bound of the gap reached (its dual bound).

With `--default-only`, the first run alone, for a longer time limit: what more time buys

    OMP_NUM_THREADS=2 python scripts/probe_hard_digits.py --data-dir ../shared/mnist --limit 12 --seconds 300 \
        --default-only --json results/verification/hard_digits_300s.json

and on every timeout of the run, at its limit, to see how far the search gets (its nodes)

    OMP_NUM_THREADS=2 python scripts/probe_hard_digits.py --data-dir ../shared/mnist --limit 42 --default-only \
        --json results/epyc/probes/hard_digits_nodes.json

Digits run two at a time in spawned processes, one thread each (the machine's two cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import highspy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import allowance  # noqa: E402
import checkpoints  # noqa: E402
import cli  # noqa: E402
import milp  # noqa: E402
import rounding  # noqa: E402
from groupsort import GroupSort, sort, sorting_network  # noqa: E402
from lipschitz import Ball  # noqa: E402
from mnist_data import load_split  # noqa: E402
from models import in_float64  # noqa: E402
from program import Program, Wire, Wires  # noqa: E402

NET = REPO.parent / "shared" / "original-demo" / "groupsort.p"
RUN = REPO / "results" / "verification" / "groupsort_best_all.csv"
BALL = Ball("linf", 0.1, (0.0, 1.0))
NO_HEURISTICS = {"mip_heuristic_effort": 0.0, **{f"mip_heuristic_run_{name}": False for name in (
    "feasibility_jump", "rens", "rins", "root_reduced_cost", "shifting", "zi_round")}}


def interval_open(wires: list[Wire]) -> int:
    """The compare-exchanges of one group's sorting network that the wires' intervals leave open, each wire
    carried as the interval of its min or max."""
    lower, upper, count = [w.lower for w in wires], [w.upper for w in wires], 0
    for i, j in sorting_network(len(wires)):
        count += upper[i] > lower[j] and upper[j] > lower[i]
        lower[i], lower[j] = min(lower[i], lower[j]), max(lower[i], lower[j])
        upper[i], upper[j] = min(upper[i], upper[j]), max(upper[i], upper[j])
    return count


def search(network: milp.Network, model64: torch.nn.Module, label: int, rivals: list[int], thresholds: dict,
           seconds: float, options: dict) -> dict:
    """`milp.Gap.search` on each rival in turn, as `milp.verify` runs them, within `seconds` in all, under HiGHS
    `options`: the verdict (robust when every program is infeasible), the seconds, the nodes and simplex
    iterations of every rival's search together, the rival it stopped at and the dual bound of that rival's
    gap."""
    solver = network.program.highs(relax=False)
    for option, value in options.items():
        solver.setOptionValue(option, value)
    start, work = time.perf_counter(), {"nodes": 0, "iterations": 0}
    for rival in rivals:
        left = seconds - (time.perf_counter() - start)
        if left <= 0:
            return {"verdict": "timeout", "seconds": round(time.perf_counter() - start, 1), **work, "rival": rival}
        searched = milp.Gap.of(network, model64, label, rival).search(solver, thresholds[rival], left)
        work = {"nodes": work["nodes"] + searched.nodes, "iterations": work["iterations"] + searched.iterations}
        if searched.status != highspy.HighsModelStatus.kInfeasible:
            status = searched.status
            verdict = "timeout" if status == highspy.HighsModelStatus.kTimeLimit else str(status).split(".")[-1]
            return {"verdict": verdict, "seconds": round(time.perf_counter() - start, 1), **work, "rival": rival,
                    "dual_bound": searched.bound}
    return {"verdict": "robust", "seconds": round(time.perf_counter() - start, 1), **work}


class Digit(NamedTuple):
    """A test digit of the run as `milp.verify` takes it: the float64 net, the digit, its label, IBP's gap bounds
    over the ball and the rival classes that IBP leaves open with their thresholds."""

    model64: torch.nn.Module
    x64: torch.Tensor
    label: int
    gaps: allowance.CertifiedGaps
    thresholds: dict[int, float]


def digit(index: int, data_dir: str, net: Path = NET,
          expected: checkpoints.Expected = checkpoints.Expected("groupsort", 10)) -> Digit:
    """Test digit `index` as `milp.verify` takes it for the checkpoint `net` (the original demo's GroupSort net by
    default), in a process of one thread."""
    torch.set_num_threads(1)
    model = checkpoints.load_checkpoint(net, expected).model
    model64, test = in_float64(model), load_split(data_dir, "test")
    x64, label = test.images[index][None].double(), int(test.labels[index])
    gaps = allowance.certified_gap_bounds(model64, x64, BALL, apart=True)
    return Digit(model64, x64, label, gaps, milp.open_rivals(gaps, label))


@torch.no_grad()
@rounding.exact_arithmetic()
def probe(index: int, data_dir: str, seconds: float, default_only: bool = False) -> dict:
    """Everything the module's docstring lists, for test digit `index` (HiGHS without its primal heuristics
    only when not `default_only`)."""
    model64, x64, label, gaps, thresholds = digit(index, data_dir)
    rivals = list(thresholds)
    network = milp.encode(model64, x64, BALL, gaps.boxes)

    lower, upper = (end[0].numpy() for end in BALL.box(x64))
    units = Wires([Wire(k, float(lo), float(hi)) for k, (lo, hi) in enumerate(zip(lower, upper))])
    operators = model64.operators()
    first = next(k for k, operator in enumerate(operators) if isinstance(operator, GroupSort))
    for operator, before, after in zip(operators[:first], gaps.boxes[:first], gaps.boxes[1:first + 1]):
        units = operator.encode(Program(), units, before, after)  # the wires the first GroupSort sorts
    activation = operators[first]
    size = activation.group_size
    groups = [units[start:start + size] for start in range(0, len(units), size)]
    carried = Program()
    for group in groups:
        sort(carried, group)

    relaxation, relaxed = network.program.highs(relax=True), {}
    for rival in rivals:
        milp.Gap.of(network, model64, label, rival).minimise(relaxation)
        relaxation.run()
        relaxed[rival] = relaxation.getObjectiveValue()
    hard = [j for j in rivals if relaxed[j] <= thresholds[j]]
    runs = {"highs": search(network, model64, label, hard, thresholds, seconds, {})}
    if not default_only:
        runs["highs_no_heuristics"] = search(network, model64, label, hard, thresholds, seconds, NO_HEURISTICS)
    return {
        "index": index, "label": label, "compare_exchanges": len(groups) * len(sorting_network(size)),
        "open": {"intervals": sum(interval_open(group) for group in groups), "carried_from_intervals": carried.binaries,
                 "carried_from_first_layer": network.program.binaries},
        "columns": len(network.program.lower), "rows": len(network.program.row_lower),
        "nonzeros": int(sum(len(row) for row in network.program.row_index)),
        "rivals": [{"rival": j, "relaxation": relaxed[j], "threshold": thresholds[j]} for j in rivals],
        **runs,
    }


def arguments(doc: str, limit: int, seconds: float, seconds_help: str, json_path: Path,
              parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """A probe's command line (`parser`, when given, with the probe's own flags): the data, how many of the run's
    timeouts, a time limit, the JSON to write."""
    parser = parser or argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "mnist"))
    parser.add_argument("--limit", type=int, default=limit, help="how many of the run's timeouts, in order")
    parser.add_argument("--seconds", type=float, default=seconds, help=seconds_help)
    parser.add_argument("--json", type=Path, default=json_path)
    return parser.parse_args()


def timeouts() -> list[int]:
    """The test digits that timed out in the run, in order."""
    with open(RUN) as handle:
        return [int(row["index"]) for row in csv.DictReader(handle) if row["verdict"] == "timeout"]


def on_timeouts(probe: Callable[[int, str, float], dict], args: argparse.Namespace, script: str, **fields: object
                ) -> None:
    """`probe` on the first `args.limit` timeouts of the run, two at a time in spawned processes; their results
    printed and written to `args.json` with `fields` and the provenance."""
    digits = timeouts()[: args.limit]
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        probes = list(pool.map(probe, digits, [args.data_dir] * len(digits), [args.seconds] * len(digits)))
    for one in probes:
        print(json.dumps(one))
    record = {"command": f"{script} " + " ".join(sys.argv[1:]), "net": str(NET.name), "radius": BALL.eps,
              "run": str(RUN.relative_to(REPO)), **fields, "digits": probes,
              "wall_seconds": round(time.perf_counter() - start, 1), **provenance()}
    checkpoints.write_json(args.json, record)
    print(f"wrote {args.json}")


def provenance() -> dict:
    """What a probe's record says of where it ran: two processes of one thread, the machine, the versions, the
    date."""
    return {"threads": "1 a process, 2 processes", "machine": cli.machine(), "torch": torch.__version__,
            "highspy": version("highspy"), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--default-only", action="store_true",
                        help="HiGHS with milp's settings only, not again without its primal heuristics")
    args = arguments(__doc__, 10, 60.0, "HiGHS's time limit a digit, as in the run",
                     REPO / "results" / "verification" / "hard_digits.json", parser)
    on_timeouts(partial(probe, default_only=args.default_only), args, "scripts/probe_hard_digits.py",
                seconds_a_digit=args.seconds, **({} if args.default_only else {"no_heuristics": NO_HEURISTICS}))


if __name__ == "__main__":
    main()
