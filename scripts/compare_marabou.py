"""Read the exported ReLU benchmark with an external verifier, Marabou, and compare its verdicts with `--method exact`.

    python scripts/compare_marabou.py --data-dir ../shared/mnist                 # the first 20 test digits
    python scripts/compare_marabou.py --data-dir ../shared/mnist --json results/verification/marabou.json

On the original demo's ReLU checkpoint at L-inf 0.1 within [0, 1]: `certify.py --export-vnnlib DIR
--export-simplify` writes the network as ONNX (dead units dropped, rows scaled to L1 norm 1: Marabou's
preprocessing fixes units with tiny rows) and one VNN-LIB property per digit; Marabou (`maraboupy`, from the
package index, installed by hand: `pip install --no-deps maraboupy`; the project does not depend on it) reads
both and answers unsat (robust), sat (a counterexample) or a timeout, one process at a time, one thread. Then
`certify.py --method exact` on the same digits. One table: per digit, both verdicts and seconds; and the
digits where they disagree (a disagreement on a decided digit is a bug in one of the two).

Marabou decides real arithmetic on the exported float32 weights; `exact` decides the float32 network with
its rounding allowance. A digit within that allowance of its decision boundary could get different verdicts
from the two, correctly; none did on the digits measured (docs/results.md).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import checkpoints  # noqa: E402
import cli  # noqa: E402

ORIGINAL_RELU = REPO.parent / "shared" / "original-demo" / "relu.p"
VERDICTS = {"unsat": "robust", "sat": "counterexample"}  # Marabou's answers; anything else is a timeout


def marabou(network: Path, properties: list[Path], time_limit: int) -> list[tuple[str, float]]:
    """Marabou's verdict and seconds for each property on `network`, each query alone."""
    try:
        from maraboupy import Marabou
    except ImportError:
        raise cli.UsageError("the reference verifier needs maraboupy, which the project does not depend on: "
                             "pip install --no-deps maraboupy") from None
    options = Marabou.createOptions(timeoutInSeconds=time_limit, verbosity=0)
    answers = []
    for path in properties:
        start = time.perf_counter()
        answer = Marabou.read_onnx(str(network)).solve(propertyFilename=str(path), verbose=False, options=options)[0]
        answers.append((VERDICTS.get(answer, "timeout"), time.perf_counter() - start))
    return answers


def certify(*args: object) -> float:
    """Run certify.py with `args`; its wall seconds. Fails in one line when it does."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(REPO / "certify.py"), *map(str, args)], capture_output=True, text=True)
    if run.returncode != 0:
        raise cli.UsageError(f"certify.py {' '.join(map(str, args))} failed: {run.stderr.strip()}")
    return time.perf_counter() - start


def main() -> None:
    parser = cli.Parser(description=__doc__.splitlines()[0])
    cli.add_data_flag(parser)
    parser.add_argument("--checkpoint", type=Path, default=ORIGINAL_RELU,
                        help="a ReLU checkpoint (default: the original demo's relu.p)")
    parser.add_argument("--limit", type=cli.positive_int, default=20, help="the first N test digits (default: 20)")
    parser.add_argument("--eps", type=cli.positive_float, default=0.1, help="the L-inf radius (default: 0.1)")
    parser.add_argument("--time-limit", type=cli.positive_int, default=60, help="seconds per digit (default: 60)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the table here")
    args = parser.parse_args()
    if args.json is not None:
        cli.check_output_file(args.json, "--json")
    net = [args.checkpoint, "--activation", "relu", "--cert_magnitude", args.eps, "--limit", args.limit,
           "--data-dir", args.data_dir, "--time-limit", args.time_limit]
    with tempfile.TemporaryDirectory() as folder:
        bench, table = Path(folder) / "bench", Path(folder) / "exact.csv"
        certify(*net, "--export-vnnlib", bench, "--export-simplify")
        properties = sorted(bench.glob("prop_*.vnnlib"), key=lambda p: int(p.stem.removeprefix("prop_")))
        start = time.perf_counter()
        answers = marabou(bench / "network.onnx", properties, args.time_limit)
        marabou_seconds = time.perf_counter() - start
        exact_seconds = certify(*net, "--method", "exact", "--workers", 1, "--per-example", table)
        with table.open() as handle:
            exact = [(int(row["index"]), row["verdict"], float(row["seconds"])) for row in csv.DictReader(handle)]
    rows = [{"index": index, "exact": verdict, "exact_seconds": round(seconds, 3), "marabou": answer,
             "marabou_seconds": round(spent, 3)}
            for (index, verdict, seconds), (answer, spent) in zip(exact, answers)]
    decided = [row for row in rows if row["marabou"] != "timeout" and row["exact"] != "timeout"]
    disagree = [row["index"] for row in decided if row["marabou"] != row["exact"]]
    print(f"{'digit':>6} {'exact':>15} {'s':>7} {'Marabou':>15} {'s':>7}")
    for row in rows:
        print(f"{row['index']:>6} {row['exact']:>15} {row['exact_seconds']:>7.2f} {row['marabou']:>15} "
              f"{row['marabou_seconds']:>7.2f}")
    print(f"decided by both: {len(decided)} of {len(rows)}; disagreeing: {disagree or 'none'}; wall seconds: "
          f"Marabou {marabou_seconds:.1f}, certify.py --method exact {exact_seconds:.1f} (with its start-up)")
    if args.json is not None:
        record = {**cli.provenance("scripts/compare_marabou.py"),
                  "checkpoint": str(args.checkpoint), "eps": args.eps, "limit": args.limit,
                  "time_limit": args.time_limit, "rows": rows, "disagree": disagree,
                  "seconds": {"marabou": round(marabou_seconds, 1), "exact": round(exact_seconds, 1)},
                  "reference": f"maraboupy {importlib.metadata.version('maraboupy')}"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        checkpoints.write_json(args.json, record)
    if disagree:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
