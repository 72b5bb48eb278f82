#!/usr/bin/env bash
# Prepare benchmarks/gpu.sh for an offline GPU node (../shared/GPU.md): the wheels the node's
# Python 3.12 lacks into .whl/ and the CIFAR-10 sample into .gpu-data/ (both git-ignored).
# Run once where the package index is reachable, from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${CNAS_GPU_DATA:-../shared/data/cifar10/cifar10_train_10k.npz}
mkdir -p .whl .gpu-data
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    optuna==5.0.0 SQLAlchemy==2.1.9 greenlet alembic Mako MarkupSafe colorlog PyYAML \
    hydra-core==1.3.8 omegaconf==2.3.1 hydra-submitit-launcher==1.2.0 submitit==1.5.4 \
    cloudpickle typing_extensions tqdm tabulate tenacity pytest pluggy iniconfig packaging
"$PYTHON" -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
cp "$DATA" .gpu-data/
ls -la .whl .gpu-data
