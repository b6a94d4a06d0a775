#!/usr/bin/env bash
# GPU smoke test: a short real search on CUDA with several workers sharing one GPU and mixed
# precision; prints trials per minute and peak GPU memory per worker.
#   bash benchmarks/gpu_smoke.sh [WORKERS=3] [TRIALS=12]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-3}
TRIALS=${2:-12}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
WORK=$(mktemp -d /tmp/autofuse-gpu-smoke.XXXX)
"$PY" - "$WORK" "$WORKERS" "$TRIALS" <<'PYEOF'
import sys, time, collections
import torch
import optuna
from autofuse.data.builders import build_demo
from autofuse.study import search

work, workers, trials = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"GPU: {torch.cuda.get_device_name(0)}; {workers} workers on cuda:0, bf16 autocast")
data = build_demo(f"{work}/demo", n=1200, seed=0)
t = time.monotonic()
res = search(data, study="gpu_smoke", trials=trials, space="demo", workdir=work, progress=False,
             workers=workers, devices=",".join(["cuda:0"] * workers), amp=True, report=False,
             mlflow_uri="off")
wall = time.monotonic() - t
st = optuna.load_study(study_name="gpu_smoke", storage=f"sqlite:///{work}/trials/autofuse.db")
done = [x for x in st.trials if x.state.name in ("COMPLETE", "PRUNED")]
print(f"{len(done)} trials in {wall:.1f} s: {60 * len(done) / wall:.1f} trials/min")
peak = collections.defaultdict(float)
for x in st.trials:
    if "peak_gpu_mb" in x.user_attrs:
        peak[x.user_attrs["worker"]] = max(peak[x.user_attrs["worker"]], x.user_attrs["peak_gpu_mb"])
for w, mb in sorted(peak.items()):
    print(f"worker {w}: peak GPU memory {mb:.0f} MiB")
print("best:", res.summary["best_trial"], res.summary["test_metrics"])
PYEOF
