#!/usr/bin/env bash
# GPU speed of a candidate and the CUDA paths (issue 12), in one command on a one-GPU node
# without internet (the recipe of ../shared/GPU.md). Fits in a 10-minute run; prints one
# markdown table (also written to $OUT/gpu_results.md): copy it into benchmarks/RESULTS.md.
#
#   prepare, once, where the package index is reachable:  bash benchmarks/gpu_prepare.sh
#   run on the GPU node, from the repository root:       bash benchmarks/gpu.sh
#   check it without a GPU (CPU, tiny sizes):            bash benchmarks/gpu.sh --dry-run
#
# Nothing is installed into the node's Python: the wheels in .whl/ go to .site/ (--target),
# torch and torchvision stay the node's own. Extra arguments go to benchmarks/gpu_checks.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --upgrade --target .site .whl/*.whl
fi
export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

# Preflight: name what is missing instead of failing half-way.
"$PYTHON" - <<'PY'
import importlib
missing = []
for name in ("torch", "torchvision", "optuna", "sqlalchemy", "hydra", "omegaconf", "submitit",
             "tqdm", "tabulate", "tenacity", "matplotlib", "pytest"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    print(f"missing modules: {', '.join(missing)} (add their wheels to .whl/: gpu_prepare.sh)")
PY

DMON_PID=""
cleanup() { if [[ -n "$DMON_PID" ]]; then kill "$DMON_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvidia-smi dmon -s u -d 1 >"$OUT/dmon.log" 2>&1 &
    DMON_PID=$!
fi

status=0
timeout 570 "$PYTHON" benchmarks/gpu_checks.py --out "$OUT" \
    --data .gpu-data/cifar10_train_10k.npz "$@" || status=$?
cleanup
DMON_PID=""
if [[ -s "$OUT/dmon.log" ]]; then
    awk '$1 !~ /^#/ && NF > 1 { n++; sm += $2 } END { if (n) printf "SM busy during the checks: mean %.0f%% over %d samples\n", sm / n, n }' "$OUT/dmon.log"
fi
exit "$status"
