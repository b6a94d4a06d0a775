"""Decode a modality's raw values once, for all rows, into tensors an encoder reads in batches.

``prepare_modality(ds, modality, spec)`` runs the preprocessing the encoder asks for (its
``input_kind``):

==============  =====================================================================
input kind      ``PreparedModality.inputs``
==============  =====================================================================
``image``       uint8 ``[N, 3, S, S]`` (resized; the encoder normalises)
``audio``       float16 ``[N, 1, n_mels, T]`` standardised log-mel spectrogram
``text_raw``    ``list[str]`` (``""`` where absent), for sentence-transformers
``text_ids``    int64 ``[N, max_len]`` word ids (0 = padding, 1 = unknown word)
``tabular``     ``{"numeric": float32 [N, F], "categorical": int64 [N, C]}``
``timeseries``  float32 ``[N, T, C]`` resampled to a fixed length, standardised per channel
==============  =====================================================================

Statistics (vocabulary, mean/std, categories) are fitted on the train rows when ``state`` is
None and stored in ``PreparedModality.state`` (JSON-able); passing that state back reuses them,
e.g. to predict on new data. Absent rows are zeros with ``present`` False. With ``cache_dir``,
the decoded tensors are stored on disk so later trials skip decoding.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autofuse._util import atomic_write_dir, discard_dir, stable_hash
from autofuse.encoders.base import EncoderSpec, get_encoder_entry
from autofuse.errors import AutofuseError, ConfigError
from autofuse.weights import read_weights, save_weights

logger = logging.getLogger(__name__)

#: Bump when a preprocessing function changes its output for the same inputs.
PREPROCESS_VERSION = 1


class PreprocessError(AutofuseError):
    """A sample's file could not be decoded."""


@dataclass
class PreparedModality:
    """One modality decoded for all N rows of a dataset.

    Attributes:
        modality: modality name.
        kind: the input kind (see module docstring).
        inputs: ``Tensor [N, ...]``, ``dict[str, Tensor [N, ...]]`` or ``list[str]`` (raw text).
        present: BoolTensor ``[N]``.
        state: JSON-able fitted preprocessing state (``kind``, ``params`` and statistics).
    """

    modality: str
    kind: str
    inputs: Any
    present: torch.Tensor
    state: dict

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def batch(
        self, idx: torch.Tensor | Sequence[int], pin_memory: bool = False
    ) -> tuple[Any, torch.Tensor]:
        """``(x, present)`` of rows ``idx`` in the form the encoder's ``forward`` takes.

        ``pin_memory`` (a CUDA machine): the rows are gathered straight into page-locked memory
        (the same values), so their copy to the GPU can run asynchronously. The buffers come from
        torch's caching host allocator: after the first batches nothing more is pinned.
        """
        idx = torch.as_tensor(idx, dtype=torch.long)
        if isinstance(self.inputs, list):
            x: Any = [self.inputs[i] for i in idx.tolist()]
        elif isinstance(self.inputs, dict):
            x = {k: _rows(v, idx, pin_memory) for k, v in self.inputs.items()}
        else:
            x = _rows(self.inputs, idx, pin_memory)
        return x, _rows(self.present, idx, pin_memory)


def _rows(t: torch.Tensor, idx: torch.Tensor, pin_memory: bool) -> torch.Tensor:
    """``t[idx]`` (``idx`` a 1-D LongTensor), gathered into page-locked memory if asked."""
    if not pin_memory:
        return t[idx]
    out = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out)


