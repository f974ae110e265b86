#!/usr/bin/env bash
# Does every layer keep the gradient's norm? Three nets of the bjorck-l2 recipe's architecture (784-1024-10,
# lmt loss at L2, 8 epochs, seed 0): orthonormal MaxMin (the recipe), orthonormal ReLU, and the same MaxMin
# net without the constraint; then the top singular value of each of the first 1,000 test digits' Jacobians
# against each net's proved L2 bound: docs/gradient_norms.png and results/gradient_norms.json.
# Run from the repository root:  OMP_NUM_THREADS=2 bash scripts/measure_gradient_norms.sh
set -euo pipefail
data=${DATA_DIR:-../shared/mnist}
python train_mnist.py --recipe bjorck-l2 --data-dir "$data" --save-fn mnist_bjorck-l2.p
python train_mnist.py --recipe bjorck-l2 --activation relu --data-dir "$data" --save-fn mnist_bjorck-l2-relu.p
python train_mnist.py --recipe bjorck-l2 --constraint none --data-dir "$data" --save-fn mnist_bjorck-l2-free.p
python scripts/gradient_norms.py outputs/mnist_bjorck-l2.p outputs/mnist_bjorck-l2-relu.p outputs/mnist_bjorck-l2-free.p \
    --titles "orthonormal MaxMin" "orthonormal ReLU" "unconstrained MaxMin" --data-dir "$data" --limit 1000 \
    --out docs/gradient_norms.png --json results/gradient_norms.json
