"""A trial hook that injects faults into chosen trials (tests of the fault handling).

``InjectFaults({2: "diverged", 3: "oom", 4: "timeout", 5: "invalid"})`` makes trial 2's first
epoch end with a non-finite loss, trial 3 run out of memory (its retry with half the batch size
too), trial 4 overrun ``--trial-timeout`` and trial 5 fail to build (``"error"``: raise an
exception, the trial fails); ``"oom_once"`` makes only the
first attempt run out of memory (the retry completes). Pass it to
``autofuse.search(..., hooks=[...])``; it is picklable, so worker processes get it too.

:class:`ExhaustMemory` provokes a real CUDA out-of-memory error: it allocates more than the
worker's share of the device (``--workers-per-device``).

:func:`rot_checkpoint` and :func:`rot_weights` leave bit rot in a running checkpoint (a zip
archive) and in a safetensors weight file.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autofuse.train import TrialFault
from autofuse.trial import TrialExecution, TrialHook

REASONS = ("diverged", "oom", "oom_once", "timeout", "invalid", "error")


@dataclass
class InjectFaults(TrialHook):
    """Trial number -> fault reason (one of :data:`REASONS`)."""

    faults: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {n: r for n, r in self.faults.items() if r not in REASONS}
        if bad:
            raise ValueError(f"unknown fault reasons {bad}; use {REASONS}")

    def on_trial_start(self, ex: TrialExecution) -> None:
        if self.faults.get(ex.number) == "invalid":
            raise TrialFault("invalid", "injected: architecture cannot be built")
        if self.faults.get(ex.number) == "error":  # a bug, not a fault: the trial fails
            raise RuntimeError("injected: an error in the trial")

    def on_epoch_end(self, ex: TrialExecution, epoch: int, metrics: dict[str, float]) -> None:
        reason = self.faults.get(ex.number)
        if reason == "diverged":
            raise TrialFault("diverged", "injected non-finite loss")
        if reason == "oom" or (reason == "oom_once" and ex.attempt == 1):
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected, attempt {ex.attempt})")
        if reason == "timeout":
            time.sleep((ex.ctx.options.trial_timeout or 0) + 0.5)


@dataclass
class HoldTrial(TrialHook):
    """Hold trial ``number`` after its epoch-``epoch`` checkpoint, until the process is killed.

    It first writes its trial number to ``marker``: a test waits for that file, then kills the
    worker, knowing the trial is mid-way and its checkpoint on disk (no race with the machine's
    load). ``timeout_s`` bounds the wait, so a forgotten hook cannot hang a run forever.
    """

    marker: str
    number: int = 1
    epoch: int = 2
    timeout_s: float = 600.0

    def on_checkpoint(self, ex: TrialExecution, state: dict) -> None:
        if ex.number != self.number or state["epoch"] < self.epoch:
            return
        self._hold(ex)

    def on_epoch_end(self, ex: TrialExecution, epoch: int, metrics: dict) -> None:
        # a design ranked by cross-validation keeps no epoch checkpoints: hold after the epoch
        if ex.plan is not None and ex.plan.folds and ex.number == self.number:
            if epoch >= self.epoch:
                self._hold(ex)

    def _hold(self, ex: TrialExecution) -> None:
        Path(self.marker).write_text(str(ex.number))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise TrialFault("timeout", "HoldTrial: the test never killed this worker")


@dataclass
class ExhaustMemory(TrialHook):
    """At the end of an epoch of the trials ``numbers``, allocate ``fraction`` of the
    CUDA device's total memory (every attempt): beyond a worker's share of a shared device this
    is a real ``torch.OutOfMemoryError`` of that process only. Does nothing on the CPU."""

    numbers: tuple[int, ...] = ()
    fraction: float = 0.9

    def on_epoch_end(self, ex: TrialExecution, epoch: int, metrics: dict[str, float]) -> None:
        device = ex.ctx.device
        if ex.number not in self.numbers or device.type != "cuda":
            return
        total = torch.cuda.get_device_properties(device).total_memory
        block = torch.empty(int(total * self.fraction), dtype=torch.uint8, device=device)
        del block  # reached only when the allocation fitted


def rot_checkpoint(src: str | Path, dest: str | Path, *, pickle: bool = False) -> None:
    """Write a copy of the ``torch.save`` file ``src`` to ``dest`` with 8 bytes inverted in the
    middle of one member of its zip archive: the largest tensor (the copy still loads in
    ``torch.load``, only the archive's CRC-32 checksums tell), or the pickle (``pickle=True``).
    Bit rot, as a disk or a copy may leave it."""
    data = bytearray(Path(src).read_bytes())
    with zipfile.ZipFile(src) as z:
        infos = [i for i in z.infolist() if i.filename.endswith("data.pkl") == pickle]
        info = max(infos, key=lambda i: i.file_size)
    h = info.header_offset  # local header: 30 bytes, the name, the extra field, then the data
    start = h + 30 + int.from_bytes(data[h + 26 : h + 28], "little")
    start += int.from_bytes(data[h + 28 : h + 30], "little")
    mid = start + info.file_size // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    Path(dest).write_bytes(bytes(data))


def rot_weights(path: str | Path, *, at: float = 0.5) -> int:
    """Invert one byte of the tensor data of the safetensors file ``path``, in place: the byte at
    fraction ``at`` of the data region (after the 8-byte length and the JSON header, so the
    header and every offset stay valid and the file still loads without a checksum). Bit rot,
    as a disk or a copy may leave it. Returns the offset of the byte."""
    data = bytearray(Path(path).read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    if start >= len(data):
        raise ValueError(f"{path}: no tensor data to damage")
    offset = start + min(int((len(data) - start) * at), len(data) - start - 1)
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return offset
