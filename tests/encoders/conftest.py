"""Fixtures of the encoder tests: the tiny multimodal dataset and prepared inputs per encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

GOOD = Path(__file__).resolve().parents[1] / "data" / "good"

#: modality of tests/data/good for each modality type
MODALITY = {
    "image": "picture",
    "audio": "voice",
    "text": "review",
    "tabular": "meta",
    "timeseries": "watch",
}


@pytest.fixture(scope="session")
def good_ds():
    from autofuse.data import Dataset

    return Dataset.load(GOOD)


@pytest.fixture(scope="session")
def prepare(good_ds):
    """``prepare(spec) -> PreparedModality`` on tests/data/good, memoised per (kind, params)."""
    from autofuse.encoders import get_encoder_entry, prepare_modality

    memo: dict = {}

    def run(spec):
        entry = get_encoder_entry(spec.name)
        cls = entry.obj
        key = (cls.input_kind, repr(sorted(cls.preprocess_params(spec.params).items())))
        if key not in memo:
            memo[key] = prepare_modality(good_ds, MODALITY[entry.meta["modality"]], spec)
        return memo[key]

    return run
