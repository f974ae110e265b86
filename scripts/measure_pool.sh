#!/usr/bin/env bash
# The worker pool against an earlier version of the code, side by side on one machine (docs/results.md, "Every
# core and many machines"): `--method exact` on the first LIMIT (default 200) test digits of the original ReLU
# net and `--method best` on those of the GroupSort net, at L-inf 0.1, with --workers 1 and --workers 2, for
# ROUNDS (default 3) rounds, each round running BASE (a git revision, default c108d9b, checked out into a
# temporary worktree) and then the working tree. The machine drifts by 15 % and more from minute to minute, so
# one run of each says little: the record holds every round's wall seconds, their medians, and whether every run
# gave the verdicts of the working tree's one-worker run. Writes $OUT/pool.json (default results/epyc).
#
#   OMP_NUM_THREADS=2 scripts/measure_pool.sh                # run alone on the machine; then python scripts/report.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REPO=$(pwd)
DATA=$(cd "${DATA_DIR:-../shared/mnist}" && pwd)
NETS=$(cd ../shared/original-demo && pwd)
LIMIT=${LIMIT:-200}
ROUNDS=${ROUNDS:-3}
BASE=${BASE:-c108d9b}
OUT=${OUT:-results/epyc}
work=$(mktemp -d)
trap 'git -C "$REPO" worktree remove --force "$work/base" > /dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach --quiet "$work/base" "$BASE"
mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
    for code in base head; do
        dir=$REPO; [ "$code" = base ] && dir=$work/base
        for run in "relu exact" "groupsort best --group_size 10"; do
            set -- $run
            for workers in 1 2; do
                name="${code}_$1_w${workers}_$round"
                start=$(date +%s.%N)
                (cd "$dir" && "$PY" certify.py "$NETS/$1.p" --activation "$1" --method "$2" "${@:3}" --limit "$LIMIT" \
                    --data-dir "$DATA" --workers "$workers" --per-example "$work/$name.csv" > /dev/null)
                echo "$name $(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$work/times.txt"
            done
        done
    done
done
"$PY" - "$work" "$OUT" "$BASE" "$(git rev-parse --short "$BASE")" "$(git describe --always --dirty)" "$LIMIT" <<'PY'
import csv, json, os, statistics, sys, time
import cli
import torch
work, out, base, base_hash, head, limit = sys.argv[1:]
def verdicts(name):
    with open(f"{work}/{name}.csv") as handle:
        return [(row["index"], row["verdict"], row["decided_by"]) for row in csv.DictReader(handle)]
reference = {net: verdicts(f"head_{net}_w1_1") for net in ("relu", "groupsort")}  # each read once
times = {name: float(seconds) for name, seconds in (line.split() for line in open(f"{work}/times.txt"))}
runs = {}
for name in times:
    code, net, workers, _ = name.split("_")
    runs.setdefault(f"{code}_{net}_{workers}", []).append(round(times[name], 1))
medians = {key: statistics.median(values) for key, values in runs.items()}
record = {"command": "OMP_NUM_THREADS=2 scripts/measure_pool.sh", "base": base, "base_commit": base_hash,
          "head": head, "digits": int(limit), "nets": {"relu": "exact", "groupsort": "best"}, "radius": 0.1,
          "seconds": runs, "median_seconds": medians,
          "speedup": {f"{code}_{net}": round(medians[f"{code}_{net}_w1"] / medians[f"{code}_{net}_w2"], 2)
                      for code in ("base", "head") for net in ("relu", "groupsort")},
          "identical_verdicts": all(verdicts(name) == reference[name.split("_")[1]] for name in times),
          "threads": os.environ.get("OMP_NUM_THREADS"), "machine": cli.machine(), "torch": torch.__version__,
          "date": time.strftime("%Y-%m-%d")}
open(f"{out}/pool.json", "w").write(json.dumps(record, indent=1) + "\n")
print(json.dumps(record, indent=1))
PY
