"""CheckpointStore: every file a study keeps of its trials' weights, in one place.

Layout under ``trials/<study>/``::

    running/trial_<n>.pt              epoch checkpoint of a running trial (model, optimiser, RNG,
                                      best weights, history): a retried trial continues from it
    checkpoints/trial_<n>.json        spec + dataset info of a finalist (architecture.json format)
    checkpoints/trial_<n>.safetensors its trained weights (frozen encoders excluded)
    best/architecture.json            the best trial as a full model (frozen encoders included)
    best/model.safetensors

Only the top :data:`KEEP_TOP_K` completed trials keep finalist checkpoints (the report
re-evaluates them, ``export`` exports them without retraining). Every write is atomic.

With an artifact store (``--artifacts``, :class:`~autofuse.storage.artifacts.ArtifactStore`) the
local folder is a cache in front of it: every file is uploaded to ``<study>/<same path>`` after
its local atomic write, deletions are mirrored, and a file missing locally is fetched from the
store before it is read. So a trial retried on another host resumes from the epoch checkpoint
this host wrote, and ``report`` / ``export`` work from a host that trained nothing.

Every read names the file it could not use: a finalist, best-model or outputs file that is
truncated, overwritten or of another kind is a :class:`~autofuse.errors.DamagedFileError` (the
report skips that finalist, ``export`` offers ``--retrain``, a search still writes its summary);
a running checkpoint that cannot be used is a warning, and the retried trial starts from epoch 1.

Bit rot is caught too: every safetensors file here records its sha256 in its header
(:mod:`autofuse.weights`) and is checked when read, wherever it came from (this host, or the
artifact store); a mismatch is the same :class:`~autofuse.errors.DamagedFileError`. A running
checkpoint is a zip archive, checked by its members' CRC-32 (:func:`zip_problem`).
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autofuse._util import atomic_write, better, first_line, sort_sign
from autofuse.errors import ConfigError, DamagedFileError
from autofuse.model import MultimodalModel, full_model, trainable_state_dict
from autofuse.spec import ArchitectureSpec, load_architecture, save_architecture
from autofuse.storage.artifacts import ArtifactStore, open_artifacts
from autofuse.weights import read_weights as read_checked
from autofuse.weights import save_weights

log = logging.getLogger(__name__)

#: completed trials whose checkpoints are kept (the report re-evaluates the finalists)
KEEP_TOP_K = 3


#: what a running checkpoint holds (``autofuse.train.training_state``): key -> accepted types
RUNNING_KEYS: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "optimizer": (dict,),
    "generator": (torch.Tensor,),
    "epoch": (int,),
    "best_state": (dict,),
    "best_val": (float, int, type(None)),
    "best_epoch": (int,),
    "history": (list,),
    "stale": (int,),
}
#: the key :meth:`CheckpointStore.load_running` adds: the file the state was read from
RUNNING_SOURCE = "checkpoint_file"


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the sha256 recorded in it
    (:func:`autofuse.weights.read_weights`).

    Raises:
        DamagedFileError: the file is missing, cannot be read as safetensors (truncated,
            overwritten, ...) or its bytes changed since autofuse wrote it (sha256 mismatch).
    """
    try:
        return read_checked(path)
    except FileNotFoundError:
        raise DamagedFileError(path, "unreadable weights (no such file)") from None


def read_architecture(path: str | Path) -> tuple[ArchitectureSpec, dict]:
    """``(spec, dataset_info)`` of an ``architecture.json`` written by autofuse.

    Raises:
        DamagedFileError: the file is missing, not JSON, not an architecture file or its spec is
            invalid.
    """
    path = Path(path)
    try:
        return load_architecture(path)
    except ConfigError as e:  # its message starts with the path
        problem = str(e).removeprefix(f"{path}: ")
        raise DamagedFileError(path, problem) from None
    except Exception as e:  # binary garbage, a missing key, a spec that does not validate
        raise DamagedFileError(path, f"unreadable ({first_line(e)})") from None


def load_model(
    spec: ArchitectureSpec, info: dict, state: dict[str, torch.Tensor], source: str | Path
) -> MultimodalModel:
    """:func:`~autofuse.model.full_model` of ``state`` read from the file ``source``.

    Raises:
        DamagedFileError: the weights do not fit the spec (names, or a tensor's shape).
    """
    try:
        return full_model(spec, info, state, what="its weights")
    except (ConfigError, RuntimeError, ValueError) as e:  # RuntimeError: a tensor's shape
        raise DamagedFileError(source, f"does not fit its architecture ({first_line(e)})") from None


