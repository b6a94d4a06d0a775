"""MlflowTracker against a real ``mlflow server`` process and the default SQLite store."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from autofuse.storage.mlflow import (
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    MlflowTracker,
    default_tracking_uri,
    final_metrics,
)
from autofuse.testing.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trials_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trials")


@pytest.fixture(params=["server", "sqlite"])
def backend(request, trials_dir) -> str:
    if request.param == "server":
        return request.getfixturevalue("mlflow_server")
    return default_tracking_uri(trials_dir)


@pytest.fixture(autouse=True)
def _no_stray_stores(tmp_path, monkeypatch):
    """Nothing may land in the current directory (MLflow's ./mlflow.db or ./mlruns defaults)."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def study_name() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def trial_runs(c, study: str) -> dict[int, object]:
    exp = c.get_experiment_by_name(study)
    runs = c.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")
    return {int(r.data.tags[TRIAL_TAG]): r for r in runs}


def steps(c, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, round(m.value, 6)) for m in c.get_metric_history(run_id, key))


def load_spec(c, run_id: str, tmp: Path) -> dict:
    return json.loads(Path(c.download_artifacts(run_id, "spec.json", str(tmp))).read_text())


def test_default_tracking_uri(tmp_path):
    uri = default_tracking_uri(tmp_path / "trials")
    assert uri == f"sqlite:///{(tmp_path / 'trials').resolve().as_posix()}/mlflow.db"
    assert uri.startswith("sqlite:////")


def test_study_with_three_trials(backend, tmp_path):
    study = study_name()
    t = MlflowTracker(backend, study)
    assert t.available
    pid = t.start_study(
        {"dataset": "demo", "space": {"name": "tiny", "trials": 3}},
        {"metric": "accuracy", "direction": "maximize"},
    )
    assert pid
    rids = []
    for n in range(3):
        rid = t.start_trial(
            n,
            {"fusion.family": "early", "lr": 0.001 * (n + 1), "hidden": 64},
            {"autofuse.family": "early", "autofuse.method": "concat", "autofuse.point": "feature"},
        )
        rids.append(rid)
        for ep in (1, 2, 3):
            t.log_epoch(
                rid,
                ep,
                {
                    "accuracy": 0.5 + 0.1 * ep + 0.01 * n,
                    "macro_f1": 0.4 + 0.1 * ep,
                    "train_loss": 1.0 / ep,
                    "note": "not a number",
                },
            )
        killed = n == 1
        t.end_trial(
            rid,
            "KILLED" if killed else "FINISHED",
            final_metrics(
                {"accuracy": 0.9 + 0.01 * n, "macro_f1": 0.7, "train_loss": 0.3},
                {"accuracy": 0.85},
                n_params=1234,
                latency_ms=1.5,
            ),
            tags={
                "autofuse.encoders": {"image": "resnet18/frozen", "text": "minilm/frozen"},
                "autofuse.status": "FAIL" if killed else "COMPLETE",
                "autofuse.reason": "killed" if killed else None,
            },
            spec={"fusion": {"family": "early", "method": "concat"}, "trial": n},
        )
    t.end_study("FINISHED", {"best_value": 0.92})

    c = client(backend)
    exp = c.get_experiment_by_name(study)
    assert exp is not None
    parent = c.get_run(pid)
    assert parent.info.experiment_id == exp.experiment_id
    assert parent.info.status == "FINISHED" and parent.info.run_name == study
    assert parent.data.tags[ROLE_TAG] == "study" and parent.data.tags["metric"] == "accuracy"
    assert parent.data.params["space.name"] == "tiny" and parent.data.params["dataset"] == "demo"
    assert parent.data.metrics["best_value"] == pytest.approx(0.92)

    runs = trial_runs(c, study)
    assert sorted(runs) == [0, 1, 2]
    for n, run in runs.items():
        rid = run.info.run_id
        assert rid == rids[n]
        assert run.data.tags[PARENT_TAG] == pid
        assert run.info.run_name == f"trial-{n}"
        assert run.info.status == ("KILLED" if n == 1 else "FINISHED")
        assert run.data.params["lr"] == str(0.001 * (n + 1))
        assert run.data.params["fusion.family"] == "early"
        assert run.data.tags["autofuse.method"] == "concat"
        assert run.data.tags["autofuse.encoder.image"] == "resnet18/frozen"
        assert json.loads(run.data.tags["autofuse.encoders"])["text"] == "minilm/frozen"
        assert ("autofuse.reason" in run.data.tags) == (n == 1)
        # per-epoch history at step = epoch, then the final value at the last step, logged last
        hist = steps(c, rid, "val_accuracy")
        assert hist == [
            (1, round(0.6 + 0.01 * n, 6)),
            (2, round(0.7 + 0.01 * n, 6)),
            (3, round(0.8 + 0.01 * n, 6)),
            (3, round(0.9 + 0.01 * n, 6)),
        ]
        assert [s for s, _ in steps(c, rid, "train_loss")].count(1) == 1
        assert "val_note" not in run.data.metrics
        m = run.data.metrics
        assert m["val_accuracy"] == pytest.approx(0.9 + 0.01 * n)  # latest = final (best epoch)
        assert m["test_accuracy"] == pytest.approx(0.85)
        assert m["val_macro_f1"] == pytest.approx(0.7) and m["train_loss"] == pytest.approx(0.3)
        assert m["n_params"] == 1234 and m["latency_ms"] == pytest.approx(1.5)
        assert load_spec(c, rid, tmp_path)["trial"] == n

    # resume: a new tracker (another process or a later session) reuses the one parent run
    t2 = MlflowTracker(backend, study)
    assert t2.start_study({"dataset": "demo", "space": {"name": "tiny", "trials": 5}}, {}) == pid
    assert c.get_run(pid).info.status == "RUNNING"
    assert c.get_run(pid).data.params["space.trials"] == "3"  # params are immutable: first kept
    parents = c.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'study'")
    assert [r.info.run_id for r in parents] == [pid]
    t2.end_study()
    if backend.startswith("sqlite"):  # artifacts next to the store, not in the cwd
        assert (Path(backend[len("sqlite:///") :]).parent / "mlartifacts" / study).is_dir()


