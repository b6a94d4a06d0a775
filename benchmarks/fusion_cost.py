"""Cost of every registered fusion method: parameters, forward+backward time per batch and peak
memory, for 2 and 6 modalities (synthetic features with realistic shapes).

    python benchmarks/fusion_cost.py [--batch 64] [--repeats 5] [--device cpu]

Peak memory is measured with torch.cuda.max_memory_allocated on CUDA and with tracemalloc-free
RSS deltas on the CPU (resource.getrusage high-water mark grows only, so each method runs in its
own forked child process to get its own peak).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)


def _measure(name: str, n_mod: int, point: str, batch: int, repeats: int, device: str, q) -> None:
    from autofuse.fusion import create_fusion
    from autofuse.testing import fake_features, fake_shapes
    from autofuse.types import FeatureShape, ModalityFeatures

    torch.manual_seed(0)
    # realistic widths: 128-d pooled/tokens, 16 tokens, three stages
    shapes = {m: FeatureShape(128, 16, ((64, 32), (16, 64), (4, 128))) for m in fake_shapes(n_mod)}
    try:
        fusion = create_fusion(name, shapes, 128, point).to(device)
    except Exception as e:  # capped methods (e.g. tensor fusion) refuse too many modalities
        q.put((name, n_mod, point, None, None, None, f"{type(e).__name__}: {e}"))
        return
    feats = fake_features(shapes, batch=batch)
    feats = {
        m: ModalityFeatures(
            f.pooled.to(device),
            f.tokens.to(device),
            [x.to(device) for x in f.levels],
            f.present.to(device),
            f.token_mask.to(device),
        )
        for m, f in feats.items()
    }
    n_params = sum(p.numel() for p in fusion.parameters())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        out = fusion(feats)
        (out.z.pow(2).mean() + out.aux_loss).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # first run is warm-up
            times.append(time.perf_counter() - t)
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    q.put((name, n_mod, point, n_params, 1000 * sorted(times)[len(times) // 2], peak_mb, ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from autofuse.fusion import FUSIONS

    ctx = mp.get_context("fork")
    print(
        f"batch {args.batch}, device {args.device}, median of {args.repeats} forward+backward passes"
    )
    print(f"{'method':<34}{'point':<8}{'mods':>5}{'params':>11}{'ms/batch':>10}{'peak MB':>9}")
    for entry in FUSIONS:
        point = "late" if "late" in entry.meta["points"] else entry.meta["points"][0]
        for n_mod in (2, 6):
            q = ctx.Queue()
            p = ctx.Process(
                target=_measure,
                args=(entry.name, n_mod, point, args.batch, args.repeats, args.device, q),
            )
            p.start()
            p.join()
            name, n, pt, params, ms, mb, err = q.get()
            if err:
                print(f"{name:<34}{pt:<8}{n:>5}  n/a: {err}")
            else:
                print(f"{name:<34}{pt:<8}{n:>5}{params:>11,}{ms:>10.2f}{mb:>9.1f}")


if __name__ == "__main__":
    main()
