#!/usr/bin/env bash
# Does the label-free score rank cells like accuracy? The README's "Does the proxy work?" figures,
# on the real CIFAR-10 arrays, at a size a 2-core CPU finishes in about an hour:
#   * the default search score (proxy 5x6, 2 epochs, NT-Xent, val and train loss) on 24 random +
#     8 published cells, with 4 cells x 3 extra seeds for the score's noise;
#   * the same cells under the reference code's loss (memory-bank NCE, T=0.07), with 6 proxy
#     epochs (tau by epoch), and with twice the images: only the scores are new, every accuracy
#     (5x8 network, 3 epochs on 3,000 labeled images, tested on the 10,000 test images) is reused;
#   * TPE vs random and compact vs csnas at 16 trials x 3 seeds on the default objective.
# Every measurement runs as a task of a SLURM array, two at a time (one per core). Run from the
# repository root with the dev cluster up (slurm/dev-cluster.sh up). Results: runs/fidelity/*/,
# runs/compare/cifar10/, and a summary table printed at the end (benchmarks/fidelity_table.py).
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
"$PY" launch/fidelity.py "${COMMON[@]}"
"$PY" launch/fidelity.py "${COMMON[@]}" train.loss=membank_nce train.temperature=0.07 \
  fidelity.noise_cells=0
"$PY" launch/fidelity.py "${COMMON[@]}" train.epochs=6 fidelity.noise_cells=0
"$PY" launch/fidelity.py "${COMMON[@]}" data.fraction=0.6 fidelity.noise_cells=0
"$PY" launch/compare_samplers.py -m hydra/launcher=slurm_cpu hydra.launcher.array_parallelism=2 \
  train.num_threads=1 data=npz "data.path=$DATA/cifar10_train_10k.npz" data.fraction=0.3 \
  compare.name=cifar10 compare.n_trials=16
"$PY" benchmarks/fidelity_table.py "$CNAS_HOME"
