#!/usr/bin/env bash
# The three Wasserstein tasks of cemanil/LNets, each with GroupSort (groups of 4), MaxMin, FullSort and ReLU
# critics (orthonormal layers, the task's widths but for two: FullSort on circles takes twelve layers of 8 and
# 20 Bjorck steps, and MaxMin on sphere starts as a sorting network, 28 layers of 128), seed 0: one JSON per
# run in results/wasserstein/, and the plots of the default critics of the line and circles tasks in docs/. Run from
# the repository root, one thread a run (each record then holds its CPU time as well as its wall time); on two
# cores, two at once (TASKS and ACTIVATIONS pick some of the cells):
#     TASKS=circles OMP_NUM_THREADS=1 bash scripts/measure_wasserstein.sh &
#     TASKS="line sphere" OMP_NUM_THREADS=1 bash scripts/measure_wasserstein.sh
set -euo pipefail
out=results/wasserstein
mkdir -p "$out"
for task in ${TASKS:-line circles sphere}; do
    for activation in ${ACTIVATIONS:-groupsort maxmin fullsort relu}; do
        extra=()
        case "$task/$activation" in
            line/maxmin | circles/maxmin) extra=(--plot "docs/wasserstein_$task.png") ;;
            circles/fullsort) extra=(--hidden 8,8,8,8,8,8,8,8,8,8,8,8 --bjorck-iterations 20) ;;
            sphere/maxmin) extra=(--start sorting --steps 600 --lr 1e-3) ;;
        esac
        python wasserstein.py --task "$task" --activation "$activation" --group-size 4 --seed 0 \
            --json "$out/${task}_$activation.json" "${extra[@]}"
    done
done
