#!/usr/bin/env bash
# The probes behind the Wasserstein critics' choices in docs/results.md: critics of other widths, depths, steps,
# learning rates and Bjorck steps on the circles and sphere tasks, seed 0, one JSON per probe in
# results/epyc/wasserstein_probes/ (or $RESULTS/), from which scripts/report.py builds the table. One thread a
# run (each record then holds its CPU time); on two cores, two at once, PROBES picking each half:
#     PROBES="circles-gs128x3-s5000 ..." OMP_NUM_THREADS=1 bash scripts/measure_wasserstein_probes.sh &
set -euo pipefail
out=${RESULTS:-results/epyc/wasserstein_probes}
mkdir -p "$out"
three=128,128,128
all="circles-gs128x3-s5000 circles-gs128x3-s7000 circles-gs128x3-s10000-b10 circles-gs128x3-s12000-b10
     circles-gs128x3-s15000-b5 circles-gs312x3-s1000 circles-mm128x3-lr5e-4 circles-mm128x3-lr1e-2
     circles-fs64x6-lr1e-2 circles-fs64x6-lr3e-3 circles-fs48x8 circles-fs64x6-s12000
     sphere-mm128x8 sphere-mm128x8-batch1024 sphere-mm128x12"
for probe in ${PROBES:-$all}; do
    case "$probe" in
        circles-gs128x3-s5000) flags=(--task circles --activation groupsort --hidden $three --steps 5000 --bjorck-iterations 20) ;;
        circles-gs128x3-s7000) flags=(--task circles --activation groupsort --hidden $three --steps 7000 --bjorck-iterations 20) ;;
        circles-gs128x3-s10000-b10) flags=(--task circles --activation groupsort --hidden $three --steps 10000) ;;
        circles-gs128x3-s12000-b10) flags=(--task circles --activation groupsort --hidden $three --steps 12000) ;;
        circles-gs128x3-s15000-b5) flags=(--task circles --activation groupsort --hidden $three --steps 15000 --bjorck-iterations 5) ;;
        circles-gs312x3-s1000) flags=(--task circles --activation groupsort --hidden 312,312,312 --steps 1000 --lr 1e-3 --bjorck-iterations 20) ;;
        circles-mm128x3-lr5e-4) flags=(--task circles --activation maxmin --hidden $three --steps 2000 --lr 5e-4) ;;
        circles-mm128x3-lr1e-2) flags=(--task circles --activation maxmin --hidden $three --steps 2000 --lr 1e-2) ;;
        circles-fs64x6-lr1e-2) flags=(--task circles --activation fullsort --lr 1e-2) ;;
        circles-fs64x6-lr3e-3) flags=(--task circles --activation fullsort --lr 3e-3) ;;
        circles-fs48x8) flags=(--task circles --activation fullsort --hidden 48,48,48,48,48,48,48,48) ;;
        circles-fs64x6-s12000) flags=(--task circles --activation fullsort --steps 12000) ;;
        sphere-mm128x8) flags=(--task sphere --activation maxmin --hidden 128,128,128,128,128,128,128,128) ;;
        sphere-mm128x8-batch1024) flags=(--task sphere --activation maxmin --hidden 128,128,128,128,128,128,128,128 --batch-size 1024 --steps 5000) ;;
        sphere-mm128x12) flags=(--task sphere --activation maxmin --hidden 128,128,128,128,128,128,128,128,128,128,128,128 --steps 4000) ;;
        *) echo "error: unknown probe $probe (one of: $(echo $all))" >&2; exit 2 ;;
    esac
    python wasserstein.py "${flags[@]}" --group-size 4 --seed 0 --json "$out/$probe.json"
done
