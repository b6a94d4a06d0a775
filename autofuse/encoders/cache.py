"""On-disk feature cache for frozen encoders.

A frozen encoder's outputs never change, so they are computed once for all rows of a dataset and
stored under ``root/<key>/`` (normally ``trials/cache/``)::

    features.safetensors   pooled (float32), tokens / level.<i> (float16), present, token_mask
                           (its sha256 in its header, checked when read: :mod:`autofuse.weights`)
    meta.json              what the key was made of, feature shape, row count, timing

The key is the sha256 of the dataset fingerprint, the modality, the encoder name, its resolved
params, the identity of its weights (a local weights file's sha256) and the fitted preprocessing
state. Every trial and every later study with the same key reuses the entry. Entries are written
into a temporary folder and renamed into place, so two worker processes computing the same key
never leave a half-written entry (the second rename loses and its copy is discarded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from autofuse._util import atomic_write_dir, discard_dir, stable_hash
from autofuse.encoders.base import EncoderSpec, create_encoder, get_encoder_entry
from autofuse.errors import ConfigError, FeatureCostError
from autofuse.types import FeatureShape, ModalityFeatures
from autofuse.weights import read_weights, save_weights

if TYPE_CHECKING:
    from autofuse.encoders.preprocess import PreparedModality

logger = logging.getLogger(__name__)

#: Bump when the stored layout or the meaning of cached features changes.
CACHE_VERSION = 1


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime within the process)."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


class CachedFeatures:
    """Precomputed outputs of a frozen encoder for all N rows of a dataset.

    Tokens and levels are held in float16 (as stored); :meth:`batch` returns float32.

    Attributes:
        pooled: ``[N, D]``; tokens: ``[N, T, D]``; levels: list of ``[N, N_l, D_l]``;
        present: ``[N]`` bool; token_mask: ``[N, T]`` bool or None.
        feature_shape: the encoder's :class:`FeatureShape`.
        key: cache key (folder name under the cache root).
    """

    def __init__(
        self,
        pooled: torch.Tensor,
        tokens: torch.Tensor,
        levels: list[torch.Tensor],
        present: torch.Tensor,
        token_mask: torch.Tensor | None,
        feature_shape: FeatureShape,
        key: str = "",
    ) -> None:
        self.pooled = pooled
        self.tokens = tokens
        self.levels = levels
        self.present = present
        self.token_mask = token_mask
        self.feature_shape = feature_shape
        self.key = key

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the stored tensors are (:meth:`batch` slices there)."""
        return self.pooled.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        stored = [self.pooled, self.tokens, self.present, *self.levels]
        if self.token_mask is not None:
            stored.append(self.token_mask)
        return sum(t.numel() * t.element_size() for t in stored)

    def batch(self, idx: torch.Tensor) -> ModalityFeatures:
        """Features of rows ``idx`` (LongTensor ``[B]``) as float32 ModalityFeatures.

        ``index_select`` (several times faster than advanced indexing on the CPU) on the stored
        tensors, then float16 -> float32 on the ``B`` rows only: the values are exactly those of
        the stored rows. ``idx`` is best already on :attr:`device` (it is moved otherwise).
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.pooled.device)
        return ModalityFeatures(
            pooled=self.pooled.index_select(0, idx).float(),
            tokens=self.tokens.index_select(0, idx).float(),
            levels=[lv.index_select(0, idx).float() for lv in self.levels],
            present=self.present.index_select(0, idx),
            token_mask=None if self.token_mask is None else self.token_mask.index_select(0, idx),
        )

    def to(self, device: torch.device | str) -> CachedFeatures:
        """A copy with every stored tensor on ``device`` (e.g. keep the cache on the GPU)."""
        return CachedFeatures(
            self.pooled.to(device),
            self.tokens.to(device),
            [lv.to(device) for lv in self.levels],
            self.present.to(device),
            None if self.token_mask is None else self.token_mask.to(device),
            self.feature_shape,
            self.key,
        )

    def on_device(self, device: torch.device | str, max_bytes: int | None = None) -> CachedFeatures:
        """These features on ``device`` for a trial's batches (still float16 tokens and levels).

        ``self`` when they are already there, or when the copy would take more than
        ``max_bytes`` (default: a quarter of the free memory of a CUDA device, or of what this
        process may still take of it when several workers share it; 1 GiB on another
        accelerator): batches are then sliced here and copied over one at a time.
        """
        device = torch.device(device)
        here = self.device
        if here.type == device.type and (device.index is None or here.index == device.index):
            return self
        if max_bytes is None:
            max_bytes = 1 << 30
            if device.type == "cuda":
                free, total = torch.cuda.mem_get_info(device)
                # a worker sharing the device is capped at a fraction of it (workers.py)
                allowed = total * torch.cuda.get_per_process_memory_fraction(device)
                left = allowed - torch.cuda.memory_reserved(device)
                max_bytes = int(max(0.0, min(free, left))) // 4
        if self.nbytes > max_bytes:
            return self
        return self.to(device)

    # ------------------------------------------------------------------ storage
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"pooled": self.pooled, "tokens": self.tokens, "present": self.present}
        for i, lv in enumerate(self.levels):
            out[f"level.{i}"] = lv
        if self.token_mask is not None:
            out["token_mask"] = self.token_mask
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def load(cls, folder: Path) -> CachedFeatures:
        """Read an entry written by :class:`FeatureCache` (or a stage-1 run).

        Raises:
            DamagedFileError: ``features.safetensors`` cannot be read, or its bytes changed since
                it was written (its recorded sha256: hashing costs about 1 s per GB, once).
        """
        meta = json.loads((folder / "meta.json").read_text())
        t = read_weights(folder / "features.safetensors")
        levels = [t[f"level.{i}"] for i in range(int(meta["n_levels"]))]
        return cls(
            t["pooled"],
            t["tokens"],
            levels,
            t["present"],
            t.get("token_mask"),
            FeatureShape.from_dict(meta["feature_shape"]),
            key=folder.name,
        )


class FeatureCache:
    """Compute-once, reuse-everywhere store of frozen encoders' outputs.

    Args:
        root: folder of the cache entries (normally ``trials/cache/``).
        batch_size: rows per forward pass while computing.

    Attributes:
        hits / misses: counters of this object's :meth:`features` calls.
    """

    def __init__(self, root: str | Path, batch_size: int = 64) -> None:
        self.root = Path(root)
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0

    def key(
        self,
        ds: Any,
        modality: str,
        spec: EncoderSpec,
        prepared: PreparedModality,
        fingerprint: str | None = None,
    ) -> tuple[str, dict]:
        """``(sha256 key, the JSON-able parts it was made of)``."""
        cls = get_encoder_entry(spec.name).obj
        parts = {
            "version": CACHE_VERSION,
            "dataset": fingerprint or ds.fingerprint(),
            "modality": modality,
            "encoder": spec.name,
            "params": cls.resolve_params(spec.params),
            "weights": cls.weights_identity(spec),
            "preprocessing": prepared.state,
        }
        return stable_hash(parts), parts

    def features(
        self,
        ds: Any,
        modality: str,
        spec: EncoderSpec,
        prepared: PreparedModality,
        device: str | torch.device = "cpu",
        deadline: float | None = None,
    ) -> CachedFeatures:
        """The frozen encoder's outputs for every row: read from the cache or computed and stored.

        Args:
            ds: the :class:`autofuse.data.Dataset` (only its fingerprint is read).
            modality: modality name.
            spec: a ``mode="frozen"`` encoder spec.
            prepared: ``prepare_modality(ds, modality, spec)``.
            device: where to run the encoder when computing (results are stored on the CPU).
            deadline: ``time.monotonic()`` value; computing stops early (nothing stored) when
                the first rows project the whole extraction past it.

        Raises:
            ConfigError: ``spec`` is not frozen.
            FeatureCostError: the extraction would not end before ``deadline``.
        """
        if spec.mode != "frozen":
            raise ConfigError(f"feature cache holds frozen encoders only, got mode {spec.mode!r}")
        key, parts = self.key(ds, modality, spec, prepared)
        folder = self.root / key
        if (folder / "meta.json").exists():
            try:
                cached = CachedFeatures.load(folder)
            except Exception as e:  # a damaged entry is recomputed, not fatal
                logger.warning("feature cache entry %s unreadable (%s); recomputing", folder, e)
                discard_dir(folder)
            else:
                self.hits += 1
                logger.info("feature cache hit: %s / %s -> %s", modality, spec.name, folder)
                return cached
        self.misses += 1
        logger.info(
            "feature cache miss: computing %s / %s for %d rows", modality, spec.name, len(prepared)
        )
        t0 = time.perf_counter()
        encoder = create_encoder(spec, prepared.state).to(device).eval()
        what = f"{modality} / {spec.name}"
        feats = encoder_features(encoder, prepared, self.batch_size, deadline=deadline, what=what)
        feats.key = key
        seconds = time.perf_counter() - t0
        meta = {
            "key": key,
            "parts": parts,
            "feature_shape": feats.feature_shape.to_dict(),
            "n_rows": len(feats),
            "n_levels": len(feats.levels),
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

        def write(tmp: Path) -> None:
            save_weights(feats.tensors(), tmp / "features.safetensors")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))

        if atomic_write_dir(folder, write):
            logger.info("feature cache stored %s (%.1fs)", folder, seconds)
        return feats


@torch.no_grad()
def compute_features(
    spec: EncoderSpec,
    prepared: PreparedModality,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> CachedFeatures:
    """Run a frozen encoder over every present row of ``prepared`` (absent rows stay zeros).

    Text rows are processed sorted by length, so batches hold similar lengths (less padding).
    """
    encoder = create_encoder(spec, prepared.state).to(device).eval()
    return encoder_features(encoder, prepared, batch_size)


#: a feature extraction is projected from its first rows once this many batches and seconds
#: have passed (enough to be measured, little enough to stop before committing to the rest)
PROJECT_AFTER_BATCHES, PROJECT_AFTER_S = 2, 1.0


@torch.no_grad()
def encoder_features(
    encoder: torch.nn.Module,
    prepared: PreparedModality,
    batch_size: int = 64,
    deadline: float | None = None,
    what: str = "a frozen encoder",
) -> CachedFeatures:
    """Run a (frozen) encoder instance over every present row; the feature cache and prediction
    both use this, so a predicted row sees exactly the features its model was trained on
    (same batches, text sorted by length, tokens and levels rounded through float16).

    With ``deadline`` (``time.monotonic()``), the cost of the whole extraction is projected from
    the first batches; when it would end past the deadline, :class:`FeatureCostError` stops it
    there (a budget must not be spent on an extraction that cannot finish in it)."""
    encoder = encoder.eval()
    shape: FeatureShape = encoder.feature_shape
    n = len(prepared)
    rows = torch.nonzero(prepared.present, as_tuple=False).flatten()
    if isinstance(prepared.inputs, list):  # raw text: sort by length
        lengths = torch.tensor([len(prepared.inputs[i]) for i in rows.tolist()], dtype=torch.long)
        rows = rows[torch.argsort(lengths, stable=True)]
    pooled = torch.zeros(n, shape.dim, dtype=torch.float32)
    tokens = torch.zeros(n, shape.n_tokens, shape.dim, dtype=torch.float16)
    levels = [torch.zeros(n, nl, dl, dtype=torch.float16) for nl, dl in shape.levels]
    token_mask: torch.Tensor | None = None
    t0 = time.monotonic()
    for k, start in enumerate(range(0, len(rows), batch_size)):
        spent = time.monotonic() - t0
        if deadline is not None and k >= PROJECT_AFTER_BATCHES and spent >= PROJECT_AFTER_S:
            left = spent / start * (len(rows) - start)  # the rows not done yet, at this pace
            if time.monotonic() + left > deadline:
                raise FeatureCostError(what, spent + left, deadline - time.monotonic(), len(rows))
        idx = rows[start : start + batch_size]
        x, present = prepared.batch(idx)
        f = encoder(x, present)
        pooled[idx] = f.pooled.float().cpu()
        tokens[idx] = f.tokens.cpu().to(torch.float16)
        for lv, out in zip(levels, f.levels, strict=True):
            lv[idx] = out.cpu().to(torch.float16)
        if f.token_mask is not None:
            if token_mask is None:
                token_mask = torch.zeros(n, shape.n_tokens, dtype=torch.bool)
            token_mask[idx] = f.token_mask.cpu()
    if token_mask is None and getattr(encoder, "has_token_mask", False):
        token_mask = torch.zeros(n, shape.n_tokens, dtype=torch.bool)
    return CachedFeatures(
        pooled, tokens, levels, prepared.present.clone().bool(), token_mask, shape
    )
