"""A trial hook that injects faults into chosen trials (tests of the fault handling).

``InjectFaults({2: "diverged", 3: "oom", 4: "timeout", 5: "invalid"})`` makes trial 2's first
epoch end with a non-finite loss, trial 3 run out of memory, trial 4 overrun ``--trial-timeout``
and trial 5 fail to build. Pass it to ``autofuse.search(..., hooks=[...])``; it is picklable, so
worker processes get it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autofuse.train import TrialFault
from autofuse.trial import TrialExecution, TrialHook

REASONS = ("diverged", "oom", "timeout", "invalid")


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

    def on_epoch_end(self, ex: TrialExecution, epoch: int, metrics: dict[str, float]) -> None:
        reason = self.faults.get(ex.number)
        if reason == "diverged":
            raise TrialFault("diverged", "injected non-finite loss")
        if reason == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
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
        Path(self.marker).write_text(str(ex.number))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.1)
        raise TrialFault("timeout", "HoldTrial: the test never killed this worker")
