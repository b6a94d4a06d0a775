"""Workers that share no disk: checkpoints, finalists, the best model and summary.json go through
the study's artifact store (``--artifacts``), the local work folder is a cache in front of it.

Fast tests on one machine, with several work folders and a ``file://`` store: the checkpoint
store's mirroring, a trial stopped in work folder A resumed by a worker in work folder B from A's
epoch checkpoint, ``report`` and ``export`` from an empty work folder C. The slow test runs the
same on two hosts that share nothing but a network (Linux network namespaces, PostgreSQL and an
``mlflow server`` with an artifact destination in the root namespace)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from autofuse.checkpoints import CheckpointStore
from autofuse.cli import main
from autofuse.errors import ConfigError
from autofuse.export import export_trial
from autofuse.model import build_model
from autofuse.options import SearchOptions
from autofuse.predict import EXPORT_KEY
from autofuse.report import write_report
from autofuse.storage.artifacts import open_artifacts
from autofuse.storage.history import HistoryStore
from autofuse.study import search
from autofuse.testing.faults import rot_checkpoint
from autofuse.trial import TrialExecution, TrialHook
from autofuse.workers import run_worker, worker_config_from_study

SPACES = Path(__file__).parents[1] / "spaces"
SLOW_EPOCHS = str(SPACES / "slow_epochs.yaml")  # 8 epochs, no early stop, no pruning


# ---- the checkpoint store in front of an artifact store -----------------------------------------


def _state(epoch: int) -> dict:
    w = {"w": torch.ones(3) * epoch}
    return {
        "model": w,
        "optimizer": {"state": {}, "param_groups": []},
        "generator": torch.zeros(4, dtype=torch.uint8),
        "epoch": epoch,
        "best_state": w,
        "best_val": 0.5,
        "best_epoch": epoch,
        "history": [{"epoch": e, "val_loss": 1.0} for e in range(1, epoch + 1)],
        "stale": 0,
    }


def test_running_checkpoint_written_on_one_host_is_read_on_another(tmp_path):
    store = open_artifacts(str(tmp_path / "store"))
    a = CheckpointStore(tmp_path / "A" / "trials" / "s", store)
    b = CheckpointStore(tmp_path / "B" / "trials" / "s", store)
    a.save_running(4, _state(3))
    assert (tmp_path / "store" / "s" / "running" / "trial_4.pt").is_file()
    got = b.load_running(4)
    assert (
        got is not None and got["epoch"] == 3 and torch.equal(got["model"]["w"], torch.ones(3) * 3)
    )
    assert b.running_path(4).is_file()  # cached locally now
    b.discard_running(4)  # the retry finished: gone here and in the store
    assert not (tmp_path / "store" / "s" / "running" / "trial_4.pt").exists()
    assert CheckpointStore(tmp_path / "C" / "trials" / "s", store).load_running(4) is None


def test_damaged_checkpoint_in_the_store_is_one_warning_and_epoch_1(tmp_path, caplog):
    """Issue 12's hardening holds for a checkpoint read from the store: one warning naming the
    file, and the retry starts from epoch 1."""
    store = open_artifacts(str(tmp_path / "store"))
    a = CheckpointStore(tmp_path / "A" / "trials" / "s", store)
    a.save_running(2, _state(2))
    remote = tmp_path / "store" / "s" / "running" / "trial_2.pt"
    rot_checkpoint(remote, remote)
    b = CheckpointStore(tmp_path / "B" / "trials" / "s", store)
    with caplog.at_level(logging.WARNING, logger="autofuse.checkpoints"):
        assert b.load_running(2) is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].endswith("the trial starts from epoch 1")
    assert str(b.running_path(2)) in warned[0]


def _spec(ds):
    """A small two-modality spec on the demo dataset (tabular + text, trained from scratch)."""
    from autofuse.spec import ArchitectureSpec, EncoderSpec, FusionSpec, HeadSpec, TrainingSpec

    kinds = {ds.modality_type(m): m for m in ds.modality_names}
    return ArchitectureSpec(
        encoders={
            kinds["tabular"]: EncoderSpec(
                name="tabular.mlp", mode="scratch", dim=16, params={"hidden": 32}
            ),
            kinds["text"]: EncoderSpec(
                name="text.small", mode="scratch", dim=16, params={"arch": "conv", "depth": 1}
            ),
        },
        fusion=FusionSpec(
            family="encoder_decoder", method="decision", point="late", params={"hidden": 32}
        ),
        head=HeadSpec(fused_dim=16),
        training=TrainingSpec(lr=1e-3, batch_size=16, epochs=1),
    )


def test_finalists_and_best_mirror_the_store(tmp_path, demo_dataset):
    from autofuse.data import Dataset
    from autofuse.runner import CandidateRunner

    ds = Dataset.load(demo_dataset)
    spec = _spec(ds)
    store = open_artifacts(str(tmp_path / "store"))
    a = CheckpointStore(tmp_path / "A" / "trials" / "s", store)
    b = CheckpointStore(tmp_path / "B" / "trials" / "s", store)
    runner = CandidateRunner(ds, tmp_path / "A" / "trials" / "cache", torch.device("cpu"))
    _, info = runner.prepare(spec)
    model = build_model(spec, info, skip_frozen=True)
    for n in (1, 2):
        a.save_finalist(n, model, spec, info)
        a.save_outputs(n, val=torch.zeros(3).numpy(), test=torch.ones(3).numpy())
    assert b.finalists() == {1, 2}  # listed from the store, nothing local on B
    assert set(b.readable_outputs([1, 2, 3])) == {1, 2}
    spec_b, _, state_b = b.load_finalist(2)
    assert spec_b == spec and state_b.keys() == a.load_finalist(2)[2].keys()
    a.prune({2})  # mirrored: trial 1's files leave the store too
    assert not list((tmp_path / "store" / "s" / "checkpoints").glob("trial_1.*"))
    c = CheckpointStore(tmp_path / "C" / "trials" / "s", store)
    assert c.finalists() == {2}
    a.export_best(2)
    assert (tmp_path / "store" / "s" / "best" / "model.safetensors").is_file()
    best = c.load_best()
    assert best is not None and best[0] == spec


def test_stage1_encoder_trained_on_one_host_is_used_on_another(tmp_path, demo_dataset):
    """A stage-1 encoder (weights, features, record) lands in ``cache/<key>`` of the store; a
    runner on another host with an empty feature cache finds it there."""
    from autofuse.data import Dataset
    from autofuse.runner import CandidateRunner

    ds = Dataset.load(demo_dataset)
    spec = _spec(ds)
    m, espec = next(iter(spec.encoders.items()))
    store = open_artifacts(str(tmp_path / "store"))
    cpu = torch.device("cpu")
    a = CandidateRunner(ds, tmp_path / "A" / "trials" / "cache", cpu, artifacts=store)
    _, info = a.prepare(spec)
    encoder = build_model(spec, info, skip_frozen=True).encoders[m]
    a.store_stage1("k1", m, espec, encoder, {"trial": 0, "val": 0.5})
    assert (tmp_path / "store" / "cache" / "k1" / "stage1.json").is_file()

    b = CandidateRunner(ds, tmp_path / "B" / "trials" / "cache", cpu, artifacts=store)
    assert b.stage1_record("k1") == {"trial": 0, "val": 0.5}
    assert len(b.stage1_features("k1")) == len(a.stage1_features("k1"))
    frozen = spec.model_copy(
        update={"encoders": {m: espec.model_copy(update={"mode": "frozen", "source": "k1"})}}
    )
    weights = b.source_state(frozen)
    assert weights and all(k.startswith(f"encoders.{m}.") for k in weights)
    assert b.stage1_record("nokey") is None  # absent here and in the store


# ---- options -------------------------------------------------------------------------------------


def test_artifacts_option_is_stored_and_a_bare_path_is_a_file_uri(tmp_path):
    opts = SearchOptions.parse(artifacts=str(tmp_path / "store"))
    assert opts.artifacts == (tmp_path / "store").resolve().as_uri()
    stored = opts.stored()
    assert stored["artifacts"] == opts.artifacts
    assert SearchOptions.from_stored(stored).artifacts == opts.artifacts


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("ftp://host/x", "not an artifact store URI"),
        ("mlflow-artifacts://127.0.0.1:9/x", "cannot reach it"),
    ],
)
def test_a_bad_or_unreachable_store_is_one_line_before_anything_is_written(
    uri, says, tmp_path, demo_dataset
):
    work = tmp_path / "w"
    r = CliRunner().invoke(
        main,
        ["search", str(demo_dataset), "--study", "s", "--space", str(SPACES / "tiny.yaml"),
         "--artifacts", uri, "--workdir", str(work), "--no-progress", "--mlflow-uri", "off"],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --artifacts") and says in lines[0]
    assert not (work / "trials").exists()


# ---- a trial resumed from another work folder's checkpoint ---------------------------------------


@dataclass
class StopAfterCheckpoint(TrialHook):
    """Ctrl-C in trial ``number`` right after its epoch-``epoch`` checkpoint: the trial is queued
    to resume (``retry_of``) and the search stops, as a user stopping it would."""

    number: int
    epoch: int = 2

    def on_checkpoint(self, ex: TrialExecution, state: dict) -> None:
        if ex.number == self.number and state["epoch"] >= self.epoch:
            raise KeyboardInterrupt("test: stop after the checkpoint")


def test_worker_in_another_work_folder_resumes_from_the_store_then_report_and_export(
    tmp_path, demo_dataset
):
    """Work folders A, B and C share only the database and a ``file://`` store: trial 1 stops in
    A after epoch 2; a worker in B resumes it from A's checkpoint (read from the store); a search
    in A finishes the study (its best model fetched from the store); ``report`` and ``export``
    run from the empty folder C."""
    url = f"sqlite:///{tmp_path / 'db' / 'autofuse.db'}"
    (tmp_path / "db").mkdir()
    store = tmp_path / "store"
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    common = dict(
        storage=url, space=SLOW_EPOCHS, mlflow_uri="off", progress=False, report=False,
        checkpoint_every_s=0, artifacts=str(store), heartbeat_interval=1,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        search(
            demo_dataset, study="s", trials=3, workdir=a, hooks=[StopAfterCheckpoint(1)], **common
        )
    assert (store / "s" / "running" / "trial_1.pt").is_file()  # uploaded after its local write

    with pytest.raises(ConfigError, match=r"^--artifacts .*cannot reach it"):  # checked first
        worker_config_from_study(
            "s", url, workdir=str(b), artifacts="mlflow-artifacts://127.0.0.1:9/x"
        )
    cfg = worker_config_from_study("s", url, workdir=str(b), device="cpu")
    assert cfg.options.artifacts == store.resolve().as_uri()  # found in the study
    run_worker(cfg)

    recs = {t.number: t for t in HistoryStore(url).trials("s")}
    retry = next(t for t in recs.values() if t.retry_of == 1)
    assert retry.status == "COMPLETE" and retry.resumed_from_epoch == 2
    assert [h["epoch"] for h in retry.history] == list(range(1, 9))
    assert sum(t.status == "COMPLETE" for t in recs.values()) == 3
    assert not (store / "s" / "running" / "trial_1.pt").exists()  # discarded in the store too
    assert (b / "trials" / "s" / "checkpoints" / f"trial_{retry.number}.safetensors").is_file()

    res = search(demo_dataset, study="s", trials=3, workdir=a, **common)  # A finishes the study
    assert res.summary["trials"]["completed"] == 3
    assert (store / "s" / "best" / "model.safetensors").is_file()
    assert (store / "s" / "summary.json").is_file()

    # C: an empty work folder, the database URL and the study name only
    out = write_report("s", workdir=c, storage=url, dataset=demo_dataset, device="cpu")
    data = json.loads(Path(out["data"]).read_text())
    assert data["robustness"] and data["robustness"]["finalists"], data.get("robustness_note")
    assert data["wall_time_s"] is not None  # summary.json read from the store
    exp = export_trial("s", c / "export", workdir=c, storage=url)
    assert (exp.out / "model.safetensors").is_file()
    assert exp.trial == res.summary["best_trial"]


# ---- hosts that share nothing but a network -----------------------------------------------------

#: the first host holds trial HELD after its epoch-2 checkpoint until it is killed
HELD = 1
N_TRIALS = 3

HOST_A_RUN = """
import sys
from autofuse.study import search
from autofuse.testing.faults import HoldTrial
dataset, work, storage, mlflow_uri, artifacts, marker = sys.argv[1:]
search(dataset, study="sn", trials={n}, space={space!r}, workdir=work, storage=storage,
       mlflow_uri=mlflow_uri, artifacts=artifacts, heartbeat_interval=1, progress=False,
       report=False, checkpoint_every_s=0, device="cpu",
       hooks=[HoldTrial(marker, number={held}, epoch=2)])
