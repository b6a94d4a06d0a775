"""Stage 1's tuning: while the unimodal stage has time left, more runs of each trainable
encoder choice, with the settings that matter proposed by a small TPE search per choice.

Stage 1 first trains every encoder choice once with the space's defaults (to early stopping on
the validation split). Under ``--time-budget`` the stage then goes on in rounds: each round
queues one more run per trainable choice (the cheapest first, as many as the time left fits).
What a run tries comes from Optuna's TPE sampler over the choice's learning rate and its own
searchable settings (width ``dim`` and the others its space entry lists), fitted to that
choice's earlier runs: an in-memory study replayed from the trial records, so a resumed study
proposes from the same history. Stage 2 uses each choice's best run (its validation value).

A choice is done after ``stages.tune`` extra runs, or when its last :data:`NO_GAIN_RUNS` runs did
not beat its best (converged); the stage ends when every choice is done or no run fits the
time left, and says which.
"""

from __future__ import annotations

import logging
import statistics
import zlib
from typing import Any

import optuna

from autofuse.space import Range, SearchSpace, default_value, suggest_value
from autofuse.spec import ArchitectureSpec
from autofuse.stages import UNIMODAL, stage_of

log = logging.getLogger(__name__)

TS = optuna.trial.TrialState

#: user attribute of a tuning run: the settings it tried (``lr``, ``enc.<param>``)
TUNED = "tuned"
#: a choice has converged when this many runs in a row did not beat its best
NO_GAIN_RUNS = 3


def tuning_values(space: SearchSpace, spec: ArchitectureSpec, modality_type: str) -> dict:
    """What a tuning run of ``spec``'s encoder choice may change: the learning rate and the
    choice's settings that have more than one value (name -> space entry)."""
    (enc,) = spec.encoders.values()
    out: dict[str, Any] = {}
    if _searchable(space.training.lr):
        out["lr"] = space.training.lr
    for ch in space.encoder_choices(modality_type):
        if ch["name"] == enc.name:
            out |= {f"enc.{p}": v for p, v in ch["params"].items() if _searchable(v)}
    return out


def _searchable(v: Any) -> bool:
    if isinstance(v, dict):
        v = Range.model_validate(v)
    if isinstance(v, Range):
        return v.low != v.high
    return isinstance(v, list) and len(v) > 1


def defaults_of(values: dict[str, Any]) -> dict[str, Any]:
    """The settings of a choice's first (untuned) run."""
    return {n: default_value(v) for n, v in values.items()}


def propose(
    history: list[tuple[dict[str, Any], float]],
    values: dict[str, Any],
    direction: str,
    seed: int,
) -> dict[str, Any]:
    """The next settings to try: TPE fitted to ``history`` (settings, validation value)."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True)
    mem = optuna.create_study(direction=direction, sampler=sampler)
    for params, value in history:  # replay: the same names and distributions as a new run
        mem.enqueue_trial(params, skip_if_exists=False)
        t = mem.ask()
        for name, v in values.items():
            suggest_value(t, name, v)
        mem.tell(t, value)
    t = mem.ask()
    return {name: suggest_value(t, name, v) for name, v in values.items()}


def tuned_spec(spec: ArchitectureSpec, params: dict[str, Any]) -> ArchitectureSpec:
    """``spec`` (a stage-1 run's) with the proposed settings."""
    ((m, enc),) = spec.encoders.items()
    enc_params = {**enc.params}
    dim = enc.dim
    for name, v in params.items():
        if name == "enc.dim":
            dim = int(v)
        elif name.startswith("enc."):
            enc_params[name[4:]] = v
    training = spec.training
    if "lr" in params:
        training = training.model_copy(update={"lr": float(params["lr"])})
    enc = enc.model_copy(update={"dim": dim, "params": enc_params})
    return spec.model_copy(update={"encoders": {m: enc}, "training": training})


def converged(values: list[float], sign: float) -> bool:
    """The last :data:`NO_GAIN_RUNS` runs (in order) did not beat the best before them."""
    if len(values) <= NO_GAIN_RUNS:
        return False
    best_before = min(sign * v for v in values[:-NO_GAIN_RUNS])
    return min(sign * v for v in values[-NO_GAIN_RUNS:]) >= best_before


def enqueue_round(
    st: optuna.Study,
    space: SearchSpace,
    modalities: dict[str, str],
    left_s: float,
) -> tuple[int, str]:
    """Queue one tuning run per trainable encoder choice that is not done, cheapest first, as
    many as ``left_s`` seconds fit (each costs its choice's median run time). Returns how many
    were queued and, when none, why. The caller holds the study lock."""
    direction = st.direction.name.lower()
    sign = -1.0 if direction == "maximize" else 1.0
    runs: dict[str, list] = {}
    for t in st.get_trials(deepcopy=False):
        if stage_of(t) != UNIMODAL or not (t.user_attrs.get("unimodal") or {}).get("source"):
            continue  # frozen encoders fit a head only: nothing to tune
        runs.setdefault(t.user_attrs["unimodal_label"], []).append(t)
    todo, done_why = [], []
    for label, ts in sorted(runs.items()):
        if any(t.state in (TS.WAITING, TS.RUNNING) for t in ts):
            continue
        ok = sorted((t for t in ts if t.state == TS.COMPLETE), key=lambda t: t.number)
        if not ok:
            continue
        if len(ts) - 1 >= space.stages.tune:
            done_why.append(f"{label}: {space.stages.tune} tuning runs")
            continue
        if converged([t.value for t in ok], sign):
            done_why.append(f"{label}: converged")
            continue
        base = ArchitectureSpec.model_validate(ok[0].user_attrs["spec_fixed"])
        (m,) = base.encoders
        values = tuning_values(space, base, modalities[m])
        if not values:
            done_why.append(f"{label}: nothing to tune")
            continue
        cost = statistics.median(float(t.user_attrs.get("trial_time_s") or 0.0) for t in ok)
        todo.append((cost, label, ok, base, values))
    if not todo:
        why = "; ".join(done_why) or "no trainable encoder choice"
        return 0, f"every encoder choice is done ({why})"
    queued, spent = 0, 0.0
    for cost, label, ok, base, values in sorted(todo, key=lambda x: x[0]):
        if spent + cost > left_s:
            continue
        spent += cost
        history = [(t.user_attrs.get(TUNED) or defaults_of(values), t.value) for t in ok]
        params = propose(history, values, direction, seed=len(ok) + zlib.crc32(label.encode()))
        spec = tuned_spec(base, params)
        st.enqueue_trial(
            {},
            user_attrs={
                "stage": UNIMODAL,
                "unimodal_label": label,
                "spec_fixed": spec.model_dump(mode="json"),
                TUNED: params,
            },
        )
        log.info("stage 1: tuning %s with %s", label, params)
        queued += 1
    if not queued:
        cheapest = min(x[0] for x in todo)
        return (
            0,
            f"no tuning run fits the {left_s:.0f} s left (the cheapest takes {cheapest:.0f} s)",
        )
    return queued, ""


__all__ = [
    "NO_GAIN_RUNS",
    "TUNED",
    "converged",
    "defaults_of",
    "enqueue_round",
    "propose",
    "tuned_spec",
    "tuning_values",
]
