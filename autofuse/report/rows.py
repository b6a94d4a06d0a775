"""One trial as the report shows it (shared by the collector and the robustness evaluation)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One trial as the report shows it."""

    number: int
    status: str
    reason: str | None
    baseline: str | None
    family: str | None
    method: str | None
    point: str | None
    encoders: dict[str, str]
    value: float | None
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    n_params: int | None
    latency_ms: float | None
    train_time_s: float | None
    duration_s: float | None
    epochs_run: int | None
    worker: str | None
    device: str | None
    started_at: str | None
    finished_at: str | None
    cache_hits: int | None
    cache_misses: int | None
    has_checkpoint: bool = False
    last_value: float | None = None  # the value, or a pruned trial's last reported score
    # a staged search (None in a single-stage one): the stage, and what the stage records
    stage: str | None = None  # "unimodal" | "fusion" | "finalist"
    low_fidelity: bool | None = None  # reached its time limit: scored at its best epoch so far
    unimodal: str | None = None  # stage 1: the modality trained alone
    kept: list[str] | None = None  # stage 2: the modalities the design fuses
    design: int | None = None  # stage 3: the stage-2 design it fine-tunes (trial number)
    seed: int | None = None  # stage 3: its seed
    # how the value was scored (autofuse.report.labels.read_selection): None = the validation split
    selection: dict | None = None

    @property
    def fusion(self) -> str:
        return f"{self.family}.{self.method}"