# ---------------------------------------------------------------------------- entry point
def prepare_modality(
    ds: Any,
    modality: str,
    spec: EncoderSpec,
    state: dict | None = None,
    cache_dir: str | Path | None = None,
) -> PreparedModality:
    """Decode/normalise a modality's raw values for all rows of ``ds``.

    Args:
        ds: an :class:`autofuse.data.Dataset`.
        modality: modality name in ``ds``.
        spec: the encoder that will read the result (decides the input kind and params).
        state: a fitted state from an earlier call (reused as is); None fits on the train rows.
        cache_dir: if given, decoded tensors are cached under ``cache_dir/prep-<key>/``.

    Raises:
        ConfigError: the encoder does not read this modality's type, or ``state`` is for another
            kind of preprocessing.
        PreprocessError: a file could not be decoded.
    """
    mtype = ds.modality_type(modality)
    entry = get_encoder_entry(spec.name)
    if entry.meta["modality"] != mtype:
        raise ConfigError(
            f"modality {modality!r} is {mtype}; encoder {spec.name} reads {entry.meta['modality']}"
        )
    cls = entry.obj
    kind = cls.input_kind
    params = cls.preprocess_params(spec.params)
    if state is not None and state.get("kind") != kind:
        raise ConfigError(
            f"modality {modality!r}: saved preprocessing state is for "
            f"{state.get('kind')!r}, encoder {spec.name} needs {kind!r}"
        )
    fn = _PREPARERS[kind]

    def run() -> PreparedModality:
        inputs, present, fitted = fn(ds, modality, params, state)
        new_state = state if state is not None else {"kind": kind, "params": params, **fitted}
        return PreparedModality(modality, kind, inputs, present, _jsonable(new_state))

    if cache_dir is None or kind == "text_raw":  # raw text is cheap to read again
        return run()
    key = stable_hash(
        {
            # timeseries: 2 since NaN / inf values are imputed (before: set to 0 / float32's max)
            "version": 2 if kind == "timeseries" else PREPROCESS_VERSION,
            "dataset": ds.fingerprint(),
            "modality": modality,
            "kind": kind,
            "params": params,
            "state": state,
        }
    )
    folder = Path(cache_dir) / f"prep-{key}"
    if (folder / "state.json").exists():
        try:
            prepared = _load_prepared(folder, modality, kind)
            logger.info("preprocessing cache hit: %s (%s)", modality, folder)
            return prepared
        except Exception as e:
            logger.warning("preprocessing cache %s unreadable (%s); decoding again", folder, e)
            discard_dir(folder)
    prepared = run()
    atomic_write_dir(folder, lambda tmp: _save_prepared(tmp, prepared))
    return prepared


def _save_prepared(folder: Path, p: PreparedModality) -> None:
    if isinstance(p.inputs, dict):
        tensors = {f"inputs.{k}": v.contiguous() for k, v in p.inputs.items()}
    else:
        tensors = {"inputs": p.inputs.contiguous()}
    tensors["present"] = p.present.contiguous()
    save_weights(tensors, folder / "data.safetensors")
    (folder / "state.json").write_text(json.dumps(p.state))


def _load_prepared(folder: Path, modality: str, kind: str) -> PreparedModality:
    t = read_weights(folder / "data.safetensors")
    state = json.loads((folder / "state.json").read_text())
    if "inputs" in t:
        inputs: Any = t["inputs"]
    else:
        inputs = {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("inputs.")}
    return PreparedModality(modality, kind, inputs, t["present"].bool(), state)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _present(ds: Any, modality: str) -> np.ndarray:
    return np.asarray(ds.present(modality), dtype=bool)


def _parallel_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    workers = min(8, os.cpu_count() or 1)
    if len(items) < 64 or workers == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:  # PIL / scipy release the GIL while decoding
        return list(pool.map(fn, items, chunksize=32))


# ---------------------------------------------------------------------------- image
def _prepare_image(ds: Any, modality: str, params: dict, state: dict | None):
    from PIL import Image  # lazy: PIL is slow to import; only image modalities need it

    size = int(params["image_size"])
    paths = ds.file_paths(modality)

    def load(p: Path | None) -> np.ndarray | None:
        if p is None:
            return None
        try:
            with Image.open(p) as im:
                im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                return np.array(im, dtype=np.uint8).transpose(2, 0, 1)
        except Exception as e:
            raise PreprocessError(f"{p}: cannot read image ({e})") from None

    arrays = _parallel_map(load, paths)
    out = torch.zeros(len(paths), 3, size, size, dtype=torch.uint8)
    for i, a in enumerate(arrays):
        if a is not None:
            out[i] = torch.from_numpy(a)
    present = torch.tensor([a is not None for a in arrays], dtype=torch.bool)
    return out, present, {}


