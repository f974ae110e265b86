#!/usr/bin/env bash
# The certified-accuracy frontier of docs/results.md: train each recipe, timed end to end with `time`,
# then certify it with every sound method and attack it with PGD.
#
# RECIPES (default: ibp-wide) names the recipes; SEEDS (default: 0) the seeds of each. Run alone on
# the machine: the wall time is the budget. certify.py exits with status 1 if PGD breaks a certified
# example, which stops this script. Logs go to outputs/frontier/.
#
#   scripts/measure_frontier.sh                          # from the repository root, or anywhere
#   RECIPES="ibp-wide ibp-gs50" SEEDS="0 1 2" scripts/measure_frontier.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=outputs/frontier
mkdir -p "$OUT"

for recipe in ${RECIPES:-ibp-wide}; do
    for seed in ${SEEDS:-0}; do
        name="${recipe}_seed$seed"
        { time "$PY" train_mnist.py --recipe "$recipe" --seed "$seed" --data-dir "$DATA" --save-dir "$OUT" \
            --save-fn "$name.p" --overwrite; } 2>&1 | tee "$OUT/$name.log"
        read -r norm radius < <("$PY" -c 'import json, sys; m = json.load(open(sys.argv[1]))
print(m["norm"], m["cert_magnitude"])' "$OUT/$name.json")
        "$PY" certify.py "$OUT/$name.p" --data-dir "$DATA" --method all --attack pgd --norm "$norm" \
            --cert_magnitude "$radius" | tee "$OUT/${name}_certify.txt"
    done
done
