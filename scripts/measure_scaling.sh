#!/usr/bin/env bash
# Exact verification on every core and in shards (docs/results.md, "Every core and many machines"):
# `--method best` on the first LIMIT (default 200) test digits of the original demo's GroupSort net at
# L-inf 0.1, with --workers 1 and --workers 2, then as 4 shards merged; and `--method exact` on the same
# digits of the original ReLU net (a program for every digit IBP leaves open) with 1 and 2 workers.
# results/verification/scaling.json holds the wall times and whether the verdicts agree, the per-example
# CSVs lie beside it.
#
#   scripts/measure_scaling.sh            # from the repository root, or anywhere; then python scripts/report.py
#   OUT=results/epyc scripts/measure_scaling.sh   # into another folder (another machine's records)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
LIMIT=${LIMIT:-200}
OUT=${OUT:-results/verification}  # another folder for another machine's records
GROUPSORT=(../shared/original-demo/groupsort.p --activation groupsort --group_size 10 --method best)
RELU=(../shared/original-demo/relu.p --activation relu --method exact)
mkdir -p "$OUT"
run() {  # run NAME ARGS...: certify.py with ARGS, its wall seconds appended to $OUT/times.txt
    local name=$1
    shift
    local start=$(date +%s.%N)
    "$PY" certify.py "$@" --limit "$LIMIT" --data-dir "$DATA"
    echo "$name $(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/times.txt"
}
rm -f "$OUT/times.txt"
run workers1 "${GROUPSORT[@]}" --workers 1 --per-example "$OUT/best_workers1.csv"
run workers2 "${GROUPSORT[@]}" --workers 2 --per-example "$OUT/best_workers2.csv"
for k in 0 1 2 3; do
    run "shard$k" "${GROUPSORT[@]}" --workers 1 --shard "$k/4" --per-example "$OUT/best_shard$k.csv"
done
run relu_workers1 "${RELU[@]}" --workers 1 --per-example "$OUT/relu_exact_workers1.csv"
run relu_workers2 "${RELU[@]}" --workers 2 --per-example "$OUT/relu_exact_workers2.csv"
"$PY" certify.py --merge "$OUT/best_merged.csv" "$OUT"/best_shard{0,1,2,3}.csv
"$PY" - "$OUT" "$LIMIT" <<'PY'
import csv, json, os, sys, time
import cli
import torch
out, limit = sys.argv[1], int(sys.argv[2])
def verdicts(name):
    with open(f"{out}/{name}.csv") as handle:
        return [(row["index"], row["verdict"], row["decided_by"]) for row in csv.DictReader(handle)]
times = dict(line.split() for line in open(f"{out}/times.txt"))
one, two, merged = verdicts("best_workers1"), verdicts("best_workers2"), verdicts("best_merged")
counts = {v: sum(r[1] == v for r in one) for v in sorted({r[1] for r in one})}
relu_one, relu_two = verdicts("relu_exact_workers1"), verdicts("relu_exact_workers2")
command = "scripts/measure_scaling.sh" if out == "results/verification" else f"OUT={out} scripts/measure_scaling.sh"
record = {"command": command, "net": "../shared/original-demo/groupsort.p (GroupSort 10)",
          "method": "best", "radius": 0.1, "digits": limit, "verdicts": counts,
          "seconds": {k: round(float(v), 1) for k, v in times.items()},
          "workers2_identical": one == two, "merged_identical": one == merged,
          "speedup": round(float(times["workers1"]) / float(times["workers2"]), 2),
          "relu_exact": {"net": "../shared/original-demo/relu.p", "method": "exact",
                         "verdicts": {v: sum(r[1] == v for r in relu_one) for v in sorted({r[1] for r in relu_one})},
                         "workers2_identical": relu_one == relu_two,
                         "speedup": round(float(times["relu_workers1"]) / float(times["relu_workers2"]), 2)},
          "threads": os.environ.get("OMP_NUM_THREADS"), "machine": cli.machine(),
          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
open(f"{out}/scaling.json", "w").write(json.dumps(record, indent=1) + "\n")
print(json.dumps(record, indent=1))
PY
