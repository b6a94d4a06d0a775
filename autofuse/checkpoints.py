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
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from autofuse._util import atomic_write, better, first_line, sort_sign
from autofuse.errors import ConfigError
from autofuse.model import MultimodalModel, full_model, trainable_state_dict
from autofuse.spec import ArchitectureSpec, load_architecture, save_architecture

log = logging.getLogger(__name__)

#: completed trials whose checkpoints are kept (the report re-evaluates the finalists)
KEEP_TOP_K = 3


def _number(path: Path) -> int | None:
    """``trial_12.safetensors`` -> 12."""
    n = path.name.split("_", 1)[-1].split(".", 1)[0]
    return int(n) if n.isdigit() else None


class CheckpointStore:
    """Checkpoints of one study's trials under ``study_dir``."""

    def __init__(self, study_dir: str | Path) -> None:
        self.study_dir = Path(study_dir)
        self.running_dir = self.study_dir / "running"
        self.finalist_dir = self.study_dir / "checkpoints"
        self.best_dir = self.study_dir / "best"

    # ---- running trials (resume after a crash) -------------------------------------------------
    def running_path(self, number: int) -> Path:
        return self.running_dir / f"trial_{number}.pt"

    def save_running(self, number: int, state: dict[str, Any]) -> None:
        with atomic_write(self.running_path(number)) as tmp:
            torch.save(state, tmp)

    def load_running(self, number: int) -> dict[str, Any] | None:
        """The epoch checkpoint of trial ``number``, or ``None`` when there is none or it cannot
        be read (a warning; the retry then starts from epoch 1)."""
        path = self.running_path(number)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated / corrupt file: any unpickling error
            log.warning(
                "%s cannot be read (%s); the trial starts from epoch 1", path, first_line(e)
            )
            return None

    def discard_running(self, *numbers: int | None) -> None:
        for n in numbers:
            if n is not None:
                self.running_path(n).unlink(missing_ok=True)

    # ---- finalists -----------------------------------------------------------------------------
    def finalist_paths(self, number: int) -> tuple[Path, Path]:
        """``(architecture json, weights)`` of trial ``number``."""
        return (
            self.finalist_dir / f"trial_{number}.json",
            self.finalist_dir / f"trial_{number}.safetensors",
        )

    def finalists(self) -> set[int]:
        """Trial numbers with a complete finalist checkpoint (spec and weights)."""
        out = set()
        for p in self.finalist_dir.glob("trial_*.safetensors"):
            n = _number(p)
            if n is not None and self.finalist_paths(n)[0].is_file():
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
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))

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
        of the completed ``others``; returns whether it was kept."""
        ranked = sorted(others, key=lambda v: sort_sign(direction) * v)
        if len(ranked) >= KEEP_TOP_K and not better(value, ranked[KEEP_TOP_K - 1], direction):
            return False
        self.save_finalist(number, model, spec, info, extra)
        return True

    def outputs_path(self, number: int) -> Path:
        return self.finalist_dir / f"trial_{number}.outputs.npz"

    def save_outputs(self, number: int, **splits: np.ndarray) -> None:
        """A finalist model's raw outputs per split (for the greedy ensemble and its report)."""
        with atomic_write(self.outputs_path(number)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **splits)

    def has_outputs(self, number: int) -> bool:
        return self.outputs_path(number).is_file()

    def load_outputs(self, number: int) -> dict[str, np.ndarray]:
        with np.load(self.outputs_path(number)) as z:
            return {k: z[k] for k in z.files}

    def prune(self, keep: Iterable[int]) -> None:
        """Delete the finalist checkpoints of every trial not in ``keep``."""
        keep = set(keep)
        for f in self.finalist_dir.glob("trial_*.*"):
            n = _number(f)
            if n is not None and n not in keep:
                f.unlink(missing_ok=True)

    def load_finalist(self, number: int) -> tuple[ArchitectureSpec, dict, dict[str, torch.Tensor]]:
        """``(spec, dataset_info, weights)`` of a finalist.

        Raises:
            ConfigError: no checkpoint for that trial (only the top few keep one).
        """
        arch, weights = self.finalist_paths(number)
        if not arch.is_file() or not weights.is_file():
            kept = sorted(self.finalists())
            raise ConfigError(
                f"trial {number} has no checkpoint in {self.finalist_dir} (only the best "
                f"{KEEP_TOP_K} completed trials keep one: {kept or 'none'})"
            )
        spec, info = load_architecture(arch)
        return spec, info, load_file(str(weights))

    # ---- the best trial ------------------------------------------------------------------------
    def export_best(self, number: int) -> Path:
        """Write trial ``number`` as a full model (frozen encoders included) into ``best/``."""
        if (self.best_dir / "ensemble.json").exists():  # an earlier winner was an ensemble
            shutil.rmtree(self.best_dir)
        return self.export_full(number, self.best_dir)

    def export_full(self, number: int, folder: Path) -> Path:
        """Write trial ``number`` as a full model (``architecture.json`` + ``model.safetensors``,
        frozen encoders included) into ``folder``."""
        spec, info, state = self.load_finalist(number)
        model = full_model(spec, info, state, what=f"checkpoint of trial {number}")
        save_architecture(folder / "architecture.json", spec, info)
        full = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        with atomic_write(folder / "model.safetensors") as tmp:
            save_file(full, str(tmp))
        return folder

    def load_best(self) -> tuple[ArchitectureSpec, dict, MultimodalModel] | None:
        """The exported best model, or ``None`` when there is none."""
        arch, weights = self.best_dir / "architecture.json", self.best_dir / "model.safetensors"
        if not arch.is_file() or not weights.is_file():
            return None
        spec, info = load_architecture(arch)
        return spec, info, full_model(spec, info, load_file(str(weights)), "best model weights")


__all__ = ["KEEP_TOP_K", "CheckpointStore"]
