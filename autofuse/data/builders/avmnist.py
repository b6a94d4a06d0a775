"""Build an AV-MNIST-style audio-visual digit dataset from MNIST and FSDD.

Each spoken digit of the Free Spoken Digit Dataset (FSDD) is paired with an MNIST image of the same
digit. As in AV-MNIST (Vielzeuf et al. 2018, "CentralNet"; also used by MFAS and MultiBench) the
images are degraded by a PCA reconstruction from a few principal components, so that neither
modality alone solves the task well.

The split is speaker-disjoint: every recording of the held-out speakers (default
:data:`DEFAULT_TEST_SPEAKERS`) forms the test split and is paired with MNIST ``t10k`` images; the
other speakers' recordings are paired with MNIST ``train`` images and a random ``val_fraction`` of
them (per digit) forms the validation split.

The original AV-MNIST files are not publicly downloadable any more; numbers measured on this pairing
are **not** comparable with published AV-MNIST results.

Output folder::

    out_dir/
      dataset.yaml      name avmnist; modalities image (image_path) and audio (audio_path)
      samples.csv       id, image_path, audio_path, label, speaker, split, mnist_set, mnist_index
      images/<id>.png   degraded MNIST image (grayscale, ``image_size`` x ``image_size``)
      audio/<id>.wav    the FSDD recording, copied unchanged (8 kHz mono 16-bit)
      README.md         sources, licences and the comparability warning
      .build.json       build parameters; a later call with the same parameters returns at once
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autofuse.data.builders.demo import is_built, mark_built, remove_outputs
from autofuse.errors import AutofuseError, ConfigError

logger = logging.getLogger(__name__)

#: Speakers whose recordings form the test split by default. ``theo`` speaks with a USA/neutral
#: accent, which the training speaker ``jackson`` shares, so the held-out accent is not unseen;
#: holding out one of six speakers keeps 5/6 of FSDD (2,500 recordings) for train + val.
DEFAULT_TEST_SPEAKERS: tuple[str, ...] = ("theo",)
#: held out for validation, so that model selection also sees an unseen speaker (a random val
#: fraction of the training speakers would reward audio models that memorise voices)
DEFAULT_VAL_SPEAKERS: tuple[str, ...] = ("jackson",)

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_WAV_NAME = re.compile(r"(?P<digit>[0-9])_(?P<speaker>[A-Za-z0-9-]+)_(?P<index>[0-9]+)\.wav")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_BUILD_VERSION = 1

_README = """\
# AV-MNIST-style audio-visual digits (built by autofuse)

Each sample pairs a spoken digit (audio) with a handwritten image of the same digit (image).
Target: `label` (0-9, classification). Split: `split` column (train / val / test).

- **Audio**: Free Spoken Digit Dataset (FSDD), public repository Jakobovski/free-spoken-digit-dataset.
  Licence: CC BY-SA 4.0. WAV files are copied unchanged (8 kHz mono 16-bit).
