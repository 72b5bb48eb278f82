#!/usr/bin/env bash
# Which label-free ranking agrees with 600-epoch training? README "Does the proxy work?".
# Ground truth: ../shared/data/darts_ground_truth/darts_cifar10_dev50.json (50 random DARTS cells,
# CIFAR-10 test accuracy after the full DARTS protocol, and 32 cheaper supervised settings of the
# same paper with their GPU time). Every ranking is measured on the SAME 50 cells, side by side:
#   1. the zero-cost proxies (NASWOT, synflow) at the default zero_cost settings (8 cells x 16
#      channels, NASWOT batch 64), 4 cells x 3 extra seeds for their noise; parameters and MACs
#      of the 20 x 36 network; the file's supervised rankings;
#   2. the contrastive score of the default search (train=quick: proxy 5x6, 4 SGD steps of 128
#      unlabeled images out of 9,000, then the NT-Xent loss on the 1,000 held-out images; the
#      training loss too), 4 cells x 2 extra seeds; the report also ranks by the per-cell rank
#      mean of that loss and NASWOT;
#   3. (VARIANTS=1) the variants the default was chosen against: 1 step, 8 steps, and the earlier
#      default (2 whole epochs of 1,000 images, data.fraction=0.1);
#   4. (LARGE=1) 2 whole epochs of 3,000 images (data.fraction=0.3: the README's earlier setting);
#   5. (SEEDS=1) the default's score under a second seed for EVERY cell (the noise share over 50
#      cells, the seed-averaged tier, the default's tau under another seed; paired_tau.py).
# Local runs, one process each (CPU). Measurements live in $CNAS_HOME/cnas.db: a rerun reuses
# every one of them and only rewrites the reports. Reports: $CNAS_HOME/fidelity/*/, copied to
# benchmarks/results/fidelity_reference/ (<name>.txt, .json, _tau_vs_cost.png; the README table:
# python benchmarks/reference_table.py "LABEL=<name>.json" ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${CIFAR10_DIR:-../shared/data/cifar10}
REFERENCE=${REFERENCE:-../shared/data/darts_ground_truth/darts_cifar10_dev50.json}
export CNAS_HOME=${CNAS_HOME:-runs/fidelity-reference}
OUT=benchmarks/results/fidelity_reference
COMMON=(
  "fidelity.reference=$REFERENCE" data=npz "data.path=$DATA/cifar10_train_10k.npz"
  fidelity.noise_cells=4
)
mkdir -p "$OUT"
run() {  # name, overrides...
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall, %U s user" "$PY" launch/fidelity.py "${COMMON[@]}" "$@" \
    > "$OUT/$name.log" 2>&1
  sed -n '/^settings:/,/^report:/p' "$OUT/$name.log" > "$OUT/$name.txt"
  local folder
  folder=$(dirname "$(sed -n 's/^report: //p' "$OUT/$name.log")")
  cp "$folder/fidelity.json" "$OUT/$name.json"
  cp "$folder/tau_vs_cost.png" "$OUT/${name}_tau_vs_cost.png"
  tail -1 "$OUT/$name.log"
}
run zero_cost search.objective=naswot fidelity.noise_seeds=3 study.name=ref-zero-cost
CONTRASTIVE=(fidelity.noise_seeds=2 train.num_threads=1 train.perf=channels_last)
run contrastive_e1s4 "${CONTRASTIVE[@]}" study.name=ref-contrastive-e1s4
if [ "${VARIANTS:-0}" = 1 ]; then
  run contrastive_e1s1 "${CONTRASTIVE[@]}" train.max_steps_per_epoch=1 study.name=ref-e1s1
  run contrastive_e1s8 "${CONTRASTIVE[@]}" train.max_steps_per_epoch=8 study.name=ref-e1s8
  run contrastive_1k "${CONTRASTIVE[@]}" data.fraction=0.1 train.epochs=2 \
    train.max_steps_per_epoch=null study.name=ref-contrastive-1k
fi
if [ "${LARGE:-0}" = 1 ]; then
  run contrastive_3k "${CONTRASTIVE[@]}" data.fraction=0.3 train.epochs=2 \
    train.max_steps_per_epoch=null study.name=ref-contrastive-3k
fi
if [ "${SEEDS:-0}" = 1 ]; then
  run contrastive_e1s4_seeds train.num_threads=1 train.perf=channels_last fidelity.noise_cells=50 \
    fidelity.noise_seeds=1 study.name=ref-contrastive-e1s4-seeds
  "$PY" benchmarks/paired_tau.py "$OUT/contrastive_e1s4_seeds.json" \
    > "$OUT/contrastive_e1s4_seeds_paired.txt"
fi
