#!/usr/bin/env bash
# The GPU checks in one go, run by a person on a machine with a CUDA GPU, from the repository
# root:
#   bash benchmarks/gpu_run.sh            # results under ./gpu_results
#   OUT=/somewhere bash benchmarks/gpu_run.sh
# 1. .venv (created with the dev extras when absent; PY=/path/to/python uses that interpreter
#    instead, e.g. one that already has torch with CUDA);
# 2. pytest -m gpu (tests/gpu: families on CUDA, AMP, a real out-of-memory error on a shared GPU,
#    4 workers on one device);
# 3. benchmarks/gpu_throughput.py (1/2/4/8 workers on one GPU, AMP vs fp32, stage 2 GPU vs CPU),
#    which writes its tables to docs/benchmarks.md;
# 4. copies the pytest output, the benchmark's output and docs/benchmarks.md into $OUT.
# Exit status: pytest's if it failed, else the benchmark's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${PY:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' || exit 1
    fi
    PY=.venv/bin/python
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible")' \
    | tee "$OUT/device.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

"$PY" -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt"
tests_rc=${PIPESTATUS[0]}

"$PY" benchmarks/gpu_throughput.py 2>&1 | tee "$OUT/gpu_throughput.txt"
bench_rc=${PIPESTATUS[0]}
[ -f docs/benchmarks.md ] && cp docs/benchmarks.md "$OUT/benchmarks.md"

echo "pytest -m gpu: exit $tests_rc; gpu_throughput.py: exit $bench_rc; results in $OUT"
[ "$tests_rc" -ne 0 ] && exit "$tests_rc"
exit "$bench_rc"