- **Images**: MNIST (Y. LeCun, C. Cortes and C. Burges, "The MNIST database of handwritten
  digits"), read from IDX files rebuilt from the PNG copy in rasbt/mnist-pngs. MNIST is commonly
  distributed under CC BY-SA 3.0. Images are degraded by PCA reconstruction from the top
  {pca_components} principal components of the MNIST training images (as in AV-MNIST, Vielzeuf et
  al. 2018), then clipped and saved as {image_size}x{image_size} grayscale PNG.
- **Split**: speaker-disjoint. Test = all used recordings of speaker(s) {test_speakers}, paired with
  MNIST t10k images; val = {val_desc}; train = the other speakers; train and val are paired with
  MNIST train images.
- Size: {n_rows} samples ({counts}); seed {seed}; n_per_class {n_per_class}.

The original AV-MNIST files are not publicly downloadable any more. This is a new pairing built from
the files above: **numbers measured on it are NOT comparable with published AV-MNIST results.**
Redistribution of this folder must respect both CC BY-SA licences (attribution, share-alike).
"""


def build_avmnist(
    mnist_dir: str | Path,
    fsdd_dir: str | Path,
    out_dir: str | Path,
    n_per_class: int | None = None,
    seed: int = 0,
    pca_components: int = 10,
    image_size: int = 28,
    val_fraction: float = 0.1,
    test_speakers: Sequence[str] | None = None,
    val_speakers: Sequence[str] | None = None,
) -> Path:
    """Build the AV-MNIST-style dataset folder.

    Args:
        mnist_dir: folder with the four original MNIST IDX gzip files
            (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``).
        fsdd_dir: FSDD folder containing ``recordings/{digit}_{speaker}_{index}.wav``.
        out_dir: output folder (created; files this builder owns are replaced on a rebuild).
        n_per_class: number of recordings per digit over all splits, taken evenly across speakers
            (e.g. 30 for quick tests); ``None`` uses every recording.
        seed: seed for recording selection, image pairing and the validation split.
        pca_components: principal components kept when degrading images (fewer = harder).
        image_size: side of the saved square PNG images (MNIST is 28).
        val_fraction: fraction of the non-test recordings of each digit that go to ``val``.
        test_speakers: speakers held out for the test split; default
            :data:`DEFAULT_TEST_SPEAKERS` (``["theo"]``).
        val_speakers: speakers held out for the val split; default
            :data:`DEFAULT_VAL_SPEAKERS` (``["jackson"]``); ``()`` for a random ``val_fraction``
            of the training speakers' recordings instead.

    Returns:
        The dataset folder (``out_dir``) as a resolved path.

    Raises:
        AutofuseError: an input file or folder is missing or malformed.
        ConfigError: a parameter is out of range or names an unknown speaker.
    """
    mnist_dir, fsdd_dir, out = Path(mnist_dir), Path(fsdd_dir), Path(out_dir)
    speakers_test = sorted(DEFAULT_TEST_SPEAKERS if test_speakers is None else set(test_speakers))
    speakers_val = sorted(DEFAULT_VAL_SPEAKERS if val_speakers is None else set(val_speakers))
    if set(speakers_val) & set(speakers_test):
        raise ConfigError(
            f"avmnist: speakers {sorted(set(speakers_val) & set(speakers_test))} are "
            "both val and test speakers"
        )
    _check_params(n_per_class, pca_components, image_size, val_fraction, speakers_test)
    params = {
        "builder": "avmnist",
        "version": _BUILD_VERSION,
        "mnist_dir": str(mnist_dir.resolve()),
        "fsdd_dir": str(fsdd_dir.resolve()),
        "n_per_class": n_per_class,
        "seed": seed,
        "pca_components": pca_components,
        "image_size": image_size,
        "val_fraction": val_fraction,
        "test_speakers": speakers_test,
        "val_speakers": speakers_val,
    }
    if is_built(out, params):
        logger.info("avmnist dataset already built in %s; reusing it", out)
        return out.resolve()

    recordings = _list_recordings(fsdd_dir)
    known = sorted({r[1] for r in recordings})
    unknown = [s for s in speakers_test if s not in known]
    if unknown:
        raise ConfigError(f"avmnist: unknown test speaker(s) {unknown}; FSDD speakers are {known}")
    if len(speakers_test) == len(known):
        raise ConfigError("avmnist: test_speakers holds out every speaker; none left for training")
    if val_speakers is None:  # the default val speaker may be absent from a custom FSDD folder
        speakers_val = [s for s in speakers_val if s in known]
    unknown = [s for s in speakers_val if s not in known]
    if unknown:
        raise ConfigError(f"avmnist: unknown val speaker(s) {unknown}; FSDD speakers are {known}")
    if len(set(speakers_test) | set(speakers_val)) == len(known):
        raise ConfigError(
            "avmnist: test and val speakers hold out every speaker; none left for training"
        )
    mnist = {name: _read_mnist(mnist_dir, name) for name in MNIST_FILES}

    rng = np.random.default_rng(seed)
    chosen = _select_recordings(recordings, n_per_class, rng)
    rows = _assign_splits(chosen, speakers_test, val_fraction, rng, speakers_val)
    _pair_images(rows, {name: labels for name, (_, labels) in mnist.items()}, rng)

    logger.info("avmnist: fitting PCA (%d components) on MNIST train images", pca_components)
    mean, basis = _fit_pca(mnist["train"][0], pca_components)

    remove_outputs(out, ["images", "audio", "dataset.yaml", "samples.csv", "README.md"])
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    _write_images(rows, mnist, mean, basis, out, image_size)
    for row in rows:
        shutil.copyfile(row["_wav"], out / row["audio_path"])
    _write_table(rows, out / "samples.csv")
    _write_yaml(out / "dataset.yaml")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    (out / "README.md").write_text(
        _README.format(
            pca_components=pca_components,
            image_size=image_size,
            test_speakers=", ".join(speakers_test),
            val_desc=(
                f"all recordings of speaker(s) {', '.join(speakers_val)}"
                if speakers_val
                else f"a random {val_fraction:.0%} of the training speakers' recordings per digit"
            ),
            n_rows=len(rows),
            counts=", ".join(f"{k} {v}" for k, v in counts.items()),
            seed=seed,
            n_per_class=n_per_class if n_per_class is not None else "all",
        ),
        encoding="utf-8",
    )
    mark_built(out, params)
    logger.info("avmnist: wrote %d samples to %s (%s)", len(rows), out, counts)
    return out.resolve()


# ----------------------------------------------------------------------------- inputs


def _check_params(
    n_per_class: int | None,
    pca_components: int,
    image_size: int,
    val_fraction: float,
    test_speakers: list[str],
) -> None:
    """Raise ConfigError for out-of-range parameters."""
    if n_per_class is not None and n_per_class < 1:
        raise ConfigError(f"avmnist: n_per_class must be >= 1 or None, got {n_per_class}")
    if not 1 <= pca_components <= 28 * 28:
        raise ConfigError(f"avmnist: pca_components must be in 1..784, got {pca_components}")
    if image_size < 1:
        raise ConfigError(f"avmnist: image_size must be >= 1, got {image_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"avmnist: val_fraction must be in [0, 1), got {val_fraction}")
    if not test_speakers:
        raise ConfigError("avmnist: test_speakers must name at least one FSDD speaker")


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzip-compressed) IDX file into a numpy array.

    Args:
        path: the ``.gz`` or raw IDX file.

    Returns:
        Array with the shape and dtype stored in the IDX header.

    Raises:
        AutofuseError: the file is missing or not a valid IDX file.
    """
    if not path.is_file():
        raise AutofuseError(f"MNIST file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise AutofuseError(f"cannot read MNIST file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise AutofuseError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise AutofuseError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but file has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _read_mnist(mnist_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images [N, 28, 28] uint8, labels [N] int64)`` of MNIST ``train`` or ``t10k``."""
    if not mnist_dir.is_dir():
        raise AutofuseError(f"MNIST folder not found: {mnist_dir}")
    image_file, label_file = MNIST_FILES[name]
    images = read_idx(mnist_dir / image_file)
    labels = read_idx(mnist_dir / label_file).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise AutofuseError(
            f"MNIST {name}: expected images [N, 28, 28] and N labels, got {images.shape} "
            f"and {labels.shape} in {mnist_dir}"
        )
    return images, labels


def _list_recordings(fsdd_dir: Path) -> list[tuple[int, str, int, Path]]:
    """Return sorted ``(digit, speaker, index, path)`` for every FSDD WAV file."""
    if not fsdd_dir.is_dir():
        raise AutofuseError(f"FSDD folder not found: {fsdd_dir}")
    rec_dir = fsdd_dir / "recordings"
    if not rec_dir.is_dir():
        raise AutofuseError(f"FSDD recordings folder not found: {rec_dir}")
    found: list[tuple[int, str, int, Path]] = []
    skipped = 0
    for path in rec_dir.iterdir():
        match = _WAV_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            skipped += 1
            continue
        found.append((int(match["digit"]), match["speaker"], int(match["index"]), path))
    if skipped:
        logger.warning(
            "avmnist: ignored %d file(s) in %s not named digit_speaker_index.wav", skipped, rec_dir
        )
    if not found:
        raise AutofuseError(
            f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {rec_dir}"
        )
    return sorted(found, key=lambda r: (r[0], r[1], r[2]))


# ----------------------------------------------------------------------------- selection


def _select_recordings(
    recordings: list[tuple[int, str, int, Path]],
    n_per_class: int | None,
    rng: np.random.Generator,
) -> list[tuple[int, str, int, Path]]:
    """Keep ``n_per_class`` recordings per digit, spread as evenly as possible over speakers."""
    if n_per_class is None:
        return list(recordings)
    chosen: list[tuple[int, str, int, Path]] = []
    for digit in sorted({r[0] for r in recordings}):
        by_speaker: dict[str, list[tuple[int, str, int, Path]]] = {}
        for rec in recordings:
            if rec[0] == digit:
                by_speaker.setdefault(rec[1], []).append(rec)
        pools = {s: [recs[i] for i in rng.permutation(len(recs))] for s, recs in by_speaker.items()}
        order = [sorted(pools)[i] for i in rng.permutation(len(pools))]
        # Round-robin over speakers (in a seeded order) until n_per_class or all are taken.
        taken = 0
        while taken < n_per_class and any(pools.values()):
            for speaker in order:
                if taken < n_per_class and pools[speaker]:
                    chosen.append(pools[speaker].pop())
                    taken += 1
        if taken < n_per_class:
            logger.warning(
                "avmnist: digit %d has only %d recordings (< n_per_class=%d)",
                digit,
                taken,
                n_per_class,
            )
    return sorted(chosen, key=lambda r: (r[0], r[1], r[2]))


def _assign_splits(
    recordings: list[tuple[int, str, int, Path]],
    test_speakers: list[str],
    val_fraction: float,
    rng: np.random.Generator,
    val_speakers: list[str] | None = None,
) -> list[dict]:
    """Make one row per recording with its split: test by speaker; val by speaker, or a
    per-digit fraction of the training speakers when no val speaker is given."""
    rows = [
        {
            "id": f"{digit}_{speaker}_{index}",
            "label": digit,
            "speaker": speaker,
            "split": "test"
            if speaker in test_speakers
            else "val"
            if speaker in (val_speakers or ())
            else "train",
            "_wav": path,
        }
        for digit, speaker, index, path in recordings
    ]
    for digit in sorted({r["label"] for r in rows}) if not val_speakers else ():
        pool = [r for r in rows if r["label"] == digit and r["split"] == "train"]
        n_val = int(round(val_fraction * len(pool)))
        if val_fraction > 0 and n_val == 0 and len(pool) >= 2:
            n_val = 1
        for i in rng.permutation(len(pool))[:n_val]:
            pool[i]["split"] = "val"
    for row in rows:
        row["image_path"] = f"images/{row['id']}.png"
        row["audio_path"] = f"audio/{row['id']}.wav"
    return rows


def _pair_images(rows: list[dict], labels: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Give every row an MNIST image of its digit: train/val from ``train``, test from ``t10k``.

    Images are drawn without replacement within each MNIST set (with replacement only if a digit
    has fewer images than recordings, which FSDD + MNIST never need).
    """
    for mnist_set, splits in (("train", ("train", "val")), ("t10k", ("test",))):
        for digit in sorted({r["label"] for r in rows}):
            group = [r for r in rows if r["label"] == digit and r["split"] in splits]
            if not group:
                continue
            candidates = np.flatnonzero(labels[mnist_set] == digit)
            if len(candidates) == 0:
                raise AutofuseError(f"MNIST {mnist_set} has no image of digit {digit}")
            replace = len(candidates) < len(group)
            picks = rng.choice(candidates, size=len(group), replace=replace)
            for row, idx in zip(group, picks, strict=True):
                row["mnist_set"] = mnist_set
                row["mnist_index"] = int(idx)


# ----------------------------------------------------------------------------- degradation


def _fit_pca(
    images: np.ndarray, n_components: int, chunk: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Fit PCA on ``images [N, 28, 28]`` (scaled to [0, 1]) with an SVD of the covariance.

    Returns:
        ``(mean [784], basis [784, n_components])`` with orthonormal columns.
    """
    flat = images.reshape(len(images), -1)
    mean = flat.mean(axis=0, dtype=np.float64) / 255.0
    cov = np.zeros((flat.shape[1], flat.shape[1]))
    for start in range(0, len(flat), chunk):
        block = flat[start : start + chunk].astype(np.float64) / 255.0 - mean
        cov += block.T @ block
    cov /= max(len(flat) - 1, 1)
    u, _, _ = np.linalg.svd(cov, hermitian=True)
    basis = u[:, :n_components]
    # Fix each component's sign so the result does not depend on the LAPACK build.
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(n_components)])
    return mean, basis * np.where(signs == 0, 1.0, signs)


def degrade(images: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """PCA-reconstruct ``images [N, 28, 28] uint8`` from ``basis``; returns uint8 of the same shape."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0 - mean
    recon = (flat @ basis) @ basis.T + mean
    return (np.clip(recon, 0.0, 1.0) * 255.0).round().astype(np.uint8).reshape(images.shape)


def _write_images(
    rows: list[dict],
    mnist: dict[str, tuple[np.ndarray, np.ndarray]],
    mean: np.ndarray,
    basis: np.ndarray,
    out: Path,
    image_size: int,
) -> None:
    """Degrade each row's MNIST image and save it as a grayscale PNG."""
    from PIL import Image  # lazy: PIL is slow to import; only the builders draw images

    for mnist_set in MNIST_FILES:
        group = [r for r in rows if r.get("mnist_set") == mnist_set]
        if not group:
            continue
        idx = np.array([r["mnist_index"] for r in group])
        degraded = degrade(mnist[mnist_set][0][idx], mean, basis)
        for row, pixels in zip(group, degraded, strict=True):
            img = Image.fromarray(pixels)  # 2-D uint8 -> mode L
            if image_size != 28:
                img = img.resize((image_size, image_size), Image.BILINEAR)
            img.save(out / row["image_path"], format="PNG")


# ----------------------------------------------------------------------------- outputs

_COLUMNS = [
    "id",
    "image_path",
    "audio_path",
    "label",
    "speaker",
    "split",
    "mnist_set",
    "mnist_index",
]


def _write_table(rows: list[dict], path: Path) -> None:
    """Write ``samples.csv`` (sorted by split, label, speaker, id for stable bytes)."""
    order = {"train": 0, "val": 1, "test": 2}
    rows = sorted(rows, key=lambda r: (order[r["split"]], r["label"], r["speaker"], r["id"]))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_yaml(path: Path) -> None:
    """Write ``dataset.yaml`` for the avmnist folder."""
    path.write_text(
        "name: avmnist\n"
        "table: samples.csv\n"
        "id_column: id\n"
        "target: {column: label, task: classification}\n"
        "split: {column: split}\n"
        "modalities:\n"
        "  image: {type: image, column: image_path}\n"
        "  audio: {type: audio, column: audio_path}\n",
        encoding="utf-8",
    )
