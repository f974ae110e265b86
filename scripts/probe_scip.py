"""Another solver on the hard digits: SCIP on the programs that HiGHS leaves open.

    pip install --no-deps --target ../scip pyscipopt      # aside: the project does not depend on it
    PYTHONPATH=../scip OMP_NUM_THREADS=2 python scripts/probe_scip.py --data-dir ../shared/mnist \
        --json results/epyc/probes/scip.json

For the first LIMIT digits that timed out in results/verification/groupsort_best_all.csv (as
scripts/probe_hard_digits.py takes them), the program of the rival that IBP leaves weakest, as `milp.verify`
searches it (the gap minimised, with the cut-off row gap <= threshold), is written as MPS by HiGHS and solved by
SCIP (`pyscipopt`, one thread, feasibility tolerance 1e-10, SECONDS a digit). Per digit: SCIP's status, its
nodes, the seconds, and the lower bound of the gap it proved (its dual bound plus the gap's constant term); the
program is infeasible (the digit robust on that rival) exactly when the bound passes the threshold.

Digits run two at a time in spawned processes, one thread each (the machine's two cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_hard_digits import BALL, REPO, arguments, digit, on_timeouts  # noqa: E402  (it puts the repository
import cli  # noqa: E402                                                       on the path)
import milp  # noqa: E402
import rounding  # noqa: E402


def scip_model() -> type:
    """pyscipopt's Model, imported only here: a missing package is one line, not a traceback."""
    try:
        from pyscipopt import Model
    except ImportError:
        raise cli.UsageError("this probe needs pyscipopt, which the project does not depend on: "
                             "pip install --no-deps --target DIR pyscipopt, then PYTHONPATH=DIR") from None
    return Model


@torch.no_grad()
@rounding.exact_arithmetic()
def probe(index: int, data_dir: str, seconds: float) -> dict:
    """The module's docstring, for test digit `index`."""
    model64, x64, label, gaps, thresholds = digit(index, data_dir)
    network = milp.encode(model64, x64, BALL, gaps.boxes)
    rival = next(iter(thresholds))
    gap = milp.Gap.of(network, model64, label, rival)
    solver = network.program.highs(relax=False)
    gap.minimise(solver)
    solver.changeObjectiveOffset(0.0)  # added back below: the MPS file holds the linear part only
    solver.addRow(-math.inf, thresholds[rival] - gap.offset, len(gap.columns), gap.columns, gap.coefficients)
    scip = scip_model()()
    scip.hideOutput()
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "program.mps")
        solver.writeModel(path)
        scip.readProblem(path)
    if scip.getNBinVars() + scip.getNIntVars() != network.program.binaries:
        raise RuntimeError("SCIP read another count of binaries than the program has")
    scip.setParam("limits/time", seconds)
    scip.setParam("numerics/feastol", 1e-10)
    scip.setParam("lp/threads", 1)
    start = time.perf_counter()
    scip.optimize()
    bound = scip.getDualbound()
    return {"index": index, "label": label, "rival": rival, "threshold": thresholds[rival],
            "status": scip.getStatus(), "nodes": scip.getNNodes(), "seconds": round(time.perf_counter() - start, 1),
            "gap_bound": bound + gap.offset if math.isfinite(bound) else None, "binaries": network.program.binaries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args = arguments(__doc__, 3, 150.0, "SCIP's time limit a digit", REPO / "results" / "probes" / "scip.json",
                     parser)
    scip = scip_model()()  # fails at once when the package is missing
    on_timeouts(probe, args, "scripts/probe_scip.py", seconds_a_digit=args.seconds, scip=str(scip.version()),
                pyscipopt=version("pyscipopt"), feasibility_tolerance=1e-10)


if __name__ == "__main__":
    cli.run(main)
