#!/usr/bin/env bash
# The figures of the "Performance" section of docs/results.md: results/performance/, from which
# scripts/report.py builds its tables.
#
# bench.py times five epochs of the default GroupSort training through the original demo's data path and
# through this project's, eager and under torch.compile, and bounds what five seeds trained at once could cost
# (bench.json). Then the default run with --compile, 100 epochs, certified and attacked as the reproduction's
# eager run is (compile.json; the eager run's record is results/reproduction/demo.json). Run alone on the
# machine, from anywhere: the times are the figures.
#
#   OMP_NUM_THREADS=2 scripts/measure_performance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=results/performance
mkdir -p "$OUT" outputs/performance
"$PY" bench.py --data-dir "$DATA" --epochs 5 --compile --seeds 5 --json "$OUT/bench.json"
"$PY" train_mnist.py --compile --data-dir "$DATA" --save-dir outputs/performance --save-fn mnist_demo_compile.p \
    --overwrite 2>&1 | tee outputs/performance/demo_compile.log
"$PY" scripts/measure_recipe.py outputs/performance/mnist_demo_compile.p --data-dir "$DATA" --json "$OUT/compile.json"
echo "done: records in $OUT/; then python scripts/report.py"
