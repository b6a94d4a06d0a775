"""Benchmark: one training trial with a cold and a warm feature cache, measured in one run.

A generated text + tabular dataset (2,000 rows by default) is encoded by the frozen, bundled
all-MiniLM-L6-v2 sentence-transformer; the tabular column goes through a trainable MLP and the
two are fused by late concatenation. One "trial" = prepare the modalities + get the frozen
features + train the candidate for a few epochs (``autofuse.runner.CandidateRunner.run``, the
code path search trials use). The first trial runs on an empty cache (features computed and
stored); the second uses a fresh runner on the same cache folder, so its features come from disk.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/feature_cache.py [--rows 2000] [--epochs 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SUBJECTS = {
    "positive": [
        "a delightful film",
        "this great phone",
        "the friendly staff",
        "a lovely hotel",
        "the superb soundtrack",
        "an excellent meal",
    ],
    "negative": [
        "a dreadful film",
        "this broken phone",
        "the rude staff",
        "a filthy hotel",
        "the awful soundtrack",
        "a cold meal",
    ],
    "neutral": ["the film", "this phone", "the staff", "the hotel", "the soundtrack", "the meal"],
}
VERBS = ["was reviewed", "came up", "was mentioned", "appeared", "was discussed"]
TAILS = [
    "during the long weekend trip",
    "in our weekly meeting",
    "by several of my friends",
    "at the end of a busy day",
    "in yesterday's newspaper",
    "after the holidays",
]


def make_frame(rows: int, seed: int = 0):
    """Generated reviews (class-dependent wording, ~3% missing) + a numeric and a category column."""
    import pandas as pd

    rng = random.Random(seed)
    labels = list(SUBJECTS)
    data = []
    for i in range(rows):
        label = labels[i % 3]
        text = f"{rng.choice(SUBJECTS[label])} {rng.choice(VERBS)} {rng.choice(TAILS)}" + (
            f", and {rng.choice(SUBJECTS[rng.choice(labels)])} too" if rng.random() < 0.5 else ""
        )
        data.append(
            {
                "review": None if rng.random() < 0.03 else text,
                "stars": (labels.index(label) + rng.gauss(0, 1.5)) if rng.random() > 0.05 else None,
                "channel": rng.choice(["web", "shop", "phone"]),
                "label": label,
            }
        )
    return pd.DataFrame(data)


def run_trial(ds, workdir: Path, spec) -> dict:
    """One trial on a fresh runner (nothing kept in memory from an earlier one)."""
    from autofuse.paths import Paths
    from autofuse.runner import CandidateRunner, default_device

    t0 = time.perf_counter()
    runner = CandidateRunner(ds, Paths(workdir).cache, default_device())
    for m, espec in spec.encoders.items():
        runner.modality_input(m, espec)  # prepare + frozen features (memoised in the runner)
    t_inputs = time.perf_counter() - t0
    res = runner.run(spec)
    total = time.perf_counter() - t0
    return {
        "total": total,
        "inputs": t_inputs,
        "train": total - t_inputs,
        "hits": runner.feature_cache.hits,
        "misses": runner.feature_cache.misses,
        "val": res.val_metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where trials/cache goes (default: a temporary folder)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("autofuse.encoders.cache").setLevel(logging.INFO)

    import torch

    from autofuse.data import Dataset
    from autofuse.encoders import EncoderSpec
    from autofuse.spec import ArchitectureSpec, FusionSpec, TrainingSpec

    torch.set_num_threads(os.cpu_count() or 1)
    ds = Dataset.from_dataframe(
        make_frame(args.rows),
        target="label",
        task="classification",
        modalities={
            "review": {"type": "text", "column": "review"},
            "meta": {
                "type": "tabular",
                "columns": ["stars", "channel"],
                "categorical": ["channel"],
            },
        },
        name="feature_cache_bench",
    )
    spec = ArchitectureSpec(
        encoders={
            "review": EncoderSpec(name="text.sentence_transformer", mode="frozen"),
            "meta": EncoderSpec(name="tabular.mlp", mode="scratch", dim=32),
        },
        fusion=FusionSpec(family="encoder_decoder", method="early", point="late"),
        training=TrainingSpec(epochs=args.epochs, patience=args.epochs, batch_size=64),
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        cold = run_trial(ds, workdir, spec)
        warm = run_trial(ds, workdir, spec)
    print(
        f"dataset: {len(ds)} rows (text + tabular), frozen all-MiniLM-L6-v2 + tabular.mlp, "
        f"late concat fusion, {args.epochs} epochs, device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, r in (("cold cache", cold), ("warm cache", warm)):
        print(
            f"{name}: {r['total']:7.2f} s  (prepare + features {r['inputs']:6.2f} s, "
            f"train {r['train']:5.2f} s; cache hits {r['hits']}, misses {r['misses']}; "
            f"val {', '.join(f'{k}={v:.3f}' for k, v in r['val'].items() if k != 'train_loss')})"
        )
    print(f"speed-up: {cold['total'] / warm['total']:.1f}x (cold / warm trial time)")


if __name__ == "__main__":
    main()
