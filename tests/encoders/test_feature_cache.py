"""FeatureCache: compute once (miss), reuse from a fresh object (hit), key changes, atomic writes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autofuse._util import atomic_write_dir
from autofuse.encoders import EncoderSpec, FeatureCache, create_encoder, prepare_modality
from autofuse.errors import ConfigError

GOOD = Path(__file__).resolve().parents[1] / "data" / "good"

FROZEN_IMAGE = EncoderSpec(name="image.timm", mode="frozen", params={"model_name": "resnet18"})


def _assert_same(a, b):
    for x, y in [
        (a.pooled, b.pooled),
        (a.tokens, b.tokens),
        (a.present, b.present),
        *zip(a.levels, b.levels, strict=True),
    ]:
        assert torch.equal(x, y)
    assert (a.token_mask is None) == (b.token_mask is None)
    if a.token_mask is not None:
        assert torch.equal(a.token_mask, b.token_mask)


def test_miss_then_hit_with_fresh_object(good_ds, tmp_path, caplog):
    prepared = prepare_modality(good_ds, "picture", FROZEN_IMAGE)
    cache = FeatureCache(tmp_path)
    with caplog.at_level("INFO", logger="autofuse.encoders.cache"):
        first = cache.features(good_ds, "picture", FROZEN_IMAGE, prepared)
    assert (cache.hits, cache.misses) == (0, 1)
    assert "feature cache miss" in caplog.text
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert entries[0].name == first.key

    again = FeatureCache(tmp_path)
    with caplog.at_level("INFO", logger="autofuse.encoders.cache"):
        second = again.features(good_ds, "picture", FROZEN_IMAGE, prepared)
    assert (again.hits, again.misses) == (1, 0)
    assert "feature cache hit" in caplog.text
    _assert_same(first, second)
    assert second.feature_shape == first.feature_shape

    # cached values are the encoder's outputs (tokens / levels stored as float16)
    enc = create_encoder(FROZEN_IMAGE, prepared.state)
    idx = torch.tensor([0, 4, 5, 23])  # row 4 has no image
    x, present = prepared.batch(idx)
    with torch.no_grad():
        direct = enc(x, present)
    got = second.batch(idx)
    assert got.tokens.dtype == torch.float32 and got.present.tolist() == [True, False, True, True]
    torch.testing.assert_close(got.pooled, direct.pooled)
    torch.testing.assert_close(got.tokens, direct.tokens, rtol=2e-3, atol=2e-3)
    for a, b in zip(got.levels, direct.levels, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


def test_sentence_transformer_features_sorted_by_length(good_ds, tmp_path):
    spec = EncoderSpec(name="text.sentence_transformer", mode="frozen")
    prepared = prepare_modality(good_ds, "review", spec)
    cached = FeatureCache(tmp_path).features(good_ds, "review", spec, prepared)
    assert cached.token_mask is not None and cached.feature_shape.dim == 384
    enc = create_encoder(spec, prepared.state)
    idx = torch.tensor([8, 0, 13])  # row 8 has no text
    with torch.no_grad():
        direct = enc(*prepared.batch(idx))
    got = cached.batch(idx)
    torch.testing.assert_close(got.pooled, direct.pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.tokens, direct.tokens, rtol=5e-3, atol=5e-3)
    assert torch.equal(got.token_mask, direct.token_mask)
    assert got.pooled[0].abs().sum() == 0


def test_key_changes_with_data_and_params(tmp_path):
    from autofuse.data import Dataset

    root = tmp_path / "good"
    shutil.copytree(GOOD, root)
    cache = FeatureCache(tmp_path / "cache")
    ds = Dataset.load(root)
    prepared = prepare_modality(ds, "picture", FROZEN_IMAGE)
    key, _ = cache.key(ds, "picture", FROZEN_IMAGE, prepared)

    # the width of a frozen encoder is its native one: spec.dim is not part of the key
    wider = FROZEN_IMAGE.model_copy(update={"dim": 999})
    assert cache.key(ds, "picture", wider, prepared)[0] == key
    other = EncoderSpec(name="image.timm", mode="frozen", params={"level_grid": 1})
    assert cache.key(ds, "picture", other, prepared)[0] != key
    assert (
        cache.key(
            ds,
            "picture",
            FROZEN_IMAGE,
            prepare_modality(
                ds, "picture", FROZEN_IMAGE.model_copy(update={"params": {"image_size": 32}})
            ),
        )[0]
        != key
    )

    img = root / "img" / "01.png"
    arr = np.array(Image.open(img).convert("RGB"))
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(img)
    changed = Dataset.load(root)
    assert cache.key(changed, "picture", FROZEN_IMAGE, prepared)[0] != key


def test_only_frozen_encoders(good_ds, tmp_path):
    spec = EncoderSpec(name="image.small_cnn", mode="scratch")
    prepared = prepare_modality(good_ds, "picture", spec)
    with pytest.raises(ConfigError, match="frozen"):
        FeatureCache(tmp_path).features(good_ds, "picture", spec, prepared)


def test_concurrent_writers_leave_one_complete_entry(good_ds, tmp_path):
    prepared = prepare_modality(good_ds, "picture", FROZEN_IMAGE)
    results, errors = [], []

    def work():
        try:
            results.append(
                FeatureCache(tmp_path).features(good_ds, "picture", FROZEN_IMAGE, prepared)
            )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == [results[0].key], "no temp folder left behind"
    _assert_same(results[0], results[1])
    assert FeatureCache(tmp_path).features(good_ds, "picture", FROZEN_IMAGE, prepared) is not None


def test_atomic_write_dir_loser_keeps_winner(tmp_path):
    final = tmp_path / "entry"
    assert atomic_write_dir(final, lambda d: (d / "a.txt").write_text("first"))
    assert not atomic_write_dir(final, lambda d: (d / "a.txt").write_text("second"))
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        atomic_write_dir(tmp_path / "x", lambda d: (_ for _ in ()).throw(RuntimeError("boom")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_damaged_entry_is_recomputed(good_ds, tmp_path):
    prepared = prepare_modality(good_ds, "picture", FROZEN_IMAGE)
    first = FeatureCache(tmp_path).features(good_ds, "picture", FROZEN_IMAGE, prepared)
    (tmp_path / first.key / "features.safetensors").write_bytes(b"garbage")
    cache = FeatureCache(tmp_path)
    again = cache.features(good_ds, "picture", FROZEN_IMAGE, prepared)
    assert cache.misses == 1
    _assert_same(first, again)
