"""Tests for the dataset builders (synthetic demo and AV-MNIST-style audio-visual digits)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import time
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from ci import need

from autofuse.data.builders import DEFAULT_TEST_SPEAKERS, build_avmnist, build_demo
from autofuse.data.builders.avmnist import read_idx
from autofuse.errors import AutofuseError, ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared" / "datasets"


def _rows(folder: Path, name: str = "samples.csv") -> list[dict[str, str]]:
    with (folder / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _check_folder(folder: Path) -> tuple[dict, list[dict[str, str]]]:
    """Check the dataset format by hand (independently of autofuse.data.dataset)."""
    from autofuse.data.schema import DatasetConfig

    config = DatasetConfig.model_validate(yaml.safe_load((folder / "dataset.yaml").read_text()))
    rows = _rows(folder, config.table)
    assert rows, "empty table"
    columns = set(rows[0])
    assert config.target.column in columns
    assert config.id_column in columns
    assert len({r[config.id_column] for r in rows}) == len(rows), "ids are not unique"
    assert {r[config.split.column] for r in rows} == {"train", "val", "test"}
    for modality in config.modalities.values():
        assert set(modality.cols) <= columns
        if modality.type in ("image", "audio"):
            for row in rows:
                rel = row[modality.column]
                if rel:
                    assert not Path(rel).is_absolute() and ".." not in Path(rel).parts
                    assert (folder / rel).is_file(), rel
    return config.model_dump(), rows


# ----------------------------------------------------------------------------- demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo") / "demo", n=600, seed=0)


def test_demo_builds_valid_folder(demo_dir: Path) -> None:
    config, rows = _check_folder(demo_dir)
    assert config["name"] == "demo"
    assert {m["type"] for m in config["modalities"].values()} == {"image", "text", "tabular"}
    assert len(rows) == 600
    assert {r["label"] for r in rows} == {"0", "1", "2", "3"}
    split = Counter(r["split"] for r in rows)
    assert split == {"train": 420, "val": 90, "test": 90}
    no_image = {r["id"] for r in rows if not r["image_path"]}
    no_text = {r["id"] for r in rows if not r["text"]}
    assert len(no_image) == 30 and len(no_text) == 30 and not no_image & no_text
    cells = [r[c] for r in rows for c in ("reading", "temperature", "age", "region")]
    assert 0.02 < sum(c == "" for c in cells) / len(cells) < 0.08
    assert {r["region"] for r in rows} - {""} == {"north", "south", "east", "west"}
    assert (demo_dir / "README.md").is_file()


def test_demo_images_are_rgb_of_requested_size(tmp_path: Path) -> None:
    from PIL import Image

    folder = build_demo(tmp_path / "d", n=40, seed=3, image_size=24)
    paths = [r["image_path"] for r in _rows(folder) if r["image_path"]]
    with Image.open(folder / paths[0]) as img:
        assert img.mode == "RGB" and img.size == (24, 24)


def test_demo_is_deterministic(tmp_path: Path) -> None:
    a = build_demo(tmp_path / "a", n=120, seed=7)
    b = build_demo(tmp_path / "b", n=120, seed=7)
    c = build_demo(tmp_path / "c", n=120, seed=8)
    assert (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()
    assert _digest(a) == _digest(b)
    assert (a / "samples.csv").read_bytes() != (c / "samples.csv").read_bytes()


def test_demo_is_idempotent_and_rebuilds_on_new_params(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    build_demo(out, n=100, seed=1)
    table = out / "samples.csv"
    stamp = table.stat().st_mtime_ns
    time.sleep(0.01)
    assert build_demo(out, n=100, seed=1) == out.resolve()
    assert table.stat().st_mtime_ns == stamp, "same params must not rebuild"

    build_demo(out, n=50, seed=1)
    rows = _rows(out)
    assert len(rows) == 50
    # No stale images from the larger build are left behind.
    assert len(list((out / "images").iterdir())) == sum(bool(r["image_path"]) for r in rows)


def test_demo_rebuilds_after_interrupted_build(tmp_path: Path) -> None:
    out = build_demo(tmp_path / "demo", n=60, seed=0)
    (out / ".build.json").unlink()  # as if the build had stopped before its marker
    (out / "samples.csv").write_text("garbage\n")
    build_demo(out, n=60, seed=0)
    assert len(_rows(out)) == 60


def test_demo_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    build_demo(tmp_path / "demo", n=600, seed=5)
    assert time.perf_counter() - start < 10.0


def test_demo_label_needs_several_modalities(demo_dir: Path) -> None:
    rows = _rows(demo_dir)
    latents = {r["id"]: r for r in _rows(demo_dir, "latents.csv")}
    y = np.array([int(r["label"]) for r in rows])
    bits = {
        k: np.array([int(latents[r["id"]][k]) for r in rows])
        for k in ("shape_bit", "text_bit", "tabular_bit")
    }

    def best_accuracy(*keys: str) -> float:
        """Accuracy of the Bayes-optimal predictor that sees only these latent bits."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, key in enumerate(zip(*(bits[k] for k in keys), strict=True)):
            groups.setdefault(key, []).append(int(y[i]))
        return sum(Counter(g).most_common(1)[0][1] for g in groups.values()) / len(y)

    fused = best_accuracy("shape_bit", "text_bit", "tabular_bit")
    assert fused > 0.9
    for one in ("shape_bit", "text_bit", "tabular_bit"):
        assert best_accuracy(one) < 0.6  # any single modality ~ 0.5
    for a, b in (
        ("shape_bit", "text_bit"),
        ("shape_bit", "tabular_bit"),
        ("text_bit", "tabular_bit"),
    ):
        assert best_accuracy(a, b) < 0.82  # any two ~ 0.75
    assert fused - best_accuracy("tabular_bit") > 0.3