def zip_problem(path: str | Path) -> str | None:
    """Why the file ``torch.save`` wrote at ``path`` (a zip archive) is damaged, or ``None``.

    ``torch.load`` reads the archive without checking its CRC-32 checksums, so flipped bytes in
    a tensor load silently; :meth:`zipfile.ZipFile.testzip` checks every member's."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        return f"cannot be read ({first_line(e)})"
    return None if bad is None else f"is damaged (checksum mismatch in {bad.split('/', 1)[-1]})"


def running_problem(state: Any) -> str | None:
    """Why ``state`` cannot be a running checkpoint (``None`` when it can)."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a training state"
    missing = [k for k in RUNNING_KEYS if k not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    wrong = [k for k, types in RUNNING_KEYS.items() if not isinstance(state[k], types)]
    if wrong:
        return f"has {', '.join(wrong)} of the wrong type"
    epoch, history = state["epoch"], state["history"]
    if epoch < 1 or not all(isinstance(h, dict) and "epoch" in h for h in history):
        return f"its epoch ({epoch}) or history is not a training state's"
    weights = [*state["model"].values(), *state["best_state"].values()]
    if not all(isinstance(v, torch.Tensor) for v in weights):
        return "its weights are not all tensors"
    return None


def study_artifacts(user_attrs: dict[str, Any]) -> ArtifactStore | None:
    """The artifact store a study was created with (its stored ``--artifacts``), or ``None``."""
    stored = user_attrs.get("search_options") or {}
    return open_artifacts(stored.get("artifacts") if isinstance(stored, dict) else None)


def _number(path: Path | str) -> int | None:
    """``trial_12.safetensors`` -> 12."""
    n = Path(path).name.split("_", 1)[-1].split(".", 1)[0]
    return int(n) if n.isdigit() else None


class CheckpointStore:
    """Checkpoints of one study's trials under ``study_dir``; with ``artifacts``, also in that
    store under the study's name (the local folder a cache in front of it)."""

    def __init__(self, study_dir: str | Path, artifacts: ArtifactStore | None = None) -> None:
        self.study_dir = Path(study_dir)
        self.running_dir = self.study_dir / "running"
        self.finalist_dir = self.study_dir / "checkpoints"
        self.best_dir = self.study_dir / "best"
        #: the whole store (``cache/`` lives there too) and this study's part of it
        self.artifacts = artifacts
        self.remote = artifacts.child(self.study_dir.name) if artifacts is not None else None

    # ---- the artifact store behind the local folder --------------------------------------------
    def _rel(self, path: Path) -> str:
        return path.relative_to(self.study_dir).as_posix()

    def publish(self, *paths: Path) -> None:
        """Upload local files of the study (after their atomic write); a store that fails
        costs a warning, the local copy stays."""
        if self.remote is not None:
            for p in paths:
                self.remote.put(p, self._rel(p))

    def cached(self, path: Path) -> Path:
        """``path`` (a file of the study), fetched from the store when it is not here."""
        if self.remote is not None and not path.is_file():
            self.remote.fetch(self._rel(path), path)
        return path

    def _unpublish(self, *paths: Path) -> None:
        if self.remote is not None:
            for p in paths:
                self.remote.delete(self._rel(p))

    def _remote_names(self, folder: Path) -> list[str]:
        return self.remote.names(self._rel(folder)) if self.remote is not None else []

    # ---- running trials (resume after a crash) -------------------------------------------------
    def running_path(self, number: int) -> Path:
        return self.running_dir / f"trial_{number}.pt"

    def save_running(self, number: int, state: dict[str, Any]) -> None:
        with atomic_write(self.running_path(number)) as tmp:
            torch.save(state, tmp)
        self.publish(self.running_path(number))

    def load_running(self, number: int) -> dict[str, Any] | None:
        """The epoch checkpoint of trial ``number``, or ``None`` when there is none or it cannot
        be used (a warning naming the file; the retry then starts from epoch 1).

        Read with ``weights_only=True``: tensors, numbers, lists and dicts only, so a file put
        there by someone else cannot run code. The state records the file it came from under
        :data:`RUNNING_SOURCE`. Without a local copy it is fetched from the artifact store (the
        attempt ran on another host)."""
        path = self.cached(self.running_path(number))
        if not path.is_file():
            return None
        try:
            problem = zip_problem(path)  # torch.load does not check the archive's checksums
            if problem is None:
                state = torch.load(path, map_location="cpu", weights_only=True)
                problem = running_problem(state)
        except Exception as e:  # truncated / corrupt / foreign file: any unpickling error
            problem = (
                "holds objects other than tensors, numbers and containers (not loaded: that "
                "could run code)"
                if str(e).startswith("Weights only load failed")
                else f"cannot be read ({first_line(e)})"
            )
        if problem is not None:
            log.warning("%s %s; the trial starts from epoch 1", path, problem)
            return None
        state[RUNNING_SOURCE] = str(path)
        return state

    def discard_running(self, *numbers: int | None) -> None:
        for n in numbers:
            if n is not None:
                self.running_path(n).unlink(missing_ok=True)
                self._unpublish(self.running_path(n))

    # ---- finalists -----------------------------------------------------------------------------
    def finalist_paths(self, number: int) -> tuple[Path, Path]:
        """``(architecture json, weights)`` of trial ``number``."""
        return (
            self.finalist_dir / f"trial_{number}.json",
            self.finalist_dir / f"trial_{number}.safetensors",
        )

    def finalists(self) -> set[int]:
        """Trial numbers with a complete finalist checkpoint (spec and weights), here or in
        the artifact store."""
        out = set()
        for p in self.finalist_dir.glob("trial_*.safetensors"):
            n = _number(p)
            if n is not None and self.finalist_paths(n)[0].is_file():
                out.add(n)
        remote = set(self._remote_names(self.finalist_dir))
        for name in remote:
            n = _number(name)
            if name.endswith(".safetensors") and n is not None and f"trial_{n}.json" in remote:
                out.add(n)
        return out

    def save_finalist(
        self,
        number: int,
        model: MultimodalModel,
        spec: ArchitectureSpec,
        info: dict,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Spec + weights of trial ``number``; ``extra`` adds state entries the model does not
        hold itself (a stage-1 encoder it used frozen)."""
        arch, weights = self.finalist_paths(number)
        save_architecture(arch, spec, info)
        state = {**trainable_state_dict(model), **(extra or {})}
        with atomic_write(weights) as tmp:
            save_weights({k: v.contiguous() for k, v in state.items()}, tmp)
        self.publish(arch, weights)

    def save_if_top(
        self,
        number: int,
        value: float,
        others: Iterable[float],
        direction: str,
        model: MultimodalModel,
        spec: ArchitectureSpec,
        info: dict,
        extra: dict[str, torch.Tensor] | None = None,
    ) -> bool:
        """Keep trial ``number``'s weights when ``value`` is among the top :data:`KEEP_TOP_K`
        of the completed ``others`` (a tie with the K-th is kept too: stage 3 may pick either of
        tied designs, breaking the tie by another figure); returns whether it was kept."""
        ranked = sorted(others, key=lambda v: sort_sign(direction) * v)
        if len(ranked) >= KEEP_TOP_K and better(ranked[KEEP_TOP_K - 1], value, direction):
            return False
        self.save_finalist(number, model, spec, info, extra)
        return True

    def outputs_path(self, number: int) -> Path:
        return self.finalist_dir / f"trial_{number}.outputs.npz"

    def save_outputs(self, number: int, **splits: np.ndarray) -> None:
        """A finalist model's raw outputs per split (for the greedy ensemble and its report)."""
        with atomic_write(self.outputs_path(number)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **splits)
        self.publish(self.outputs_path(number))

    def has_outputs(self, number: int) -> bool:
        return self.cached(self.outputs_path(number)).is_file()

    def load_outputs(self, number: int) -> dict[str, np.ndarray]:
        """The outputs saved by :meth:`save_outputs` (``val`` and ``test`` at least).

        Raises:
            DamagedFileError: the file cannot be read, or lacks a split.
        """
        path = self.cached(self.outputs_path(number))
        problem = zip_problem(path)  # an .npz is a zip archive; np.load does not check it
        if problem is not None:
            raise DamagedFileError(path, problem.removeprefix("is "))
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except Exception as e:  # ValueError (an object array), OSError, ...
            raise DamagedFileError(path, f"unreadable ({first_line(e)})") from None
        missing = [k for k in ("val", "test") if k not in out]
        if missing:
            raise DamagedFileError(path, f"lacks the {', '.join(missing)} outputs")
        return out

    def readable_outputs(self, numbers: Iterable[int]) -> dict[int, dict[str, np.ndarray]]:
        """The saved outputs of the trials ``numbers`` that have them; a file that cannot be
        read is left out with a warning naming it."""
        out = {}
        remote = set(self._remote_names(self.finalist_dir))  # one listing, not one per trial
        for n in numbers:
            path = self.outputs_path(n)
            if not path.is_file() and path.name in remote:
                self.cached(path)
            if not path.is_file():
                continue
            try:
                out[n] = self.load_outputs(n)
            except DamagedFileError as e:
                log.warning("trial %d's outputs left out: %s", n, e)
        return out

    def prune(self, keep: Iterable[int]) -> None:
        """Delete the finalist checkpoints of every trial not in ``keep`` (here and in the
        artifact store)."""
        keep = set(keep)
        for f in self.finalist_dir.glob("trial_*.*"):
            n = _number(f)
            if n is not None and n not in keep:
                f.unlink(missing_ok=True)
        for name in self._remote_names(self.finalist_dir):
            n = _number(name)
            if name.startswith("trial_") and n is not None and n not in keep:
                self._unpublish(self.finalist_dir / name)

    def load_finalist(self, number: int) -> tuple[ArchitectureSpec, dict, dict[str, torch.Tensor]]:
        """``(spec, dataset_info, weights)`` of a finalist.

        Raises:
            ConfigError: no checkpoint for that trial (only the top few keep one).
            DamagedFileError: its spec or weights file cannot be read.
        """
        arch, weights = (self.cached(p) for p in self.finalist_paths(number))
        if not arch.is_file() or not weights.is_file():
            kept = sorted(self.finalists())
            raise ConfigError(
                f"trial {number} has no checkpoint in {self.finalist_dir} (only the best "
                f"{KEEP_TOP_K} completed trials keep one: {kept or 'none'})"
            )
        spec, info = read_architecture(arch)
        return spec, info, read_weights(weights)

    def load_finalist_model(self, number: int) -> tuple[ArchitectureSpec, dict, MultimodalModel]:
        """``(spec, dataset_info, full model)`` of a finalist (frozen encoders built for real).

        Raises:
            ConfigError: no checkpoint for that trial.
            DamagedFileError: its files cannot be read, or its weights do not fit its spec.
        """
        spec, info, state = self.load_finalist(number)
        return spec, info, load_model(spec, info, state, self.finalist_paths(number)[1])

    # ---- the best trial ------------------------------------------------------------------------
    def export_best(self, number: int) -> Path:
        """Write trial ``number`` as a full model (frozen encoders included) into ``best/``."""
        if (self.best_dir / "ensemble.json").exists():  # an earlier winner was an ensemble
            shutil.rmtree(self.best_dir)
        self.export_full(number, self.best_dir)
        return self.publish_best()

    def publish_best(self) -> Path:
        """Upload ``best/`` as a whole (an earlier winner's files in the store removed first)."""
        if self.remote is not None and self.best_dir.is_dir():
            self.remote.delete("best")
            self.remote.put_dir(self.best_dir, "best")
        return self.best_dir

    def export_full(self, number: int, folder: Path) -> Path:
        """Write trial ``number`` as a full model (``architecture.json`` + ``model.safetensors``,
        frozen encoders included) into ``folder``.

        Raises:
            ConfigError: no checkpoint for that trial.
            DamagedFileError: its files cannot be read (nothing is written then).
        """
        spec, info, model = self.load_finalist_model(number)
        save_architecture(folder / "architecture.json", spec, info)
        full = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        with atomic_write(folder / "model.safetensors") as tmp:
            save_weights(full, tmp)
        return folder

    def load_best(self) -> tuple[ArchitectureSpec, dict, MultimodalModel] | None:
        """The exported best model, or ``None`` when there is none.

        Raises:
            DamagedFileError: its files cannot be read, or its weights do not fit its spec.
        """
        arch, weights = self.best_dir / "architecture.json", self.best_dir / "model.safetensors"
        if self.remote is not None and not (arch.is_file() and weights.is_file()):
            self.remote.fetch_dir("best", self.best_dir)
        if not arch.is_file() or not weights.is_file():
            return None
        spec, info = read_architecture(arch)
        return spec, info, load_model(spec, info, read_weights(weights), weights)


__all__ = [
    "KEEP_TOP_K",
    "RUNNING_SOURCE",
    "CheckpointStore",
    "load_model",
    "read_architecture",
    "read_weights",
    "running_problem",
    "study_artifacts",
    "zip_problem",
]
