"""Benchmark: a warm stage-2 trial (every encoder frozen, features cached) vs a bare PyTorch loop.

A stage-2 trial trains only a fusion module + head over features the frozen encoders produced
once (the feature cache). This measures, in one run and on the same tensors:

(a) ``CandidateRunner.run(spec)`` on a warm runner (its inputs already prepared / cached in the
    runner: the second and later calls), i.e. the code path of a search trial: prepare ->
    build -> ``train.fit`` (per-epoch validation, early stopping bookkeeping) -> test evaluation,
    parameter count and latency;
(b) a bare loop: the same model (``build_model(spec, info, skip_frozen=True)``, same seed), the
    cached tensors converted to float32 once, manual index batches (``index_select``) in the
    same seeded order, AdamW, gradient clipping, the same batch size and epochs, a validation
    pass per epoch and a final test pass: the minimal honest PyTorch equivalent. Its per-epoch
    validation accuracy must equal (a)'s history (printed as ``identical``).

Both are timed interleaved, ``--repeats`` times; wall and process CPU time medians are printed
(CPU time is less disturbed by other processes on a shared machine).

Then the cost of cross-validated selection (issue 19: a stage-2 trial with K folds must cost
about K x one fold, not more): ``CandidateRunner.run_cv(spec, folds)`` with ``--folds`` K folds
(:func:`autofuse.data.splits.cv_folds` over the training rows) against one fit,
``CandidateRunner.run(spec, train_rows=...)`` on the training rows less the first fold (the rows a
fold trains on), same spec and epochs (no early stopping: patience > epochs), both warm, timed
interleaved ``--repeats`` times. It prints ``K-fold trial / one fit`` (ideal about K) and the
per-fold overhead (K-fold time / K - one fit). ``--folds 0`` skips it.

The dataset is the generated demo dataset (image + text + tabular); tabular has no frozen encoder,
so the spec uses image (``image.timm`` resnet18, random init, 32 px, frozen) and text (the bundled
all-MiniLM-L6-v2, frozen). The first trial fills the feature cache and is not timed.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/inner_loop.py [--rows 2000] [--epochs 5] [--repeats 5]
        [--fusion encoder_decoder.early@late] [--threads N] [--workdir DIR] [--profile]
        [--folds 5]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_spec(fusion: str, epochs: int, batch_size: int, image_size: int):
    """Image + text, both frozen; ``fusion`` is ``family.method@point``."""
    from autofuse.encoders import EncoderSpec
    from autofuse.spec import ArchitectureSpec, FusionSpec, TrainingSpec

    name, _, point = fusion.partition("@")
    family, method = name.split(".", 1)
    return ArchitectureSpec(
        encoders={
            "image": EncoderSpec(
                name="image.timm",
                mode="frozen",
                params={"model_name": "resnet18", "image_size": image_size, "pretrained": False},
            ),
            "text": EncoderSpec(name="text.sentence_transformer", mode="frozen"),
        },
        fusion=FusionSpec(family=family, method=method, point=point or "late"),
        training=TrainingSpec(epochs=epochs, patience=epochs + 1, batch_size=batch_size),
    )


def bare_loop(spec, info: dict, data, device) -> dict[str, float]:
    """The minimal PyTorch equivalent of one trial over the same cached tensors and model."""
    import torch
    from torch import nn

    from autofuse.model import build_model
    from autofuse.types import ModalityFeatures

    t = spec.training
    torch.manual_seed(t.seed)
    model = build_model(spec, info, skip_frozen=True).to(device)
    feats = {}
    for m, src in data.inputs.items():
        feats[m] = (
            src.pooled.to(device, torch.float32),
            src.tokens.to(device, torch.float32),
            [lv.to(device, torch.float32) for lv in src.levels],
            src.present.to(device),
            None if src.token_mask is None else src.token_mask.to(device),
        )

    def batch(idx: torch.Tensor) -> dict[str, ModalityFeatures]:
        # index_select: the fastest row gather (``t[idx]`` is slower on the CPU)
        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, idx)

        return {
            m: ModalityFeatures(
                rows(p),
                rows(tok),
                [rows(lv) for lv in lvs],
                rows(pr),
                None if tm is None else rows(tm),
            )
            for m, (p, tok, lvs, pr, tm) in feats.items()
        }

    y = data.y.to(device)
    train = torch.as_tensor(data.splits["train"], dtype=torch.long)
    val = torch.as_tensor(data.splits["val"], dtype=torch.long, device=device)
    test = torch.as_tensor(data.splits["test"], dtype=torch.long, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    criterion = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(t.seed)
    accs = []

    def accuracy(rows: torch.Tensor) -> float:
        # validation in chunks of 256 rows, as ``train.predict_outputs`` does (same logits)
        out = torch.cat([model(batch(rows[s : s + 256]))[0] for s in range(0, len(rows), 256)])
        return float((out.argmax(-1) == y[rows]).float().mean())

    for _ in range(t.epochs):
        model.train()
        perm = train[torch.randperm(len(train), generator=g)].to(device)
        for s in range(0, len(perm), t.batch_size):
            idx = perm[s : s + t.batch_size]
            out, aux = model(batch(idx))
            loss = criterion(out, y[idx]) + t.aux_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
        model.eval()
        with torch.no_grad():
            accs.append(accuracy(val))
    with torch.no_grad():
        test_acc = accuracy(test)
    return {"val_accuracy": accs, "test_accuracy": test_acc}


def kfold_ratio(runner, spec, data, k: int, repeats: int) -> str:
    """Time a K-fold stage-2 trial (``run_cv``) against one fit on a fold's training rows; the
    lines to print."""
    import numpy as np

    from autofuse.data.splits import cv_folds

    pool = np.asarray(data.splits["train"])
    folds = cv_folds(pool, data.y_raw, runner.task, k, seed=0)
    one_rows = np.setdiff1d(pool, folds[0])  # what one fold trains on
    runner.run(spec, train_rows=one_rows)  # warm: the runner's prepared inputs for these rows
    runner.run_cv(spec, folds)
    wall: dict[str, list[float]] = {"one": [], "cv": []}
    cpu: dict[str, list[float]] = {"one": [], "cv": []}
    one = cv = None
    for _ in range(repeats):  # interleaved
        w, c = time.perf_counter(), time.process_time()
        one = runner.run(spec, train_rows=one_rows)
        wall["one"].append(time.perf_counter() - w)
        cpu["one"].append(time.process_time() - c)
        w, c = time.perf_counter(), time.process_time()
        cv = runner.run_cv(spec, folds)
        wall["cv"].append(time.perf_counter() - w)
        cpu["cv"].append(time.process_time() - c)
    assert one is not None and cv is not None
    k_done = len(folds)
    med = {key: statistics.median(v) for key, v in wall.items()}
    med_cpu = {key: statistics.median(v) for key, v in cpu.items()}
    sel = cv.selection or {}
    lines = [
        f"\nK-fold selection: {k_done} folds over {len(pool)} training rows (fold sizes "
        f"{[len(f) for f in folds]}); one fit on {len(one_rows)} rows; epochs run: one fit "
        f"{one.epochs_run}, K-fold {cv.epochs_run} (folds done {sel.get('folds_done')})"
    ]
    for key, name in (
        ("one", "one fit  (run, train_rows)"),
        ("cv", f"K-fold   (run_cv, K={k_done})"),
    ):
        lines.append(
            f"{name}: median {med[key]:6.3f} s wall, {med_cpu[key]:6.3f} s CPU  "
            f"[wall {', '.join(f'{x:.3f}' for x in wall[key])}]"
        )
    over = med["cv"] / k_done - med["one"]
    over_cpu = med_cpu["cv"] / k_done - med_cpu["one"]
    lines.append(
        f"K-fold trial / one fit = {med['cv'] / med['one']:.2f} wall, "
        f"{med_cpu['cv'] / med_cpu['one']:.2f} CPU (K = {k_done}; ideal ≈ {k_done}); per-fold "
        f"overhead {over:+.3f} s wall ({over / med['one']:+.0%} of one fit), {over_cpu:+.3f} s CPU "
        f"(median of {repeats})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--fusion", default="encoder_decoder.early@late", help="family.method@point"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="dataset + trials/cache folder (default: a temporary folder); reuse to skip the cold run",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: every core)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one warm trial (top 25)")
    parser.add_argument(
        "--folds", type=int, default=5, help="K of the K-fold / one-fit ratio (0: skip it)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from autofuse.data import Dataset
    from autofuse.data.builders import build_demo
    from autofuse.paths import Paths
    from autofuse.runner import CandidateRunner, default_device

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = default_device()
    spec = make_spec(args.fusion, args.epochs, args.batch_size, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        folder = build_demo(workdir / "demo", n=args.rows, seed=0, image_size=args.image_size)
        ds = Dataset.load(folder)
        runner = CandidateRunner(ds, Paths(workdir).cache, device)
        t0 = time.perf_counter()
        first = runner.run(spec)  # fills the feature cache (or reads it) and the runner's memo
        t_first = time.perf_counter() - t0
        data, info = runner.prepare(spec)
        shapes = {m: info["modalities"][m]["feature_shape"] for m in spec.encoders}
        print(
            f"dataset: demo, {len(ds)} rows (train {len(data.splits['train'])}, val "
            f"{len(data.splits['val'])}); frozen {', '.join(f'{m}={e.name}' for m, e in spec.encoders.items())}; "
            f"fusion {spec.fusion.name}@{spec.fusion.point}; {args.epochs} epochs, batch "
            f"{args.batch_size}; device {device}, {torch.get_num_threads()} threads"
        )
        print(f"feature shapes: {shapes}")
        print(f"first trial (cache fill / read, not timed below): {t_first:.2f} s")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            runner.run(spec)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        wall: dict[str, list[float]] = {"a": [], "b": []}
        cpu: dict[str, list[float]] = {"a": [], "b": []}
        res = bare = None
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits both alike
            w, c = time.perf_counter(), time.process_time()
            res = runner.run(spec)
            wall["a"].append(time.perf_counter() - w)
            cpu["a"].append(time.process_time() - c)
            w, c = time.perf_counter(), time.process_time()
            bare = bare_loop(spec, info, data, device)
            wall["b"].append(time.perf_counter() - w)
            cpu["b"].append(time.process_time() - c)
        cv_report = (
            kfold_ratio(runner, spec, data, args.folds, args.repeats) if args.folds > 1 else ""
        )
    assert res is not None and bare is not None
    same = res.val_metrics == first.val_metrics and res.history == first.history
    fit_accs = [h["accuracy"] for h in res.history]
    match = len(fit_accs) == len(bare["val_accuracy"]) and all(
        abs(a - b) < 1e-6 for a, b in zip(fit_accs, bare["val_accuracy"], strict=False)
    )
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for k, name in (("a", "(a) CandidateRunner.run, warm"), ("b", "(b) bare PyTorch loop      ")):
        print(
            f"{name}: median {med[k]:6.3f} s wall, {med_cpu[k]:6.3f} s CPU  "
            f"[wall {', '.join(f'{x:.3f}' for x in wall[k])}]"
        )
    print(
        f"val accuracy per epoch: fit {[round(x, 4) for x in fit_accs]}, bare "
        f"{[round(x, 4) for x in bare['val_accuracy']]} -> identical: {match}; "
        f"warm trial == first trial: {same}; test accuracy fit {res.test_metrics['accuracy']:.4f} "
        f"(best epoch), bare {bare['test_accuracy']:.4f} (last epoch)"
    )
    print(
        f"ratio (a)/(b): {med['a'] / med['b']:.2f}x wall, {med_cpu['a'] / med_cpu['b']:.2f}x CPU "
        f"(median of {args.repeats})"
    )
    if cv_report:
        print(cv_report)


if __name__ == "__main__":
    main()
