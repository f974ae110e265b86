#!/usr/bin/env bash
# Every figure of the "Certification suite" section of docs/results.md, and docs/radius_curves.png.
#
# Assumes the two 100-epoch checkpoints of the reproduction (seed 0) in outputs/:
#   python train_mnist.py --data-dir ../shared/mnist                                            # outputs/mnist_groupsort.p
#   python train_mnist.py --data-dir ../shared/mnist --recipe relu                              # outputs/mnist_relu.p
# and trains the L2 model itself (recipe l2, 100 epochs). PGD runs on all 10,000 test images,
# 50 steps, 5 restarts, at every radius: expect tens of minutes on one CPU core (less on a GPU).
# certify.py exits with status 1 if PGD breaks any certified example; with `set -e` and
# `pipefail` this script then stops there. Every output is kept under outputs/certification/.
#
#   scripts/measure_certification.sh            # from the repository root, or anywhere
#   DATA_DIR=/path/to/mnist PYTHON=python3 scripts/measure_certification.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=outputs/certification
PGD=(--attack pgd --pgd-steps 50 --pgd-restarts 5)
EPS=(0 0.02 0.04 0.06 0.08 0.1 0.12 0.14 0.16 0.18 0.2 0.22 0.24 0.26 0.28 0.3)
mkdir -p "$OUT" docs

for model in groupsort relu; do
    # 1. docs/results.md table, L-inf radius 0.1: every method, PGD within the pixel range [0, 1],
    #    and each test image's certified radius per method.
    "$PY" certify.py "outputs/mnist_$model.p" --data-dir "$DATA" --method all "${PGD[@]}" \
        --per-example "$OUT/radii_linf_$model.csv" | tee "$OUT/linf_0.1_$model.txt"
    # 2. The same over the whole ball, not cut to [0, 1]: IBP on the Lipschitz methods' footing,
    #    and a PGD free to leave the valid images (a stronger check of the Lipschitz certificates).
    "$PY" certify.py "outputs/mnist_$model.p" --data-dir "$DATA" --method all --domain ball "${PGD[@]}" \
        | tee "$OUT/linf_0.1_ball_$model.txt"
    # 3. Radius curves, L-inf 0 to 0.3, with PGD as the upper curve.
    "$PY" certify.py "outputs/mnist_$model.p" --data-dir "$DATA" --method all --eps "${EPS[@]}" "${PGD[@]}" \
        --curves "$OUT/curves_$model.csv" | tee "$OUT/curves_$model.txt"
done
"$PY" curves.py "$OUT/curves_groupsort.csv" "$OUT/curves_relu.csv" \
    --titles "GroupSort, 100 epochs" "ReLU, 100 epochs" --out docs/radius_curves.png

# 4. L2: GroupSort trained with the L2 penalty (seed 0, 100 epochs), certified at L2 radius 1.58.
#    The recipe is --norm l2 --lc_penalty 0.5 --cert_magnitude 1.58 --method margin; --save-fn keeps
#    the checkpoint's name of the figures in docs/results.md (the recipe alone writes mnist_l2.p).
"$PY" train_mnist.py --data-dir "$DATA" --recipe l2 --save-fn mnist_groupsort_l2.p \
    | tee "$OUT/train_groupsort_l2.txt"
"$PY" certify.py outputs/mnist_groupsort_l2.p --data-dir "$DATA" --norm l2 --cert_magnitude 1.58 --method all \
    "${PGD[@]}" --per-example "$OUT/radii_l2_groupsort_l2.csv" | tee "$OUT/l2_1.58_groupsort_l2.txt"
# 5. For comparison, the L-inf-trained GroupSort net certified at the same L2 radius.
"$PY" certify.py outputs/mnist_groupsort.p --data-dir "$DATA" --norm l2 --cert_magnitude 1.58 --method all \
    "${PGD[@]}" | tee "$OUT/l2_1.58_groupsort.txt"

echo "done: tables in $OUT/*.txt, plot in docs/radius_curves.png"
