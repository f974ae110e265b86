#!/usr/bin/env bash
# The recipes of docs/results.md: train each (unless its checkpoint is there already), then
# certify it on all 10,000 test digits with every sound method and attack it with APGD
# (scripts/measure_recipe.py), writing results/recipes/<recipe>.json (or $RESULTS/), from which scripts/report.py
# builds the tables. Run alone on the machine: the training time is the budget. Logs go to outputs/recipes/.
#
#   OMP_NUM_THREADS=2 scripts/measure_recipes.sh                        # cnn-ibp, cnn-ibp-0.3, bcop-l2
#   RECIPES="cnn-ibp" SEEDS="1 2" OMP_NUM_THREADS=2 scripts/measure_recipes.sh
#   RECIPES=bcop-l2 ATTACK_LIMIT=500 scripts/measure_recipes.sh     # APGD on the first 500 digits only
#   RECIPES="cnn-ibp cnn-ibp-0.3" VERIFY=60 scripts/measure_recipes.sh  # and exact verification, 60 s a digit
#   RECIPES="demo relu" RESULTS=results/reproduction OMP_NUM_THREADS=2 scripts/measure_recipes.sh  # the demo's runs
#   RECIPES=l2-lmt FLAGS="--epochs 100" TAG=e100 RESULTS=results/epyc/variants scripts/measure_recipes.sh
#       # a variant: the recipe with more flags, named mnist_<recipe>+<TAG>.p, its flags in the record
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=outputs/recipes
RESULTS=${RESULTS:-results/recipes}
mkdir -p "$OUT" "$RESULTS"

for recipe in ${RECIPES:-cnn-ibp cnn-ibp-0.3 bcop-l2}; do
    for seed in ${SEEDS:-0}; do
        name="$recipe${TAG:++$TAG}"; [ "$seed" = 0 ] || name="${name}_seed$seed"
        if [ ! -f "$OUT/mnist_$name.p" ]; then
            # shellcheck disable=SC2086  # FLAGS is a list of flags
            "$PY" train_mnist.py --recipe "$recipe" ${FLAGS:-} --seed "$seed" --data-dir "$DATA" --save-dir "$OUT" \
                --save-fn "mnist_$name.p" --overwrite 2>&1 | tee "$OUT/$name.log"
        fi
        "$PY" scripts/measure_recipe.py "$OUT/mnist_$name.p" --data-dir "$DATA" --json "$RESULTS/$name.json" \
            ${ATTACK_LIMIT:+--attack-limit "$ATTACK_LIMIT"} ${VERIFY:+--verify "$VERIFY"} ${FLAGS:+--variant="$FLAGS"}
    done
done
