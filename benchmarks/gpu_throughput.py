"""GPU throughput: trials per minute and GPU utilisation with 1, 2, 4 and 8 workers on one GPU,
peak memory per worker, mixed precision (bfloat16) against float32, and a stage-2 trial on the
GPU against the same trial on the CPU. Writes its tables to docs/benchmarks.md (with the device
name); on a machine without a GPU it says so and exits (status 0, nothing written).

    python benchmarks/gpu_throughput.py [--trials 16] [--rows 1200] [--workers 1,2,4,8]
        [--device cuda:0] [--workdir /tmp/autofuse-gpu-bench] [--out docs/benchmarks.md]

1. Throughput: the same single-stage study (benchmarks/spaces/gpu.yaml: trainable encoders, all
   five families, fixed epochs, no pruning) on a generated demo dataset, ``--trials`` trials,
   ``--workers N --devices <device>`` for each N; wall time (worker start-up included) and the
   trials' own span (first start to last end), GPU utilisation sampled every 0.5 s
   (``torch.cuda.utilization``, which needs pynvml, else ``nvidia-smi``), and each worker's peak
   memory (the largest ``peak_gpu_mb`` of its trials; CUDA contexts not included). Above 4
   workers on SQLite (autofuse refuses that by default) this benchmark lifts the limit for itself;
   pass ``--storage postgresql+psycopg2://...`` to use a server instead.
2. AMP against fp32: the first ``--amp-trials`` completed designs of the 1-worker study, each
   trained again with and without ``amp`` on the GPU (training time and validation metric).
3. Stage 2 on GPU against CPU: a warm stage-2 trial (frozen encoders, cached features: see
   benchmarks/inner_loop.py) on the GPU and on the CPU (every core), median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402  (after the offline settings above)
from inner_loop import make_spec  # noqa: E402  (benchmarks/inner_loop.py, next to this file)

import autofuse.workers  # noqa: E402
from autofuse.data import Dataset  # noqa: E402
from autofuse.data.builders import build_demo  # noqa: E402
from autofuse.metrics import OBJECTIVES  # noqa: E402
from autofuse.paths import Paths  # noqa: E402
from autofuse.runner import CandidateRunner  # noqa: E402
from autofuse.spec import ArchitectureSpec  # noqa: E402
from autofuse.storage.history import HistoryStore, TrialRecord  # noqa: E402
from autofuse.study import search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "benchmarks" / "spaces" / "gpu.yaml"
BEGIN, END = "<!-- gpu_throughput: begin -->", "<!-- gpu_throughput: end -->"


class Utilisation:
    """GPU utilisation (%) of one device, sampled in a thread every ``every`` seconds."""

    def __init__(self, index: int, every: float = 0.5) -> None:
        self.index, self.every = index, every
        self.samples: list[float] = []
        self.source = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def read(self) -> float | None:
        """One sample: ``torch.cuda.utilization`` (pynvml), else ``nvidia-smi``; None if neither."""
        if self.source in ("", "torch"):
            try:
                value = float(torch.cuda.utilization(self.index))
                self.source = "torch"
                return value
            except Exception:  # pynvml missing or NVML unusable: try nvidia-smi
                self.source = "nvidia-smi"
        if self.source == "nvidia-smi":
            try:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        f"--id={self.index}",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                )
                return float(out.stdout.strip().splitlines()[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                self.source = "none"
        return None

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings of CUDA runs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    data: Path, n_workers: int, args: argparse.Namespace, device: torch.device
) -> dict[str, object]:
    """One study with ``n_workers`` workers on ``device``; its rates, utilisation and memory."""
    work = args.workdir / f"w{n_workers}"
    shutil.rmtree(work, ignore_errors=True)
    study = f"gpu_w{n_workers}"
    storage = args.storage or f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    if storage.startswith("sqlite") and n_workers > autofuse.workers.MAX_SQLITE_WORKERS:
        print(f"  (SQLite with {n_workers} writers: the limit is lifted for this benchmark)")
        autofuse.workers.MAX_SQLITE_WORKERS = n_workers
    t0 = time.monotonic()
    with Utilisation(device.index or 0) as util:
        search(
            data,
            study=study,
            trials=args.trials,
            space=str(SPACE),
            workdir=work,
            storage=storage,
            progress=False,
            workers=n_workers,
            devices=str(device),
            mlflow_uri="off",
            report=False,
            seed=0,
        )
    wall = time.monotonic() - t0
    torch.cuda.empty_cache()  # the 1-worker run trains in this process: free its cached blocks
    recs = HistoryStore(storage).trials(study)
    done = [r for r in recs if r.status in ("COMPLETE", "PRUNED")]
    timed = [r for r in done if r.started_at and r.finished_at]
    span = (
        (max(r.finished_at for r in timed) - min(r.started_at for r in timed)).total_seconds()
        if timed
        else float("nan")
    )
    per_worker: dict[str, float] = defaultdict(float)
    for r in recs:
        if r.peak_gpu_mb:
            per_worker[r.worker or "?"] = max(per_worker[r.worker or "?"], r.peak_gpu_mb)
    peaks = [r.peak_gpu_mb for r in recs if r.status == "COMPLETE" and r.peak_gpu_mb]
    return {
        "workers": n_workers,
        "trials": len(done),
        "complete": sum(r.status == "COMPLETE" for r in done),
        "oom": sum(r.reason == "oom" for r in done),
        "wall_s": wall,
        "per_min_wall": 60 * len(done) / wall,
        "per_min_trials": 60 * len(done) / span if span == span and span > 0 else float("nan"),
        "util": util.mean(),
        "util_source": util.source,
        "worker_peak_max": max(per_worker.values()) if per_worker else None,
        "worker_peak_median": statistics.median(per_worker.values()) if per_worker else None,
        "trial_peak_median": statistics.median(peaks) if peaks else None,
        "records": recs,
    }


def amp_against_fp32(
    data: Path, records: list[TrialRecord], n: int, cache: Path, device: torch.device
) -> list[dict[str, object]]:
    """The first ``n`` completed designs trained again with and without bfloat16 autocast."""
    ds = Dataset.load(data)
    metric = OBJECTIVES[ds.task][0]
    runner = CandidateRunner(ds, cache, device)
    specs = [ArchitectureSpec.model_validate(r.spec) for r in records if r.status == "COMPLETE"]
    specs = specs[:n]
    if not specs:
        return []
    runner.run(specs[0])  # warm-up: CUDA kernels, cuDNN autotuning, prepared inputs
    rows = []
    for spec in specs:
        row: dict[str, object] = {"design": f"{spec.fusion.name}@{spec.fusion.point}"}
        for amp in (False, True):
            _sync(device)
            t = time.perf_counter()
            res = runner.run(spec, amp=amp)
            _sync(device)
            key = "amp" if amp else "fp32"
            row[f"{key}_s"] = time.perf_counter() - t
            row[f"{key}_metric"] = res.val_metrics[metric]
        rows.append(row)
    return rows


def stage2_gpu_against_cpu(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """A warm stage-2 trial (image resnet18 + MiniLM, both frozen; features cached) on the GPU
    and on the CPU: median seconds of ``args.repeats`` runs, and the validation metric."""
    work = args.workdir / "stage2"
    folder = build_demo(work / "demo", n=args.stage2_rows, seed=0)
    ds = Dataset.load(folder)
    metric = OBJECTIVES[ds.task][0]
    spec = make_spec("attention.inter_cross@late", epochs=5, batch_size=64, image_size=32)
    torch.set_num_threads(os.cpu_count() or 1)
    out: dict[str, object] = {"design": f"{spec.fusion.name}@late", "rows": len(ds)}
    for dev in (device, torch.device("cpu")):
        runner = CandidateRunner(ds, Paths(work).cache, dev)
        runner.run(spec)  # fills or reads the feature cache; warms the device
        times = []
        res = None
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = runner.run(spec)
            _sync(dev)
            times.append(time.perf_counter() - t)
        key = "gpu" if dev.type == "cuda" else "cpu"
        out[f"{key}_s"] = statistics.median(times)
        out[f"{key}_metric"] = res.val_metrics[metric] if res else float("nan")
    out["cpu_threads"] = torch.get_num_threads()
    return out


def _mb(v: object) -> str:
    return "n/a" if v is None else f"{float(v):.0f}"


def markdown(
    name: str,
    total_mb: float,
    args: argparse.Namespace,
    runs: list[dict],
    amp_rows: list[dict],
    stage2: dict,
) -> str:
    lines = [
        BEGIN,
        "## GPU throughput (`benchmarks/gpu_throughput.py`)",
        "",
        f"Device: **{name}** ({total_mb / 1024:.0f} GiB); torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}; measured {dt.date.today().isoformat()}. One run each.",
        "",
        f"### Workers on one GPU ({args.trials} trials of benchmarks/spaces/gpu.yaml, demo data, "
        f"{args.rows} rows)",
        "",
        "Trials/min (wall) includes each worker's start-up (spawn, import, CUDA context, data); "
        "trials/min (trials) counts from the first trial's start to the last one's end. Peak "
        "memory is the PyTorch allocator's (`peak_gpu_mb`), without the CUDA context of each "
        "process; each worker is capped at 95% / N of the device.",
        "",
        "| workers | trials (complete / oom) | wall s | trials/min (wall) | trials/min (trials) "
        "| GPU util % | peak MiB per worker (max / median) | median trial peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        util = "n/a" if r["util"] is None else f"{r['util']:.0f}"
        lines.append(
            f"| {r['workers']} | {r['trials']} ({r['complete']} / {r['oom']}) | {r['wall_s']:.1f} "
            f"| {r['per_min_wall']:.1f} | {r['per_min_trials']:.1f} | {util} "
            f"| {_mb(r['worker_peak_max'])} / {_mb(r['worker_peak_median'])} "
            f"| {_mb(r['trial_peak_median'])} |"
        )
    sources = sorted({str(r["util_source"]) for r in runs})
    lines += ["", f"GPU utilisation from: {', '.join(sources)}.", ""]
    lines += [
        f"### Mixed precision (bfloat16) against float32 ({len(amp_rows)} designs of the "
        "1-worker study, trained again)",
        "",
        "| design | fp32 s | AMP s | speed-up | fp32 val | AMP val |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in amp_rows:
        lines.append(
            f"| {r['design']} | {r['fp32_s']:.2f} | {r['amp_s']:.2f} "
            f"| {r['fp32_s'] / r['amp_s']:.2f}x | {r['fp32_metric']:.4f} | {r['amp_metric']:.4f} |"
        )
    if amp_rows:
        fp32 = sum(r["fp32_s"] for r in amp_rows)
        amp = sum(r["amp_s"] for r in amp_rows)
        diff = statistics.fmean(abs(r["amp_metric"] - r["fp32_metric"]) for r in amp_rows)
        lines += [
            "",
            f"All designs: {fp32:.1f} s fp32, {amp:.1f} s AMP ({fp32 / amp:.2f}x); mean "
            f"|val difference| {diff:.4f} (same designs and seeds; only autocast differs).",
        ]
    lines += [
        "",
        f"### A stage-2 trial on the GPU and on the CPU ({stage2['design']} over cached "
        f"features of frozen resnet18 (random init) and MiniLM, {stage2['rows']} rows, 5 epochs; "
        f"median of {args.repeats})",
        "",
        "| device | seconds | val |",
        "|---|---:|---:|",
        f"| {name} | {stage2['gpu_s']:.2f} | {stage2['gpu_metric']:.4f} |",
        f"| CPU ({stage2['cpu_threads']} threads) | {stage2['cpu_s']:.2f} "
        f"| {stage2['cpu_metric']:.4f} |",
        "",
        f"GPU / CPU speed-up: {stage2['cpu_s'] / stage2['gpu_s']:.2f}x.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of ``path`` (between its markers), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--rows", type=int, default=1200)
    ap.add_argument("--workers", default="1,2,4,8", help="worker counts to compare")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: SQLite per run)")
    ap.add_argument("--amp-trials", type=int, default=4)
    ap.add_argument("--stage2-rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/autofuse-gpu-bench"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device is visible; nothing measured, nothing written.")
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device)
    total_mb = torch.cuda.get_device_properties(device).total_memory / 2**20
    print(f"device: {name} ({total_mb / 1024:.0f} GiB)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = build_demo(args.workdir / "demo", n=args.rows, seed=0)

    runs = []
    for n in [int(x) for x in args.workers.split(",") if x.strip()]:
        print(f"{n} worker(s) on {device}: {args.trials} trials ...", flush=True)
        r = throughput(data, n, args, device)
        util = "n/a" if r["util"] is None else f"{r['util']:.0f}%"
        print(
            f"  {r['trials']} trials in {r['wall_s']:.1f} s: {r['per_min_wall']:.1f}/min wall, "
            f"{r['per_min_trials']:.1f}/min trials only; GPU {util}; peak per worker "
            f"{_mb(r['worker_peak_max'])} MiB"
        )
        runs.append(r)

    print("AMP against fp32 ...", flush=True)
    first = runs[0]["records"] if runs else []
    amp_rows = amp_against_fp32(
        data, first, args.amp_trials, Paths(args.workdir / "amp").cache, device
    )
    for r in amp_rows:
        print(
            f"  {r['design']}: fp32 {r['fp32_s']:.2f} s val {r['fp32_metric']:.4f}, "
            f"AMP {r['amp_s']:.2f} s val {r['amp_metric']:.4f}"
        )

    print("stage-2 trial, GPU against CPU ...", flush=True)
    stage2 = stage2_gpu_against_cpu(args, device)
    print(
        f"  GPU {stage2['gpu_s']:.2f} s (val {stage2['gpu_metric']:.4f}), CPU "
        f"{stage2['cpu_s']:.2f} s (val {stage2['cpu_metric']:.4f})"
    )

    section = markdown(name, total_mb, args, runs, amp_rows, stage2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.out, section)
    print(f"written: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
