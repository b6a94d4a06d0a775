"""prepare_modality: per-kind outputs, state reuse, the on-disk preprocessing cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from autofuse.encoders import EncoderSpec, prepare_modality
from autofuse.encoders.preprocess import audio_frames, mel_filterbank, tokenize_words
from autofuse.errors import ConfigError

SPECS = {
    "image": EncoderSpec(name="image.small_cnn", mode="scratch", params={"image_size": 32}),
    "audio": EncoderSpec(name="audio.small_cnn", mode="scratch"),
    "text_ids": EncoderSpec(name="text.small", mode="scratch", params={"max_len": 8}),
    "text_raw": EncoderSpec(name="text.sentence_transformer", mode="frozen"),
    "tabular": EncoderSpec(name="tabular.mlp", mode="scratch"),
    "timeseries": EncoderSpec(name="timeseries.cnn1d", mode="scratch", params={"length": 40}),
}
MOD = {
    "image": "picture",
    "audio": "voice",
    "text_ids": "review",
    "text_raw": "review",
    "tabular": "meta",
    "timeseries": "watch",
}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return a == b
    return torch.equal(a, b)


@pytest.mark.parametrize("kind", list(SPECS))
def test_state_reuse_gives_identical_tensors(good_ds, kind):
    spec = SPECS[kind]
    first = prepare_modality(good_ds, MOD[kind], spec)
    assert first.kind == kind and first.state["kind"] == kind
    again = prepare_modality(good_ds, MOD[kind], spec, state=first.state)
    assert _equal(first.inputs, again.inputs)
    assert torch.equal(first.present, again.present)
    assert again.state == first.state
    assert torch.equal(first.present, torch.from_numpy(good_ds.present(MOD[kind])))


@pytest.mark.parametrize("kind", ["image", "audio", "tabular", "timeseries", "text_ids"])
def test_disk_cache_round_trip(good_ds, tmp_path, kind, caplog):
    spec = SPECS[kind]
    first = prepare_modality(good_ds, MOD[kind], spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("prep-*"))) == 1
    with caplog.at_level("INFO", logger="autofuse.encoders.preprocess"):
        second = prepare_modality(good_ds, MOD[kind], spec, cache_dir=tmp_path)
    assert "preprocessing cache hit" in caplog.text
    assert _equal(first.inputs, second.inputs) and torch.equal(first.present, second.present)
    assert second.state == first.state


def test_shapes_and_dtypes(good_ds):
    img = prepare_modality(good_ds, "picture", SPECS["image"])
    assert img.inputs.dtype == torch.uint8 and img.inputs.shape == (24, 3, 32, 32)
    assert img.inputs[~img.present].sum() == 0
    aud = prepare_modality(good_ds, "voice", SPECS["audio"])
    p = {"sample_rate": 8000, "duration": 1.0, "hop_length": 128}
    assert aud.inputs.dtype == torch.float16 and aud.inputs.shape == (24, 1, 40, audio_frames(p))
    tr = torch.from_numpy(good_ds.indices("train"))
    train_vals = aud.inputs[tr][aud.present[tr]].float()
    assert abs(train_vals.mean().item()) < 1e-2 and abs(train_vals.std().item() - 1) < 1e-2
    ts = prepare_modality(good_ds, "watch", SPECS["timeseries"])
    assert ts.inputs.dtype == torch.float32 and ts.inputs.shape[:2] == (24, 40)
    assert ts.state["channels"] == ts.inputs.shape[2]
    x, present = ts.batch(torch.tensor([0, 12]))
    assert x.shape[0] == 2 and present.tolist() == [True, False]


def test_text_ids_vocab_from_train_only(good_ds):
    prep = prepare_modality(good_ds, "review", SPECS["text_ids"])
    vocab = prep.state["vocab"]
    assert "seen" in vocab and "on" in vocab
    assert "17" not in vocab, "row 17 is in the val split"
    texts = good_ds.texts("review")
    row = 16  # "some odd dog seen on day 17": val row, "17" is unknown
    words = tokenize_words(texts[row])
    assert prep.inputs[row, words.index("17")] == 1
    assert (prep.inputs[row, len(words) :] == 0).all()
    assert prep.inputs.shape == (24, 8)


def test_tabular_missing_indicator_and_unseen_category(good_ds):
    prep = prepare_modality(good_ds, "meta", SPECS["tabular"])
    st = prep.state
    assert st["numeric"] == ["age"] and st["indicators"] == ["age"]
    assert st["categorical"] == {"dept": ["north", "south"]}
    num, cat = prep.inputs["numeric"], prep.inputs["categorical"]
    assert num.shape == (24, 2) and cat.shape == (24, 1)
    row = 2  # age missing
    assert num[row, 0] == 0 and num[row, 1] == 1
    assert num[0, 1] == 0
    tr = good_ds.indices("train")
    ages = good_ds.tabular_frame("meta")["age"].to_numpy(dtype=float)[tr]
    assert st["mean"][0] == pytest.approx(np.nanmean(ages))
    # a new category at predict time maps to 0 with the fitted state
    from autofuse.data import Dataset

    df = pd.DataFrame(
        {
            "age": [30.0, None, 1.0],
            "dept": ["east", "north", "south"],
            "label": [1.0, 2.0, 3.0],
            "split": ["train", "val", "test"],
        }
    )
    new = Dataset.from_dataframe(
        df,
        target="label",
        task="regression",
        modalities={
            "meta": {"type": "tabular", "columns": ["age", "dept"], "categorical": ["dept"]}
        },
    )
    again = prepare_modality(new, "meta", SPECS["tabular"], state=st)
    assert again.inputs["categorical"][:, 0].tolist() == [0, 1, 2]
    assert again.inputs["numeric"][1].tolist() == [0.0, 1.0]


def test_wrong_encoder_for_modality_and_wrong_state(good_ds):
    with pytest.raises(ConfigError, match="reads image"):
        prepare_modality(good_ds, "review", SPECS["image"])
    tab = prepare_modality(good_ds, "meta", SPECS["tabular"])
    with pytest.raises(ConfigError, match="state"):
        prepare_modality(good_ds, "review", SPECS["text_ids"], state=tab.state)


def test_mel_filterbank():
    fb = mel_filterbank(8000, 512, 40)
    assert fb.shape == (40, 257) and (fb >= 0).all()
    assert (fb.sum(axis=1) > 0).all(), "no empty filter"
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all(), "filters ordered by frequency"
