"""The relaxation's LPs on HiGHS's dual simplex and on its interior-point solver, side by side.

    OMP_NUM_THREADS=2 python scripts/probe_lp_solvers.py CHECKPOINT --digits 1032,1039 --data-dir ../shared/mnist \
        --json results/epyc/probes/lp_solvers_ibp-wide.json

For each test digit given, the program that `milp.verify` builds at L-inf 0.1 in the pixel range, relaxed, and
for every rival class that IBP leaves open the gap minimised twice, each time in a fresh instance: with HiGHS's
dual simplex (milp's settings before the relaxation moved to IPX) and with `milp.RELAXATION_SOLVER` (IPX without
crossover). Per rival and solver: HiGHS's status, the seconds (at most SECONDS), HiGHS's objective, and the
bound of the gap proved from its row duals (`milp.Gap.proved`, what `milp.verify` compares with the threshold),
beside the threshold. A checkpoint of this project records its net; the original demo's GroupSort file needs
`--activation groupsort --group_size 10`.

Digits run two at a time in spawned processes, one thread each (the machine's two cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_hard_digits import BALL, REPO, digit, provenance  # noqa: E402  (it puts the repository on the path)
import checkpoints  # noqa: E402
import cli  # noqa: E402
import milp  # noqa: E402
import rounding  # noqa: E402

SOLVERS = {"dual simplex": {"solver": "simplex"}, "IPX, no crossover": milp.RELAXATION_SOLVER}


@torch.no_grad()
@rounding.exact_arithmetic()
def probe(index: int, checkpoint: str, expected: checkpoints.Expected, data_dir: str, seconds: float) -> dict:
    """The module's docstring, for test digit `index`, in a process of one thread."""
    model64, x64, label, gaps, thresholds = digit(index, data_dir, Path(checkpoint), expected)
    network = milp.encode(model64, x64, BALL, gaps.boxes)
    rivals = []
    for rival, threshold in thresholds.items():
        gap, runs = milp.Gap.of(network, model64, label, rival), {}
        for name, options in SOLVERS.items():
            relaxation = network.program.highs(relax=True)
            for option, value in {**options, "time_limit": seconds}.items():
                relaxation.setOptionValue(option, value)
            gap.minimise(relaxation)
            start = time.perf_counter()
            relaxation.run()
            took = time.perf_counter() - start
            proved = gap.proved(network.program, relaxation)
            runs[name] = {"status": relaxation.getModelStatus().name.removeprefix("k"), "seconds": round(took, 1),
                          "objective": relaxation.getObjectiveValue(),
                          "proved": proved if math.isfinite(proved) else None}
        rivals.append({"rival": rival, "threshold": threshold, **runs})
    return {"index": index, "label": label, "columns": len(network.program.lower),
            "rows": len(network.program.row_lower), "binaries": network.program.binaries, "rivals": rivals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--digits", required=True, help="test digits, comma-separated")
    parser.add_argument("--activation", choices=("groupsort", "relu"), default=None)
    parser.add_argument("--group_size", type=int, default=None)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "mnist"))
    parser.add_argument("--seconds", type=float, default=60.0, help="each LP's time limit")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    try:
        digits = [int(k) for k in args.digits.split(",")]
    except ValueError:
        raise cli.UsageError(f"--digits takes test indices separated by commas, got {args.digits!r}") from None
    expected = checkpoints.Expected(args.activation, args.group_size)
    checkpoints.load_checkpoint(args.checkpoint, expected)  # a wrong file or flag: one line, before the pool starts
    start = time.perf_counter()
    run = partial(probe, checkpoint=str(args.checkpoint), expected=expected, data_dir=args.data_dir,
                  seconds=args.seconds)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        probes = list(pool.map(run, digits))
    for one in probes:
        print(json.dumps(one))
    record = {"command": "scripts/probe_lp_solvers.py " + " ".join(sys.argv[1:]), "net": args.checkpoint.name,
              "radius": BALL.eps, "seconds_an_lp": args.seconds, "digits": probes,
              "wall_seconds": round(time.perf_counter() - start, 1), **provenance()}
    checkpoints.write_json(args.json, record)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    cli.run(main)
