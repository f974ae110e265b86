#!/usr/bin/env bash
# The attack tables of docs/results.md ("The attack: APGD against AutoAttack"): results/attacks/{linf,l2,l1}.json.
#
# Needs the reference, installed by hand without touching the pinned torch: pip install --no-deps pyautoattack
# About 25 minutes on the 2-core machine, AutoAttack most of it.
#
#   scripts/measure_attacks.sh            # from the repository root, or anywhere; then python scripts/report.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-../shared/mnist}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p results/attacks
"$PY" scripts/compare_autoattack.py --data-dir "$DATA" --all-digits --json results/attacks/linf.json
"$PY" scripts/compare_autoattack.py --data-dir "$DATA" --norm l2 --eps 1.58 --json results/attacks/l2.json
"$PY" scripts/compare_autoattack.py --data-dir "$DATA" --norm l1 --eps 3 --limit 300 --json results/attacks/l1.json
