"""The history-consistency check: every trial of a study is in the same state in Optuna, in
autofuse's ``autofuse_trials`` and (when MLflow was on) in MLflow.

Optuna decides (the sampler and the trial count use it): COMPLETE / PRUNED / FAIL / RUNNING there
must be the record's status, and the trial's MLflow run must have the matching run status
(``run_status``: COMPLETE and PRUNED -> FINISHED, FAIL -> FAILED, or KILLED for a killed or
interrupted trial; RUNNING -> RUNNING) and the same ``autofuse.status`` tag. A queued trial
(WAITING) has no record yet.
"""

from __future__ import annotations

import optuna

from autofuse.storage.history import HistoryStore


def history_problems(url: str, study: str, mlflow_uri: str | None = None) -> list[str]:
    """Every disagreement, one line each (empty: consistent)."""
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    recs = {r.number: r for r in HistoryStore(url, create=False).trials(study)}
    runs = _mlflow_runs(mlflow_uri, study) if mlflow_uri else None
    problems = []
    for t in trials:
        state, rec = t.state.name, recs.pop(t.number, None)
        if state == "WAITING":
            if rec is not None:
                problems.append(f"trial {t.number}: queued in Optuna, {rec.status} in autofuse")
            continue
        if rec is None:
            problems.append(f"trial {t.number}: {state} in Optuna, no autofuse record")
            continue
        if rec.status != state:
            problems.append(f"trial {t.number}: {state} in Optuna, {rec.status} in autofuse")
        if runs is None:
            continue
        run = runs.get(rec.mlflow_run_id or "")
        if run is None:
            problems.append(f"trial {t.number}: no MLflow run ({rec.mlflow_run_id})")
            continue
        want = "RUNNING" if state == "RUNNING" else _run_status(state, rec.reason)
        if run.info.status != want:
            problems.append(
                f"trial {t.number}: {state} ({rec.reason}) in Optuna, run {run.info.status} "
                f"in MLflow (expected {want})"
            )
        tag = run.data.tags.get("autofuse.status")
        if state != "RUNNING" and tag != state:
            problems.append(f"trial {t.number}: {state} in Optuna, autofuse.status={tag} in MLflow")
    problems += [f"trial {n}: {r.status} in autofuse, not in Optuna" for n, r in recs.items()]
    return problems


def assert_consistent(url: str, study: str, mlflow_uri: str | None = None) -> None:
    problems = history_problems(url, study, mlflow_uri)
    assert not problems, f"study {study}: trial states disagree:\n" + "\n".join(problems)


def _run_status(state: str, reason: str | None) -> str:
    from autofuse.storage.mlflow import run_status  # imports MLflow: only where it was on

    return run_status(state, reason)


def _mlflow_runs(uri: str, study: str) -> dict[str, object]:
    from mlflow.tracking import MlflowClient  # only where MLflow was on

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return {}
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`autofuse.role` = 'trial'", max_results=5000
    )
    return {r.info.run_id: r for r in runs}
