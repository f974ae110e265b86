#!/usr/bin/env bash
# The CUDA path on a GPU, written to results/cuda/ (or $RESULTS/): the default run, a short IBP-trained CNN,
# the certificates on the GPU against the CPU (scripts/measure_cuda.py), certify.py on both devices, the
# orthonormal recipes (Bjorck's iteration in the forward pass) and bench.py's epoch and stacked-seed figures.
# Checkpoints go to $OUT (default /tmp/cuda-runs). About 9 minutes on an H200. Needs a CUDA device.
#
#   DATA_DIR=../shared/mnist bash scripts/measure_cuda.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
OUT=${OUT:-/tmp/cuda-runs}
RESULTS=${RESULTS:-results/cuda}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'measure_cuda.sh: no CUDA device')" || exit 2
mkdir -p "$OUT" "$RESULTS"

step() {  # the command, its output and its wall seconds, into $RESULTS/log.txt
    echo "=== $(date -u +%FT%TZ) $*"
    local start=$(date +%s%N)
    "$@"
    echo "=== rc=$? ms=$(( ($(date +%s%N) - start) / 1000000 ))"
}
train() {  # a name, then train_mnist.py's flags
    local name=$1; shift
    echo "$PY train_mnist.py --device cuda $*" > "$OUT/$name.command"
    step "$PY" train_mnist.py --data-dir "$DATA" --device cuda --save-dir "$OUT" --save-fn "$name.p" "$@"
}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, os; print('torch', torch.__version__, 'cores', os.cpu_count())"
    train default
    train cnn-ibp --recipe cnn-ibp --epochs 3
    step "$PY" scripts/measure_cuda.py "$OUT/default.p" "$OUT/cnn-ibp.p" --data-dir "$DATA" --limit 2000 \
        --json "$RESULTS/certify_cuda.json"
    train bcop-l2 --recipe bcop-l2 --epochs 2
    step "$PY" scripts/measure_cuda.py "$OUT/bcop-l2.p" --data-dir "$DATA" --limit 2000 \
        --json "$RESULTS/certify_cuda_bcop.json"
    for device in cuda cpu; do
        step "$PY" certify.py "$OUT/default.p" --data-dir "$DATA" --device $device --method all --attack
    done
    train orthonormal-b128 --recipe bjorck-l2 --constraint orthonormal
    for seed in 0 1 2; do train orthonormal-b1024-s$seed --recipe bjorck-l2 --constraint orthonormal \
        --batch-size 1024 --seed $seed; done
    train orthonormal-b1024-ep16 --recipe bjorck-l2 --constraint orthonormal --batch-size 1024 --epochs 16
    train orthonormal-b1024-it10 --recipe bjorck-l2 --constraint orthonormal --batch-size 1024 --bjorck-iterations 10
    train orthonormal-b512 --recipe bjorck-l2 --constraint orthonormal --batch-size 512
    train orthonormal-l2 --recipe orthonormal-l2
    step "$PY" bench.py --data-dir "$DATA" --device cuda --epochs 2 --seeds 5 --json "$RESULTS/bench_cuda.json"
} 2>&1 | tee "$RESULTS/log.txt"
"$PY" - "$OUT" "$RESULTS/training.json" <<'PYEND'
import json, sys
from pathlib import Path
runs = [{"name": path.stem, "command": path.with_suffix(".command").read_text().strip(), **json.loads(path.read_text())}
        for path in sorted(Path(sys.argv[1]).glob("*.json"))]
Path(sys.argv[2]).write_text(json.dumps(runs, indent=1) + "\n")
PYEND
