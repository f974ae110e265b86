#!/usr/bin/env bash
# The "Exact verification" table of docs/results.md and docs/counterexamples.png: the reproduction's seed-0
# checkpoints (outputs/recipes/mnist_relu.p and mnist_demo.p, from
# `RECIPES="demo relu" RESULTS=results/reproduction scripts/measure_recipes.sh`) certified, attacked with APGD
# and verified by scripts/measure_recipe.py, 60 s a digit on every core, one record each in
# results/verification/xeon/ (or $OUT/); then the first counterexamples that exact verification finds for the
# ReLU net. Run alone on the machine, from the repository root or anywhere:
#
#   OMP_NUM_THREADS=2 scripts/measure_verification.sh
#   OUT=results/epyc/verification OMP_NUM_THREADS=2 scripts/measure_verification.sh   # another machine's records
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=${OUT:-results/verification/xeon}
mkdir -p "$OUT" docs

verify() {  # verify NET NAME [FLAGS...]: outputs/recipes/mnist_NET.p into $OUT/NAME.json
    local net=$1 name=$2
    shift 2
    "$PY" scripts/measure_recipe.py "outputs/recipes/mnist_$net.p" --data-dir "$DATA" --verify 60 \
        --json "$OUT/$name.json" "$@"
}

verify relu relu                                                  # all 10,000 digits, method best
verify relu relu_0.3 --radius 0.3
verify relu relu_first1000_exact --limit 1000 --verify-method exact
verify relu relu_first1000_lp --limit 1000 --verify-method lp
verify demo demo_first1000 --limit 1000                           # GroupSort's programs are far harder
verify demo demo_first1000_lp --limit 1000 --verify-method lp
"$PY" certify.py outputs/recipes/mnist_relu.p --data-dir "$DATA" --method exact --limit 100 \
    --save-adversarial docs/counterexamples.png
