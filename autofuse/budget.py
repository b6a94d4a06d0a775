"""A staged search's time budget: when each stage ends, and how many finalists fit stage 3.

Plain arithmetic over seconds and measured costs (no storage, no study): the coordinator in
:mod:`autofuse.study` asks, and the tests check it on numbers alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: stage 3 sizes its finalists x seeds so that each trial gets at least this many epochs
MIN_FINALIST_EPOCHS = 2
#: a finalist's estimated epoch cost is multiplied by this (the estimate comes from stage 1,
#: whose encoders trained on fewer rows and without the fusion layers)
COST_MARGIN = 1.25


class StageBudget:
    """``--time-budget`` split across the stages (``shares``: each stage's name and share, in
    order; ``stages.budget``), with rollover.

    Each stage ends at a fixed point of the search's clock: stage 1 at ``start + unimodal share
    x total``, stage 2 at ``start + (unimodal + fusion shares) x total``, stage 3 at ``start +
    total`` (shares normalised to sum to 1). A stage that ends early leaves its time to the
    next stage, and one that overruns takes it from the next: the search as a whole keeps its
    budget."""

    def __init__(
        self,
        total_s: float | None,
        shares: list[tuple[str, float]],
        start: float | None = None,
    ) -> None:
        self.total_s, self.shares = total_s, shares
        self.start = time.time() if start is None else start

    def _fraction_until(self, stage: str) -> float:
        """The share of the budget spent when ``stage`` ends (cumulative, normalised)."""
        total = sum(s for _, s in self.shares) or 1.0
        upto = 0.0
        for name, share in self.shares:
            upto += share
            if name == stage:
                return upto / total
        return 1.0

    def end(self, stage: str) -> float | None:
        """When ``stage`` ends (``time.time()`` clock); None without a time budget."""
        if self.total_s is None:
            return None
        return self.start + self.total_s * self._fraction_until(stage)

    def left(self, stage: str, now: float | None = None) -> float | None:
        """Seconds left until ``stage`` ends (0 when it is over); None without a time budget."""
        end = self.end(stage)
        return None if end is None else max(0.0, end - (time.time() if now is None else now))

    def shared(self, stage: str, n: int) -> dict[str, float]:
        """A stage whose ``n`` trials all run and share its time: when it ends, and the least
        time one trial gets (a quarter of an even share of what is left)."""
        left = self.left(stage)
        if left is None or n < 1:
            return {}
        return {"budget_end": time.time() + left, "min_trial_s": 0.25 * left / n}


@dataclass(frozen=True)
class FinalistCost:
    """The measured cost of one finalist design: seconds per end-to-end epoch over the training
    rows, and the fixed cost of a trial (building the model, the test pass)."""

    epoch_s: float
    overhead_s: float = 0.0

    def trial_s(self, epochs: int) -> float:
        return self.overhead_s + epochs * self.epoch_s * COST_MARGIN


@dataclass(frozen=True)
class FinalistPlan:
    """How many of the ranked designs stage 3 fine-tunes, with how many seeds, and why."""

    designs: int
    seeds: int
    note: str

    @property
    def skipped(self) -> bool:
        return self.designs == 0


def size_finalists(costs: list[FinalistCost], seeds: int, left_s: float | None) -> FinalistPlan:
    """Stage 3's size from what is left of the budget and the designs' measured costs (``costs``
    in rank order, at most ``stages.finalists`` of them).

    Each trial must get :data:`MIN_FINALIST_EPOCHS` epochs. The most designs that fit win (the
    comparison of designs is what stage 3 is for), then the most seeds (at least 2, for a seed
    spread); then one design with one seed; one design with one seed for a single epoch; else
    the stage is skipped. Fewer finalists that train beat many that time out untrained."""
    if not costs:
        return FinalistPlan(0, 0, "no completed stage-2 design to fine-tune")
    if left_s is None:
        return FinalistPlan(len(costs), seeds, f"{len(costs)} design(s) x {seeds} seed(s)")

    def need(k: int, s: int, epochs: int) -> float:
        return s * sum(c.trial_s(epochs) for c in costs[:k])

    asked = f"{len(costs)} x {seeds} asked"
    for k in range(len(costs), 0, -1):
        for s in range(seeds, 1, -1):
            if need(k, s, MIN_FINALIST_EPOCHS) <= left_s:
                note = f"{k} design(s) x {s} seed(s) fit {left_s:.0f} s ({asked})"
                return FinalistPlan(k, s, note)
    for epochs in (MIN_FINALIST_EPOCHS, 1):
        if need(1, 1, epochs) <= left_s:
            return FinalistPlan(
                1,
                1,
                f"1 design x 1 seed fits {left_s:.0f} s for {epochs} epoch(s) ({asked}; "
                f"one epoch of the best design costs about {costs[0].trial_s(1):.0f} s)",
            )
    return FinalistPlan(
        0,
        0,
        f"stage 3 skipped: one fine-tuning epoch of the best design costs about "
        f"{costs[0].trial_s(1):.0f} s and {left_s:.0f} s of the budget are left",
    )


__all__ = [
    "COST_MARGIN",
    "MIN_FINALIST_EPOCHS",
    "FinalistCost",
    "FinalistPlan",
    "StageBudget",
    "size_finalists",
]
