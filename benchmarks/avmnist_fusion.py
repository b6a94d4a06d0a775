"""Fusion versus the better single modality on the AV-MNIST-style dataset (speaker-disjoint test).

Builds the dataset from ../shared/datasets (MNIST idx + FSDD WAVs) if needed, then runs three
searches with the same budget and space: image only, audio only, image + audio. Prints the test
accuracy of each study's best (validation-selected) trial and the fusion gain.

    python benchmarks/avmnist_fusion.py --trials 10 --workdir /tmp/avmnist-bench
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--workdir", default="/tmp/autofuse-avmnist-bench")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--space", default=str(REPO / "benchmarks" / "spaces" / "avmnist_cpu.yaml"))
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from autofuse.data.builders import build_avmnist
    from autofuse.study import search

    work = Path(args.workdir)
    shared = Path(args.shared)
    folder = build_avmnist(
        shared / "mnist",
        shared / "fsdd",
        work / "avmnist",
        n_per_class=args.per_class,
        seed=args.seed,
    )
    cfg = yaml.safe_load((folder / "dataset.yaml").read_text())
    variants = {}
    for only in ("image", "audio"):
        c = dict(cfg, name=f"avmnist_{only}_only", modalities={only: cfg["modalities"][only]})
        p = folder / f"{only}_only.yaml"
        p.write_text(yaml.safe_dump(c, sort_keys=False))
        variants[f"{only} only"] = p
    variants["image + audio"] = folder / "dataset.yaml"

    rows = []
    for label, path in variants.items():
        t = time.monotonic()
        study = "avmnist_" + label.replace(" + ", "_").replace(" ", "_")
        res = search(
            path,
            study=study,
            trials=args.trials,
            space=args.space,
            workdir=work,
            seed=args.seed,
            progress=False,
        )
        s = res.summary
        rows.append(
            (
                label,
                s["val_metrics"]["accuracy"],
                s["test_metrics"]["accuracy"],
                s["test_metrics"]["macro_f1"],
                s["spec"]["fusion"]["method"] if "+" in label else "-",
                time.monotonic() - t,
            )
        )
    print(f"{'study':<16}{'val acc':>9}{'test acc':>10}{'test F1':>9}  {'fusion':<10}{'wall s':>8}")
    for label, va, ta, tf, meth, wall in rows:
        print(f"{label:<16}{va:>9.4f}{ta:>10.4f}{tf:>9.4f}  {meth:<10}{wall:>8.0f}")
    best_single = max(r[2] for r in rows[:2])
    print(
        f"fusion test accuracy {rows[2][2]:.4f} vs better single modality {best_single:.4f}: "
        f"gain {rows[2][2] - best_single:+.4f}"
    )


if __name__ == "__main__":
    main()
