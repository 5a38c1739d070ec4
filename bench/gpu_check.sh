#!/usr/bin/env bash
# GPU check (< 5 minutes on one GPU): the estimator tests, then the throughput table on the accelerator.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default OUT_DIR: bench/results/gpu
#
# Needs an environment with this package, its test extra and a GPU build of JAX, e.g.
#   pip install -e '.[test]' 'jax[cuda12]'
# (the machine may be offline: build that environment where the registry is reachable and carry it).
# Writes OUT_DIR/{bench.json,bench.md,throughput.png,bench_memory.md,tests.log}; exits non-zero if the GPU
# is missing or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/gpu}"
mkdir -p "$out"

python - <<'PY'
import jax
backend = jax.default_backend()
print("JAX", jax.__version__, "backend", backend, jax.devices())
if backend == "cpu":
    raise SystemExit("gpu_check: JAX sees no accelerator (backend 'cpu'); install a GPU build of jax.")
PY

# 1. Estimators against their closed-form oracles, on the accelerator (one process: -n 0).
timeout 180 pytest -n 0 -q -x -p no:cacheprovider \
  tests/test_score_estimators.py tests/test_spectrum.py tests/test_model_free.py tests/test_memory_bounds.py \
  2>&1 | tee "$out/tests.log" | tail -5

# 2. Throughput of every estimator across D and batch sizes, every setting (no --max-work cap).
timeout 150 mmh-jax bench --preset full --batch-sizes 64 512 --out "$out"
# 3. Memory at image scale (compile-only: XLA's buffer assignment on this backend).
timeout 90 python bench/bench_memory.py --out "$out" | tail -12
echo "gpu_check: done; results in $out"