"""


def _run(host, argv: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(host.cmd(argv), env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(argv[:4])}...: {r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_hosts_that_share_nothing_resume_from_the_artifact_store(tmp_path, demo_dataset):
    """Hosts A, B and C (network namespaces on a private bridge made here) share no folder: each
    has its own copy of the dataset and its own work folder; they reach PostgreSQL (through a
    relay on the bridge) and an ``mlflow server`` with an artifact destination, both in the root
    namespace on the bridge address. A is killed (-9) mid-trial after its epoch-2 checkpoint;
    B's ``autofuse worker`` retries that trial from A's checkpoint, read from the artifact
    store; C makes the report and the export from an empty work folder."""
    from hosts import GATEWAY, TcpRelay, private_lan
    from tests_storage_db import fresh_database

    from autofuse.testing.mlflow_server import start_mlflow_server, stop_mlflow_server

    t0 = time.monotonic()
    with private_lan(3) as (ha, hb, hc):
        url, drop = fresh_database("postgresql")
        relay = TcpRelay(GATEWAY, ("127.0.0.1", 5432))
        relay.start()
        server = None
        try:
            mlflow_uri, server = start_mlflow_server(tmp_path / "mlflow", host=GATEWAY)
            artifacts = f"mlflow-artifacts://{mlflow_uri.split('//', 1)[1]}/autofuse"
            storage = url.replace("127.0.0.1:5432", f"{GATEWAY}:{relay.port}")
            folders = {}
            for h in ("A", "B", "C"):  # each host: its own dataset copy and work folder
                root = tmp_path / h
                shutil.copytree(demo_dataset, root / "data")
                folders[h] = (root / "data", root / "work")
            env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
            env.pop("AUTOFUSE_HOME", None)

            # host A: a search, killed -9 while trial HELD is held after its epoch-2 checkpoint
            marker = tmp_path / "held"
            script = HOST_A_RUN.format(n=N_TRIALS, space=SLOW_EPOCHS, held=HELD)
            data_a, work_a = folders["A"]
            proc = subprocess.Popen(
                ha.cmd([sys.executable, "-c", script, str(data_a), str(work_a), storage,
                        mlflow_uri, artifacts, str(marker)]),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                while not (marker.exists() and marker.read_text()):
                    assert proc.poll() is None, proc.stderr.read()[-3000:]
                    assert time.monotonic() - t0 < 150, "the held trial never reached epoch 2"
                    time.sleep(0.1)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
            hs = HistoryStore(url)
            before = {r.number: r for r in hs.trials("sn") if r.status in ("COMPLETE", "PRUNED")}
            assert sorted(before) == list(range(HELD))
            assert hs.trials("sn")[HELD].status == "RUNNING"  # nobody told the database
            time.sleep(5)  # > the grace period (4 heartbeats of 1 s): the held trial is stale

            # host B: one more worker, with no way to see A's folder
            data_b, work_b = folders["B"]
            _run(hb, [sys.executable, "-m", "autofuse.cli", "worker", "--study", "sn",
                      "--storage", storage, "--dataset", str(data_b), "--workdir", str(work_b),
                      "--device", "cpu"], env)  # fmt: skip

            recs = {t.number: t for t in HistoryStore(url).trials("sn")}
            for n, r in before.items():  # zero finished trials lost or changed
                assert (recs[n].status, recs[n].value) == (r.status, r.value)
            assert (recs[HELD].status, recs[HELD].reason) == ("FAIL", "killed")
            (retry,) = [t for t in recs.values() if t.retry_of == HELD]
            assert retry.status == "COMPLETE" and retry.worker != recs[HELD].worker
            assert retry.resumed_from_epoch is not None and retry.resumed_from_epoch >= 2
            assert [h["epoch"] for h in retry.history] == list(range(1, 9))
            finished = [t for t in recs.values() if t.status in ("COMPLETE", "PRUNED")]
            assert len(finished) == N_TRIALS

            # host C: report and export from an empty work folder
            data_c, work_c = folders["C"]
            cli = [sys.executable, "-m", "autofuse.cli"]
            _run(hc, [*cli, "report", "--study", "sn", "--storage", storage, "--dataset",
                      str(data_c), "--workdir", str(work_c), "--device", "cpu"], env)  # fmt: skip
            data = json.loads((work_c / "reports" / "sn" / "report.json").read_text())
            assert data["robustness"] and data["robustness"]["finalists"]
            _run(hc, [*cli, "export", "--study", "sn", "--storage", storage, "--dataset",
                      str(data_c), "--workdir", str(work_c), "--out", str(work_c / "model")], env)  # fmt: skip
            assert (work_c / "model" / "model.safetensors").is_file()
            best = optuna.load_study(study_name="sn", storage=url).best_trial
            exported = json.loads((work_c / "model" / "architecture.json").read_text())
            assert exported[EXPORT_KEY]["trial"] == best.number
            print(
                f"share-nothing: {len(finished)} finished trials, trial {HELD} killed on "
                f"{ha.address}, retried as trial {retry.number} on {hb.address} from epoch "
                f"{retry.resumed_from_epoch}; best trial {best.number}; report and export on "
                f"{hc.address}; {time.monotonic() - t0:.0f} s"
            )
        finally:
            if server is not None:
                stop_mlflow_server(server)
            relay.close()
            drop()