def test_mark_stale_runs_killed(backend):
    study = study_name()
    a = MlflowTracker(backend, study)
    a.start_study()
    dead = a.start_trial(0, {"lr": 0.1}, {})
    a.log_epoch(dead, 1, {"accuracy": 0.5})
    alive = a.start_trial(1, {}, {})
    # worker ``a`` is gone without ending its runs; a new worker cleans up
    b = MlflowTracker(backend, study)
    b.start_study()
    own = b.start_trial(2, {}, {})
    assert b.mark_stale_runs_killed(alive=[1]) == [dead]
    c = client(backend)
    assert c.get_run(dead).info.status == "KILLED"
    assert c.get_run(dead).data.tags["autofuse.reason"] == "killed"
    assert c.get_run(alive).info.status == "RUNNING"
    assert c.get_run(own).info.status == "RUNNING"
    assert c.get_run(b.parent_run_id).info.status == "RUNNING"
    assert b.mark_stale_runs_killed(alive=[1]) == []
    assert b.mark_stale_runs_killed() == [alive]
    b.end_trial(own, "FINISHED")


def test_kill_9_worker_leaves_run_running_then_marked_killed(mlflow_server):
    """A real worker process killed with SIGKILL: its run stays RUNNING until marked KILLED."""
    study = study_name()
    code = textwrap.dedent(f"""
        import sys, time
        from autofuse.storage.mlflow import MlflowTracker
        t = MlflowTracker({mlflow_server!r}, {study!r})
        t.start_study()
        rid = t.start_trial(0, {{"lr": 0.1}}, {{}})
        t.log_epoch(rid, 1, {{"accuracy": 0.5}})
        print(rid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        rid = proc.stdout.readline().strip()
        assert rid, "worker did not start its trial"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    c = client(mlflow_server)
    assert c.get_run(rid).info.status == "RUNNING"
    t = MlflowTracker(mlflow_server, study)
    t.start_study()
    assert t.mark_stale_runs_killed() == [rid]
    assert c.get_run(rid).info.status == "KILLED"


def test_unreachable_server_is_a_quick_no_op(tmp_path):
    import torch

    t0 = time.monotonic()
    t = MlflowTracker(f"http://127.0.0.1:{free_port()}", "nowhere")
    assert not t.available
    assert t.start_study({"a": 1}, {"b": 2}) is None
    rid = t.start_trial(0, {"lr": 0.1}, {"family": "early"})
    assert rid is None
    assert t.log_epoch(rid, 1, {"accuracy": 0.5}) is None
    assert t.log_epoch("0" * 32, 1, {"accuracy": 0.5}) is None
    assert (
        t.end_trial(rid, "FINISHED", {"val_accuracy": 0.5}, {"family": "early"}, {"x": 1}) is None
    )
    assert t.end_study("FINISHED", {"best_value": 1.0}) is None
    assert t.mark_stale_runs_killed() == []
    (tmp_path / "architecture.json").write_text("{}")
    assert t.log_best_model(torch.nn.Linear(2, 2), tmp_path / "architecture.json", "m") is None
    assert t.sync([{"number": 0, "status": "COMPLETE", "val_metrics": {"accuracy": 1.0}}]) == 0
    assert time.monotonic() - t0 < 10


def test_server_lost_mid_study_turns_tracking_off(mlflow_server):
    """A server that goes away after start-up: one warning, then every call is a no-op."""
    from mlflow import MlflowClient

    t = MlflowTracker(mlflow_server, study_name())
    t.start_study()
    assert t.available
    dead = f"http://127.0.0.1:{free_port()}"
    t.uri, t.client = dead, MlflowClient(dead)  # as if the server had died
    t0 = time.monotonic()
    assert t.start_trial(0, {"lr": 0.1}, {}) is None
    assert not t.available
    assert t.log_epoch("0" * 32, 1, {"accuracy": 0.5}) is None
    assert t.sync([{"number": 0, "status": "COMPLETE"}]) == 0
    assert time.monotonic() - t0 < 15


def record(n, status, *, rid=None, reason=None, epochs=3, spec=True):
    hist = [
        {"epoch": e, "accuracy": 0.5 + 0.1 * e, "macro_f1": 0.3 + 0.1 * e, "train_loss": 1 / e}
        for e in range(1, epochs + 1)
    ]
    return {
        "number": n,
        "status": status,
        "reason": reason,
        "mlflow_run_id": rid,
        "params": {"fusion.family": "late", "lr": 0.01},
        "spec": {"fusion": {"family": "late", "method": "mean"}, "n": n} if spec else None,
        "family": "late",
        "method": "mean",
        "point": "decision",
        "encoders": {"image": "resnet18/frozen"},
        "val_metrics": {"accuracy": 0.77, "macro_f1": 0.6, "train_loss": 0.2} if epochs else {},
        "test_metrics": {"accuracy": 0.7} if epochs else {},
        "history": hist,
        "n_params": 99,
        "latency_ms": 0.4,
        "train_time_s": 1.0,
        "epochs_run": epochs,
        "started_at": "2026-11-27T10:00:00+00:00",
        "finished_at": "2026-11-27T10:05:00+00:00",
    }


class AsRecord:
    """Stands in for ``autofuse.storage.history.TrialRecord`` (an object with ``to_dict``)."""

    def __init__(self, d: dict) -> None:
        self._d = d

    def to_dict(self) -> dict:
        return dict(self._d)


def test_sync_back_fills_missing_runs_idempotently(backend, tmp_path):
    study = study_name()
    t = MlflowTracker(backend, study)
    t.start_study()
    r0 = t.start_trial(0, {"lr": 0.01}, {})
    t.end_trial(r0, "FINISHED", {"val_accuracy": 0.7})
    other = MlflowTracker(backend, study)  # a dead worker's run, left RUNNING
    other.start_study()
    r5 = other.start_trial(5, {"lr": 0.01}, {})
    records = [
        record(0, "COMPLETE", rid=r0),  # present
        record(1, "COMPLETE"),  # never logged
        record(2, "PRUNED", rid="f" * 32, reason="pruned", epochs=2),  # id unknown to MLflow
        record(3, "RUNNING"),  # live: not ours to log
        AsRecord(record(4, "FAIL", reason="error", epochs=0, spec=False)),  # TrialRecord-like
        record(5, "COMPLETE", rid=r5),  # present but left RUNNING
        record(6, "FAIL", reason="killed", epochs=1),  # its worker died
    ]
    assert t.sync(records) == 4
    c = client(backend)
    runs = trial_runs(c, study)
    assert sorted(runs) == [0, 1, 2, 4, 5, 6]
    assert runs[0].info.run_id == r0 and runs[5].info.run_id == r5
    r1 = runs[1]
    assert r1.data.tags[PARENT_TAG] == t.parent_run_id and r1.info.run_name == "trial-1"
    assert r1.info.status == "FINISHED"
    tags = r1.data.tags
    assert tags["autofuse.family"] == "late" and tags["autofuse.point"] == "decision"
    assert tags["autofuse.encoder.image"] == "resnet18/frozen"
    assert json.loads(tags["autofuse.encoders"]) == {"image": "resnet18/frozen"}
    assert tags["autofuse.status"] == "COMPLETE" and "autofuse.reason" not in tags
    assert r1.data.params["lr"] == "0.01"
    hist = steps(c, r1.info.run_id, "val_accuracy")
    assert [s for s, _ in hist] == [1, 2, 3, 3] and (3, 0.8) in hist
    assert r1.data.metrics["val_accuracy"] == pytest.approx(0.77)  # final is the latest
    assert r1.data.metrics["test_accuracy"] == pytest.approx(0.7)
    assert r1.data.metrics["n_params"] == 99
    assert [s for s, _ in steps(c, r1.info.run_id, "train_loss")] == [1, 2, 3, 3]
    start = datetime.datetime(2026, 11, 27, 10, tzinfo=datetime.timezone.utc).timestamp() * 1000
    assert r1.info.start_time == start and r1.info.end_time == start + 300_000
    assert load_spec(c, r1.info.run_id, tmp_path)["n"] == 1
    assert runs[2].info.status == "FINISHED" and runs[2].data.tags["autofuse.reason"] == "pruned"
    assert runs[2].data.tags["autofuse.status"] == "PRUNED"
    assert runs[4].info.status == "FAILED" and runs[4].data.tags["autofuse.reason"] == "error"
    assert runs[6].info.status == "KILLED" and runs[6].data.tags["autofuse.reason"] == "killed"
    r5_now = c.get_run(r5)
    assert r5_now.info.status == "FINISHED"  # repaired, not duplicated
    assert r5_now.data.metrics["val_accuracy"] == pytest.approx(0.77)

    assert t.sync(records) == 0
    assert MlflowTracker(backend, study).sync(records) == 0
    assert len(trial_runs(c, study)) == 6


@pytest.mark.parametrize("backend_kind", ["server", "sqlite"])
def test_log_best_model_once_per_key(backend_kind, request, trials_dir):
    """The tracker logs the best model through the given logger (autofuse's pyfunc model, see
    tests/storage/test_mlflow_ui.py) once per key, and records its URI and version as tags."""
    uri = (
        request.getfixturevalue("mlflow_server")
        if backend_kind == "server"
        else default_tracking_uri(trials_dir)
    )
    study = study_name()
    t = MlflowTracker(uri, study)
    pid = t.start_study()
    calls = []

    def log_model(run_id: str) -> tuple[str, str | None]:
        calls.append(run_id)
        t.client.log_text(run_id, f"model {len(calls)}", f"m{len(calls)}.txt")
        return f"runs:/{run_id}/m{len(calls)}.txt", f"{study}/{len(calls)}"

    assert t.log_best_model(log_model, key="trial:3") == f"runs:/{pid}/m1.txt"
    assert t.log_best_model(log_model, key="trial:3") == f"runs:/{pid}/m1.txt"  # logged already
    assert calls == [pid]
    tags = client(uri).get_run(pid).data.tags
    assert tags["autofuse.best_model_key"] == "trial:3"
    assert tags["autofuse.registered_model"] == f"{study}/1"
    assert MlflowTracker(uri, study).log_best_model(log_model, key="trial:5").endswith("m2.txt")
    assert client(uri).get_run(pid).data.tags["autofuse.best_model_key"] == "trial:5"
    assert [f.path for f in client(uri).list_artifacts(pid)] == ["m1.txt", "m2.txt"]


def test_concurrent_workers_share_one_parent_on_fresh_sqlite(tmp_path):
    """Two worker processes start at once on a fresh SQLite store: one schema, one parent."""
    uri = default_tracking_uri(tmp_path / "trials")
    code = textwrap.dedent("""
        import sys
        from autofuse.storage.mlflow import MlflowTracker
        t = MlflowTracker(sys.argv[1], "conc")
        pid = t.start_study({"workers": 2}, {})
        rid = t.start_trial(int(sys.argv[2]), {"lr": 0.1}, {})
        t.log_epoch(rid, 1, {"accuracy": 0.5})
        t.end_trial(rid, "FINISHED", {"val_accuracy": 0.5})
        print(t.available, pid, flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    lines = [o.split() for o, _ in outs]
    assert all(av == "True" for av, _ in lines), outs
    assert len({pid for _, pid in lines}) == 1
    c = client(uri)
    runs = trial_runs(c, "conc")
    assert sorted(runs) == [0, 1]
    assert {r.data.tags[PARENT_TAG] for r in runs.values()} == {lines[0][1]}
