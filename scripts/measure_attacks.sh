#!/usr/bin/env bash
# The attack tables of docs/results.md ("The attack: APGD against AutoAttack"), into results/attacks/ (or
# $RESULTS/), one part after another (PARTS picks some):
#   linf, l2, l1     the comparisons of linf.json, l2.json and l1.json (L1 with AutoAttack's four attacks alone);
#   linf-seeds       L-inf with `apgd` at seeds 1 to 7 too, each against AutoAttack at seed 0 (linf_apgd_seeds.json);
#   l1-seeds         L1 at seeds 1 and 2 (l1_seed1.json, l1_seed2.json);
#   l2-needles       the narrow L2 digits 675 and 880 alone, seeds 0 to 5 (l2_needles_seedK.json).
#
# Needs the reference, installed by hand without touching the pinned torch: pip install --no-deps pyautoattack
# About 50 minutes on the 2-core machine, AutoAttack most of it.
#
#   scripts/measure_attacks.sh            # from the repository root, or anywhere; then python scripts/report.py
#   RESULTS=results/epyc/attacks PARTS="l1 l1-seeds l2-needles" scripts/measure_attacks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
RESULTS=${RESULTS:-results/attacks}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$RESULTS"
compare() { "$PY" scripts/compare_autoattack.py --data-dir "$DATA" "$@"; }
for part in ${PARTS:-linf linf-seeds l2 l1 l1-seeds l2-needles}; do
    case "$part" in
        linf) compare --all-digits --json "$RESULTS/linf.json" ;;
        linf-seeds) compare --apgd-seeds 1,2,3,4,5,6,7 --json "$RESULTS/linf_apgd_seeds.json" ;;
        l2) compare --norm l2 --eps 1.58 --json "$RESULTS/l2.json" ;;
        l1) compare --norm l1 --eps 3 --limit 300 --components --json "$RESULTS/l1.json" ;;
        l1-seeds) for seed in 1 2; do
                compare --norm l1 --eps 3 --limit 300 --seed "$seed" --json "$RESULTS/l1_seed$seed.json"
            done ;;
        l2-needles) for seed in 0 1 2 3 4 5; do
                compare --norm l2 --eps 1.58 --digits 675,880 --components --seed "$seed" \
                    --json "$RESULTS/l2_needles_seed$seed.json"
            done ;;
        *) echo "error: unknown part $part (one of: linf linf-seeds l2 l1 l1-seeds l2-needles)" >&2; exit 2 ;;
    esac
done
