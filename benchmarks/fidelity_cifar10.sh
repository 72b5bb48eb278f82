#!/usr/bin/env bash
# Does the label-free score rank cells like accuracy? The README's "Does the proxy work?" figures,
# on the real CIFAR-10 arrays, at a size a 2-core CPU finishes in under two hours (the first
# command: about an hour):
#   * the default search score (proxy 5x6, 2 epochs, NT-Xent; val and train loss) on 24 random +
#     8 published cells, with 4 cells x 3 extra seeds for the score's noise; every accuracy is a
#     5x8 network trained 3 epochs on 3,000 labeled images, tested on the 10,000 test images;
#   * on the first 16 of those cells (8 random + 8 published; output in $CNAS_HOME/cells16, the
#     same database, so every accuracy and the default scores are reused): the default score
#     again, the reference code's loss (memory-bank NCE, T=0.07) and half the images (a cheaper
#     proxy); tau after 1 and 2 proxy epochs comes with every run;
#   * TPE vs random and compact vs csnas: 8 trials x 3 seeds each, on 1,000 images.
# Every measurement runs as a task of a SLURM array, two at a time (one per core). Run from the
# repository root with the dev cluster up (slurm/dev-cluster.sh up). Results: runs/fidelity-cifar10/
# {fidelity,cells16/fidelity,compare}/, and summary tables printed at the end
# (benchmarks/fidelity_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${CIFAR10_DIR:-../shared/data/cifar10}
export CNAS_HOME=${CNAS_HOME:-runs/fidelity-cifar10}
export OMP_NUM_THREADS=1
COMMON=(
  -m hydra/launcher=slurm_cpu hydra.launcher.array_parallelism=2 train.num_threads=1
  data=npz "data.path=$DATA/cifar10_train_10k.npz" "data.test_path=$DATA/cifar10_test.npz"
  data.fraction=0.3 fidelity.accuracy_fraction=0.3 protocol=debug protocol.test_every_epochs=3
)
CELLS16=(
  fidelity.n_random=8 fidelity.noise_cells=0
  "output_dir=$CNAS_HOME/cells16" "study.storage=sqlite:///$CNAS_HOME/cnas.db"
)
"$PY" launch/fidelity.py "${COMMON[@]}"
"$PY" launch/fidelity.py "${COMMON[@]}" "${CELLS16[@]}"
"$PY" launch/fidelity.py "${COMMON[@]}" "${CELLS16[@]}" train.loss=membank_nce train.temperature=0.07
"$PY" launch/fidelity.py "${COMMON[@]}" "${CELLS16[@]}" data.fraction=0.15
"$PY" launch/compare_samplers.py -m hydra/launcher=slurm_cpu hydra.launcher.array_parallelism=2 \
  train.num_threads=1 data=npz "data.path=$DATA/cifar10_train_10k.npz" data.fraction=0.1 \
  compare.name=cifar10 compare.n_trials=8
echo "== 32 cells"
"$PY" benchmarks/fidelity_table.py "$CNAS_HOME"
echo "== the first 16 cells"
"$PY" benchmarks/fidelity_table.py "$CNAS_HOME/cells16"