def test_demo_tabular_alone_is_far_from_solving(demo_dir: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rows = _rows(demo_dir)
    regions = ["north", "south", "east", "west"]

    def features(r: dict[str, str]) -> list[float]:
        num = [float(r[c]) if r[c] else 0.0 for c in ("reading", "temperature", "age")]
        miss = [float(not r[c]) for c in ("reading", "temperature", "age", "region")]
        return num + miss + [float(r["region"] == g) for g in regions]

    x = np.array([features(r) for r in rows])
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    y = np.array([int(r["label"]) for r in rows])
    train = np.array([r["split"] != "test" for r in rows])
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    assert model.score(x[~train], y[~train]) < 0.7


def test_demo_rejects_bad_params(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n must be"):
        build_demo(tmp_path / "d", n=5)
    with pytest.raises(ConfigError, match="image_size"):
        build_demo(tmp_path / "d", n=50, image_size=2)


def test_demo_loads_as_dataset(demo_dir: Path) -> None:
    from autofuse.data import Dataset

    ds = Dataset.load(demo_dir)
    assert ds.modality_names == ["image", "text", "tabular"]
    assert ds.task == "classification"
    assert len(ds.frame) == 600
    assert not ds.present("image").all() and ds.present("image").mean() > 0.9
    assert not ds.present("text").all() and ds.present("text").mean() > 0.9
    assert len(ds.indices("train")) == 420


# ----------------------------------------------------------------------------- avmnist (fake inputs)


def _write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def _write_wav(path: Path, seed: int) -> None:
    samples = (np.random.default_rng(seed).normal(0, 3000, 800)).astype("<i2")
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(8000)
        fh.writeframes(samples.tobytes())


@pytest.fixture
def fake_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny MNIST (random pixels) and an FSDD with speakers a, b, c; 3 takes per digit."""
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * (rng.random((n, 28, 28)) > 0.6) * 255).astype(np.uint8)
        _write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", labels)
    fsdd = tmp_path / "fsdd"
    (fsdd / "recordings").mkdir(parents=True)
    for k, (digit, speaker, take) in enumerate(
        (d, s, t) for d in range(10) for s in ("a", "b", "c") for t in range(3)
    ):
        _write_wav(fsdd / "recordings" / f"{digit}_{speaker}_{take}.wav", seed=k)
    (fsdd / "recordings" / "README.txt").write_text("not a recording")
    return mnist, fsdd


def test_read_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04junk"))
    with pytest.raises(AutofuseError, match="not an IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_avmnist_on_fake_inputs(fake_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    mnist, fsdd = fake_inputs
    out = build_avmnist(
        mnist,
        fsdd,
        tmp_path / "av",
        seed=1,
        test_speakers=["c"],
        val_fraction=0.2,
        pca_components=5,
    )
    config, rows = _check_folder(out)
    assert config["modalities"] == {
        "image": {
            "type": "image",
            "column": "image_path",
            "columns": None,
            "categorical": [],
            "numeric": [],
        },
        "audio": {
            "type": "audio",
            "column": "audio_path",
            "columns": None,
            "categorical": [],
            "numeric": [],
        },
    }
    assert len(rows) == 90
    assert {r["speaker"] for r in rows if r["split"] == "test"} == {"c"}
    assert {r["speaker"] for r in rows if r["split"] != "test"} == {"a", "b"}
    assert Counter(r["split"] for r in rows) == {"train": 50, "val": 10, "test": 30}
    labels = {"train": np.arange(300) % 10, "t10k": np.arange(100) % 10}
    for r in rows:
        assert r["id"].split("_")[0] == r["label"]
        assert r["mnist_set"] == ("t10k" if r["split"] == "test" else "train")
        assert labels[r["mnist_set"]][int(r["mnist_index"])] == int(r["label"])
        assert (out / r["audio_path"]).read_bytes() == (
            fsdd / "recordings" / f"{r['id']}.wav"
        ).read_bytes()
    for mnist_set in ("train", "t10k"):
        used = [r["mnist_index"] for r in rows if r["mnist_set"] == mnist_set]
        assert len(used) == len(set(used)), "images must not be reused"
    text = (out / "README.md").read_text()
    assert "CC BY-SA 3.0" in text and "CC BY-SA 4.0" in text and "NOT comparable" in text

    # Same parameters: reused; other parameters: rebuilt without stale files.
    stamp = (out / "samples.csv").stat().st_mtime_ns
    build_avmnist(mnist, fsdd, out, seed=1, test_speakers=["c"], val_fraction=0.2, pca_components=5)
    assert (out / "samples.csv").stat().st_mtime_ns == stamp
    build_avmnist(
        mnist,
        fsdd,
        out,
        n_per_class=3,
        seed=1,
        test_speakers=["c"],
        pca_components=5,
        image_size=16,
    )
    rows = _rows(out)
    assert len(rows) == 30
    assert Counter(r["speaker"] for r in rows) == {"a": 10, "b": 10, "c": 10}
    assert len(list((out / "images").iterdir())) == 30
    from PIL import Image

    with Image.open(out / rows[0]["image_path"]) as img:
        assert img.mode == "L" and img.size == (16, 16)


def test_avmnist_is_deterministic(fake_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    mnist, fsdd = fake_inputs
    kwargs = {"n_per_class": 5, "seed": 3, "test_speakers": ["b"], "pca_components": 4}
    a = build_avmnist(mnist, fsdd, tmp_path / "a", **kwargs)
    b = build_avmnist(mnist, fsdd, tmp_path / "b", **kwargs)
    assert _digest(a) == _digest(b)


def test_avmnist_missing_inputs_name_the_path(
    fake_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    mnist, fsdd = fake_inputs
    with pytest.raises(AutofuseError, match="FSDD folder not found"):
        build_avmnist(mnist, tmp_path / "nowhere", tmp_path / "o")
    (tmp_path / "empty_fsdd").mkdir()
    with pytest.raises(AutofuseError, match="recordings"):
        build_avmnist(mnist, tmp_path / "empty_fsdd", tmp_path / "o", test_speakers=["c"])
    with pytest.raises(AutofuseError, match="MNIST folder not found"):
        build_avmnist(tmp_path / "nowhere", fsdd, tmp_path / "o", test_speakers=["c"])
    (mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AutofuseError, match="t10k-labels-idx1-ubyte.gz"):
        build_avmnist(mnist, fsdd, tmp_path / "o", test_speakers=["c"])
    assert not (tmp_path / "o" / "samples.csv").exists()


def test_avmnist_rejects_bad_params(fake_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    mnist, fsdd = fake_inputs
    with pytest.raises(ConfigError, match="unknown test speaker"):
        build_avmnist(mnist, fsdd, tmp_path / "o", test_speakers=["zoe"])
    with pytest.raises(ConfigError, match="every speaker"):
        build_avmnist(mnist, fsdd, tmp_path / "o", test_speakers=["a", "b", "c"])
    with pytest.raises(ConfigError, match="pca_components"):
        build_avmnist(mnist, fsdd, tmp_path / "o", pca_components=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        build_avmnist(mnist, fsdd, tmp_path / "o", val_fraction=1.0)


# ----------------------------------------------------------------------------- avmnist (real data)


@pytest.fixture(scope="module")
def shared_datasets() -> Path:
    need(
        (SHARED / "mnist").is_dir() and (SHARED / "fsdd").is_dir(),
        f"shared datasets (MNIST, FSDD) not found at {SHARED}",
    )
    return SHARED


@pytest.fixture(scope="module")
def avmnist_dir(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_avmnist(
        shared_datasets / "mnist",
        shared_datasets / "fsdd",
        tmp_path_factory.mktemp("avmnist") / "avmnist",
        n_per_class=12,
        seed=0,
    )


@pytest.mark.needs_shared
def test_avmnist_real_split_and_sizes(avmnist_dir: Path) -> None:
    config, rows = _check_folder(avmnist_dir)
    assert config["name"] == "avmnist"
    assert len(rows) == 120
    test_speakers = {r["speaker"] for r in rows if r["split"] == "test"}
    assert test_speakers == set(DEFAULT_TEST_SPEAKERS)
    assert not test_speakers & {r["speaker"] for r in rows if r["split"] != "test"}
    # model selection also sees an unseen speaker: val speakers are not train speakers
    val_speakers = {r["speaker"] for r in rows if r["split"] == "val"}
    assert val_speakers == {"jackson"}
    assert not val_speakers & {r["speaker"] for r in rows if r["split"] == "train"}
    assert Counter(r["split"] for r in rows)["val"] > 0
    # n_per_class=12 over 6 speakers: 2 recordings per (digit, speaker).
    assert set(Counter((r["label"], r["speaker"]) for r in rows).values()) == {2}


@pytest.mark.needs_shared
def test_avmnist_real_pairing_and_degradation(avmnist_dir: Path, shared_datasets: Path) -> None:
    from PIL import Image

    rows = _rows(avmnist_dir)
    mnist = shared_datasets / "mnist"
    images = {
        "train": read_idx(mnist / "train-images-idx3-ubyte.gz"),
        "t10k": read_idx(mnist / "t10k-images-idx3-ubyte.gz"),
    }
    labels = {
        "train": read_idx(mnist / "train-labels-idx1-ubyte.gz"),
        "t10k": read_idx(mnist / "t10k-labels-idx1-ubyte.gz"),
    }
    for r in rows:
        index, mnist_set = int(r["mnist_index"]), r["mnist_set"]
        assert mnist_set == ("t10k" if r["split"] == "test" else "train")
        assert int(labels[mnist_set][index]) == int(r["label"]), r["id"]
        wav = shared_datasets / "fsdd" / "recordings" / f"{r['id']}.wav"
        assert r["id"].split("_")[0] == r["label"]
        assert (avmnist_dir / r["audio_path"]).read_bytes() == wav.read_bytes()
        with Image.open(avmnist_dir / r["image_path"]) as img:
            assert img.mode == "L" and img.size == (28, 28)
            degraded = np.asarray(img, dtype=np.float64).ravel()
        original = images[mnist_set][index].astype(np.float64).ravel()
        assert np.abs(degraded - original).mean() > 5.0, "image is not degraded"
        assert np.corrcoef(degraded, original)[0, 1] > 0.3, "degraded image lost its original"


@pytest.mark.needs_shared
def test_avmnist_real_loads_as_dataset(avmnist_dir: Path) -> None:
    from autofuse.data import Dataset

    ds = Dataset.load(avmnist_dir)
    assert ds.modality_names == ["image", "audio"]
    assert [ds.modality_type(m) for m in ds.modality_names] == ["image", "audio"]
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.present("image").all() and ds.present("audio").all()
