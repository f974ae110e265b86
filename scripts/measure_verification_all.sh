#!/usr/bin/env bash
# Exact verification of the whole test set (docs/results.md, "Every core and many machines"): `--method best`
# on all 10,000 test digits of the original demo's GroupSort net at L-inf 0.1, within the pixel range, 60 s a
# digit, on WORKERS processes (default 2). Writes results/verification/groupsort_best_all.csv (per digit) and
# results/verification/groupsort_best_all.json (verdicts, deciding stages, timeouts, wall seconds, provenance);
# NAME=other writes results/verification/other.{csv,json} instead, OUT=folder into another folder.
# Run alone on the machine: the wall time is the figure.
#
#   OMP_NUM_THREADS=2 scripts/measure_verification_all.sh     # then python scripts/report.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
WORKERS=${WORKERS:-2}
OUT=${OUT:-results/verification}
NAME=${NAME:-groupsort_best_all}
mkdir -p "$OUT"
start=$(date +%s.%N)
"$PY" certify.py ../shared/original-demo/groupsort.p --activation groupsort --group_size 10 --method best \
    --workers "$WORKERS" --time-limit 60 --per-example "$OUT/$NAME.csv" --data-dir "$DATA"
seconds=$(echo "$(date +%s.%N) - $start" | bc)
code=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- '*.py' || echo "-dirty")
"$PY" - "$OUT/$NAME" "$seconds" "$WORKERS" "$code" "${NAME}" <<'PY'
import csv, json, os, sys, time
import cli
import torch
name, seconds, workers, code, short = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
with open(f"{name}.csv") as handle:
    rows = list(csv.DictReader(handle))
settled = [row for row in rows if row["verdict"] in ("robust", "counterexample")]
out = os.path.dirname(name)
record = {"command": "OMP_NUM_THREADS=2 " + ("" if out == "results/verification" else f"OUT={out} ")
                     + ("" if short == "groupsort_best_all" else f"NAME={short} ") + "scripts/measure_verification_all.sh",
          "net": "../shared/original-demo/groupsort.p (GroupSort 10)", "method": "best", "radius": 0.1,
          "time_limit": 60, "workers": workers, "digits": len(rows),
          "verdicts": {v: sum(row["verdict"] == v for row in rows)
                       for v in ("robust", "counterexample", "timeout", "undecided")},
          "decided_by": {s: sum(row["decided_by"] == s for row in settled)
                         for s in sorted({row["decided_by"] for row in settled})},
          "seconds": round(seconds, 1), "code": code, "threads": os.environ.get("OMP_NUM_THREADS"),
          "machine": cli.machine(), "torch": torch.__version__,
          "date": time.strftime("%Y-%m-%d")}
open(f"{name}.json", "w").write(json.dumps(record, indent=1) + "\n")
print(json.dumps(record, indent=1))
PY
