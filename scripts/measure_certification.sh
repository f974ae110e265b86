#!/usr/bin/env bash
# The L-inf figures of the "Certification suite" section of docs/results.md: results/certification/ and
# docs/radius_curves.png, from which (with results/reproduction/) scripts/report.py builds its tables.
#
# Certifies with every method and attacks with APGD all 10,000 test digits of the reproduction's two seed-0
# checkpoints, outputs/recipes/mnist_demo.p and mnist_relu.p, which
#     RECIPES="demo relu" RESULTS=results/reproduction OMP_NUM_THREADS=2 scripts/measure_recipes.sh
# trains and records at L-inf 0.1 within the pixel range. Here: the same in the whole ball (--domain ball),
# and at 16 radii (the radius curves, each CSV with its record). certify.py and scripts/measure_recipe.py exit
# with status 1 if APGD breaks a certified digit, which stops this script (`set -e`). Run alone on the
# machine, from anywhere:
#
#   OMP_NUM_THREADS=2 scripts/measure_certification.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=results/certification
EPS=(0 0.02 0.04 0.06 0.08 0.1 0.12 0.14 0.16 0.18 0.2 0.22 0.24 0.26 0.28 0.3)
mkdir -p "$OUT" outputs/certification docs
for net in demo relu; do
    "$PY" scripts/measure_recipe.py "outputs/recipes/mnist_$net.p" --data-dir "$DATA" --domain ball \
        --json "$OUT/${net}_ball.json"
    "$PY" certify.py "outputs/recipes/mnist_$net.p" --data-dir "$DATA" --method all --eps "${EPS[@]}" --attack \
        --curves "outputs/certification/curves_$net.csv"
    cp "outputs/certification/curves_$net.csv" "outputs/certification/curves_$net.csv.json" "$OUT/"
done
"$PY" curves.py "$OUT/curves_demo.csv" "$OUT/curves_relu.csv" --titles "GroupSort, 100 epochs" "ReLU, 100 epochs" \
    --out docs/radius_curves.png
echo "done: records in $OUT/, plot in docs/radius_curves.png; then python scripts/report.py"
