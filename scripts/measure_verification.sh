#!/usr/bin/env bash
# Every figure of the "Exact verification" section of docs/results.md, and docs/counterexamples.png.
#
# Assumes the two 100-epoch seed-0 checkpoints of the reproduction in outputs/ (`python train_mnist.py
# --data-dir ../shared/mnist` and the same with `--recipe relu`). Writes every table and per-example CSV under outputs/verification/.
# LIMIT (default 1000) digits for ReLU at L-inf 0.1; LIMIT_WIDE (default 100) for ReLU at 0.3 and
# LIMIT_GROUPSORT (default 1000) for GroupSort at 0.1, whose programs often reach the time limit.
#
#   scripts/measure_verification.sh            # from the repository root, or anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=outputs/verification
LIMIT=${LIMIT:-1000}
LIMIT_WIDE=${LIMIT_WIDE:-100}
LIMIT_GROUPSORT=${LIMIT_GROUPSORT:-1000}
mkdir -p "$OUT" docs

run() {  # run NAME ARGS...: the command's table to $OUT/NAME.txt, its wall time on the last line
    local name=$1
    shift
    local start=$SECONDS
    "$PY" certify.py "$@" --data-dir "$DATA" | tee "$OUT/$name.txt"
    echo "wall time: $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

for eps in 0.1 0.3; do
    limit=$([ "$eps" = 0.1 ] && echo "$LIMIT" || echo "$LIMIT_WIDE")
    run "relu_all_$eps" outputs/mnist_relu.p --method all --attack pgd --cert_magnitude "$eps" --limit "$limit"
    run "relu_lp_$eps" outputs/mnist_relu.p --method lp --cert_magnitude "$eps" --limit "$limit" \
        --per-example "$OUT/relu_lp_$eps.csv"
    run "relu_exact_$eps" outputs/mnist_relu.p --method exact --cert_magnitude "$eps" --limit "$limit" \
        --per-example "$OUT/relu_exact_$eps.csv" --save-adversarial "$OUT/relu_exact_$eps.png"
done
run groupsort_all_0.1 outputs/mnist_groupsort.p --method all --attack pgd --limit "$LIMIT_GROUPSORT"
run groupsort_lp_0.1 outputs/mnist_groupsort.p --method lp --limit "$LIMIT_GROUPSORT" \
    --per-example "$OUT/groupsort_lp_0.1.csv"
run groupsort_best_0.1 outputs/mnist_groupsort.p --method best --limit "$LIMIT_GROUPSORT" \
    --per-example "$OUT/groupsort_best_0.1.csv" --save-adversarial "$OUT/groupsort_best_0.1.png"
# The whole test set for ReLU, with --method best: IBP and PGD settle most digits at once.
for eps in 0.1 0.3; do
    run "relu_best_${eps}_all" outputs/mnist_relu.p --method best --cert_magnitude "$eps" \
        --per-example "$OUT/relu_best_${eps}_all.csv"
done
cp "$OUT/relu_exact_0.1.png" docs/counterexamples.png
echo "done: tables in $OUT/*.txt, the grid in docs/counterexamples.png"