# ---------------------------------------------------------------------------- audio
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular mel filterbank ``[n_mels, n_fft // 2 + 1]`` (HTK mel scale, Slaney area norm).

    Built here in numpy because torchaudio is not a dependency (it pins its own torch) and
    librosa would be one more dependency for these few lines.
    """
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [n_mels + 2]
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # [n_bins]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lo) / (mid - lo)
    falling = (hi - freqs[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb *= 2.0 / (hi - lo)  # equal area per filter
    return fb.astype(np.float32)


def audio_frames(params: dict) -> int:
    """Number of STFT frames of a clip of ``duration`` seconds (``center=True``)."""
    n = int(round(float(params["sample_rate"]) * float(params["duration"])))
    return 1 + n // int(params["hop_length"])


def read_wav(path: Path, sample_rate: int, n_samples: int) -> np.ndarray:
    """Mono float32 waveform resampled to ``sample_rate``, cropped / zero-padded to ``n_samples``."""
    from scipy.io import wavfile  # lazy: scipy is slow to import; only audio needs it
    from scipy.signal import resample_poly  # (same)

    try:
        rate, data = wavfile.read(path)
    except Exception as e:
        raise PreprocessError(f"{path}: cannot read WAV ({e})") from None
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        x = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    else:
        x = data.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32)
    out = np.zeros(n_samples, dtype=np.float32)
    out[: min(n_samples, len(x))] = x[:n_samples]
    return out


def log_mel(waves: torch.Tensor, params: dict) -> torch.Tensor:
    """``[B, samples]`` -> log-mel ``[B, n_mels, T]`` (float32)."""
    n_fft, hop = int(params["n_fft"]), int(params["hop_length"])
    fb = torch.from_numpy(mel_filterbank(int(params["sample_rate"]), n_fft, int(params["n_mels"])))
    spec = torch.stft(
        waves,
        n_fft=n_fft,
        hop_length=hop,
        window=torch.hann_window(n_fft),
        center=True,
        return_complex=True,
    )  # [B, n_bins, T]
    power = spec.abs() ** 2
    return torch.log(torch.einsum("mf,bft->bmt", fb, power) + 1e-6)


def _prepare_audio(ds: Any, modality: str, params: dict, state: dict | None):
    sr = int(params["sample_rate"])
    n_samples = int(round(sr * float(params["duration"])))
    paths = ds.file_paths(modality)
    waves = _parallel_map(lambda p: None if p is None else read_wav(p, sr, n_samples), paths)
    present = torch.tensor([w is not None for w in waves], dtype=torch.bool)
    n_mels, frames = int(params["n_mels"]), audio_frames(params)
    mels = torch.zeros(len(paths), 1, n_mels, frames, dtype=torch.float32)
    rows = [i for i, w in enumerate(waves) if w is not None]
    for s in range(0, len(rows), 256):
        chunk = rows[s : s + 256]
        mels[chunk, 0] = log_mel(torch.from_numpy(np.stack([waves[i] for i in chunk])), params)
    fitted: dict = {}
    if state is None:
        train = np.asarray(ds.indices("train"))
        train = torch.as_tensor(train[present.numpy()[train]], dtype=torch.long)
        vals = mels[train] if len(train) else mels[present]
        mean = float(vals.mean()) if vals.numel() else 0.0
        std = float(vals.std()) if vals.numel() > 1 else 1.0
        fitted = {"mean": mean, "std": std if std > 1e-6 else 1.0}
        state = fitted
    mels = (mels - state["mean"]) / state["std"]
    mels[~present] = 0.0
    return mels.to(torch.float16), present, fitted


# ---------------------------------------------------------------------------- text
def _prepare_text_raw(ds: Any, modality: str, params: dict, state: dict | None):
    texts = ds.texts(modality)
    present = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    return [t if t is not None else "" for t in texts], present, {}


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_words(text: str) -> list[str]:
    """Lower-case words and numbers (``don't`` stays one word)."""
    return _WORD.findall(text.lower())


def _prepare_text_ids(ds: Any, modality: str, params: dict, state: dict | None):
    texts = ds.texts(modality)
    present = torch.tensor([t is not None for t in texts], dtype=torch.bool)
    words = [tokenize_words(t) if t is not None else [] for t in texts]
    fitted: dict = {}
    if state is None:
        counts: Counter[str] = Counter()
        for i in np.asarray(ds.indices("train")):
            counts.update(words[int(i)])
        # most frequent first, ties alphabetical (deterministic)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        fitted = {"vocab": [w for w, _ in ranked[: int(params["vocab_size"])]]}
        state = fitted
    lookup = {w: i + 2 for i, w in enumerate(state["vocab"])}  # 0 = padding, 1 = unknown
    max_len = int(params["max_len"])
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    for r, ws in enumerate(words):
        row = [lookup.get(w, 1) for w in ws[:max_len]]
        if row:
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, present, fitted


# ---------------------------------------------------------------------------- tabular
def _category_key(v: Any) -> str | None:
    """Canonical string of a categorical cell (None for missing); 3.0 and "3" agree."""
    if v is None:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if v.is_integer():
            return str(int(v))
    s = str(v).strip()
    return s or None


def _mean_std(col: np.ndarray) -> tuple[float, float]:
    """Mean and std (1.0 when ~0) of finite values; huge values (sums past float64's range) are
    scaled down first, so the result stays finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(col.mean()), float(col.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        scale = float(np.abs(col).max())
        scaled = col / scale
        mean, std = float(scaled.mean()) * scale, float(scaled.std()) * scale
    return mean, (std if std > 1e-12 else 1.0)


def _prepare_tabular(ds: Any, modality: str, params: dict, state: dict | None):
    import pandas as pd  # lazy: only tabular modalities need pandas here

    frame = ds.tabular_frame(modality)
    num_cols, cat_cols = ds.tabular_columns(modality)
    n = len(frame)
    num = (
        np.stack(
            [pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in num_cols],
            axis=1,
        )
        if num_cols
        else np.zeros((n, 0))
    )
    fitted: dict = {}
    if state is None:
        train = np.asarray(ds.indices("train"))
        tr = num[train] if len(train) else num
        mean, std = np.zeros(num.shape[1]), np.ones(num.shape[1])
        for j in range(num.shape[1]):
            # a non-finite cell is a missing value (the dataset reports or converts them
            # already): one inf must not turn the column's mean into NaN
            col = tr[:, j][np.isfinite(tr[:, j])]
            if len(col):
                mean[j], std[j] = _mean_std(col)
        indicators = [c for j, c in enumerate(num_cols) if not np.isfinite(num[:, j]).all()]
        cats = {}
        for c in cat_cols:
            vals = {_category_key(v) for v in frame[c].iloc[train].tolist()}
            cats[c] = sorted(v for v in vals if v is not None)
        fitted = {
            "numeric": list(num_cols),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "indicators": indicators,
            "categorical": cats,
        }
        state = fitted
    if list(state["numeric"]) != list(num_cols) or list(state["categorical"]) != list(cat_cols):
        raise ConfigError(
            f"modality {modality!r}: columns differ from the fitted state "
            f"({state['numeric']} + {list(state['categorical'])})"
        )
    mean, std = np.asarray(state["mean"]), np.asarray(state["std"])
    with np.errstate(invalid="ignore", over="ignore"):
        z = (num - mean) / std
    missing = ~np.isfinite(z)
    z[missing] = 0.0
    ind = [missing[:, num_cols.index(c)] for c in state["indicators"]]
    numeric = np.concatenate([z, np.stack(ind, axis=1)], axis=1) if ind else z
    categorical = np.zeros((n, len(cat_cols)), dtype=np.int64)
    for j, c in enumerate(cat_cols):
        lookup = {v: i + 1 for i, v in enumerate(state["categorical"][c])}  # 0 = unseen / missing
        categorical[:, j] = [lookup.get(_category_key(v), 0) for v in frame[c].tolist()]
    present = torch.from_numpy(_present(ds, modality))
    numeric_t = torch.from_numpy(numeric.astype(np.float32))
    categorical_t = torch.from_numpy(categorical)
    numeric_t[~present] = 0.0
    categorical_t[~present] = 0
    return {"numeric": numeric_t, "categorical": categorical_t}, present, fitted


# ---------------------------------------------------------------------------- timeseries
def _load_series(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise PreprocessError(f"{path}: cannot read .npy ({e})") from None
    with np.errstate(over="ignore"):  # a float64 past float32's range becomes inf: missing
        a = np.asarray(a, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise PreprocessError(f"{path}: expected a (time, channels) array, got shape {a.shape}")
    return a


def _fix_length(a: np.ndarray, length: int, resample: bool) -> tuple[np.ndarray, int]:
    """Resample (linear) or crop/zero-pad ``[T, C]`` to ``[length, C]``; also the real length."""
    T = a.shape[0]
    if resample:
        if T == length:
            return a, length
        src = np.linspace(0.0, 1.0, T) if T > 1 else np.zeros(1)
        dst = np.linspace(0.0, 1.0, length)
        out = np.stack([np.interp(dst, src, a[:, c]) for c in range(a.shape[1])], axis=1)
        return out.astype(np.float32), length
    out = np.zeros((length, a.shape[1]), dtype=np.float32)
    out[: min(T, length)] = a[:length]
    return out, min(T, length)


def _masked_mean_std(rows: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``rows [T, C]`` over the steps where ``gaps`` is False
    (0 and 1 for a channel without such a step)."""
    mean, std = np.zeros(rows.shape[1]), np.ones(rows.shape[1])
    for c in range(rows.shape[1]):
        col = rows[~gaps[:, c], c].astype(np.float64)
        if len(col):
            mean[c] = col.mean()
        if len(col) > 1:
            std[c] = col.std()
    return mean, std


def _prepare_timeseries(ds: Any, modality: str, params: dict, state: dict | None):
    length, resample = int(params["length"]), bool(params["resample"])
    paths = ds.file_paths(modality)
    series = _parallel_map(lambda p: None if p is None else _load_series(p), paths)
    present = torch.tensor([s is not None for s in series], dtype=torch.bool)
    channels = (
        state["channels"]
        if state is not None
        else next((s.shape[1] for s in series if s is not None), 1)
    )
    for p, s in zip(paths, series, strict=True):
        if s is not None and s.shape[1] != channels:
            raise PreprocessError(f"{p}: {s.shape[1]} channels, expected {channels}")
    out = np.zeros((len(paths), length, channels), dtype=np.float32)
    lengths = np.zeros(len(paths), dtype=np.int64)
    # NaN / inf values (or values past float32's range, inf once read) are missing values, as a
    # non-finite cell of a tabular column is (the dataset's non_finite policy reports them or
    # lets them through): left out of the statistics, then imputed with the channel's mean
    # (0 after standardising). A resampled step that mixes a missing value is missing too.
    missing: np.ndarray | None = None
    for i, s in enumerate(series):
        if s is None:
            continue
        bad = ~np.isfinite(s)
        if not bad.any():
            out[i], lengths[i] = _fix_length(s, length, resample)
            continue
        out[i], lengths[i] = _fix_length(np.where(bad, 0.0, s).astype(np.float32), length, resample)
        if missing is None:
            missing = np.zeros(out.shape, dtype=bool)
        missing[i] = _fix_length(bad.astype(np.float32), length, resample)[0] > 0
    fitted: dict = {}
    if state is None:
        train = [int(i) for i in np.asarray(ds.indices("train")) if series[int(i)] is not None]
        rows = (
            np.concatenate([out[i, : lengths[i]] for i in train], axis=0)
            if train
            else np.zeros((0, channels), dtype=np.float32)
        )
        if missing is None:
            mean = rows.mean(axis=0) if len(rows) else np.zeros(channels)
            std = rows.std(axis=0) if len(rows) > 1 else np.ones(channels)
        else:
            gaps = (
                np.concatenate([missing[i, : lengths[i]] for i in train], axis=0)
                if train
                else np.zeros((0, channels), dtype=bool)
            )
            mean, std = _masked_mean_std(rows, gaps)
        std = np.where(std > 1e-8, std, 1.0)
        fitted = {"channels": int(channels), "mean": mean.tolist(), "std": std.tolist()}
        state = fitted
    z = (out - np.asarray(state["mean"], dtype=np.float32)) / np.asarray(state["std"], np.float32)
    valid = np.arange(length)[None, :] < lengths[:, None]  # padding and absent rows stay 0
    z[~valid] = 0.0
    if missing is not None:
        z[missing] = 0.0  # the channel's mean
    return torch.from_numpy(z.astype(np.float32)), present, fitted


_PREPARERS: dict[str, Callable[..., tuple[Any, torch.Tensor, dict]]] = {
    "image": _prepare_image,
    "audio": _prepare_audio,
    "text_raw": _prepare_text_raw,
    "text_ids": _prepare_text_ids,
    "tabular": _prepare_tabular,
    "timeseries": _prepare_timeseries,
}
