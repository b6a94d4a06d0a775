"""On a real GPU: several fusion families train on CUDA, mixed precision against float32, raw
inputs batched into page-locked memory, a real out-of-memory error (beyond a worker's share of a
shared device) that ends one trial as ``oom`` while the other worker's trials finish, and four
workers on one device finishing a study with the exact trial count.

Run with ``pytest -m gpu`` on a machine with CUDA (``benchmarks/gpu_run.sh`` does it); without a
GPU every test here is skipped (CI machines have none: this is not a failure there).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from test_gpu_features import AMP_CASES, amp_against_fp32

from autofuse.data import Dataset
from autofuse.encoders import EncoderSpec, prepare_modality
from autofuse.runner import PinnedBatches, trial_inputs
from autofuse.storage.history import HistoryStore
from autofuse.storage.mlflow import TRIAL_TAG
from autofuse.study import search
from autofuse.testing.faults import ExhaustMemory
from autofuse.train import TrainData, amp_dtype, make_batch
from autofuse.workers import plan_devices

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device and none is visible (GPU tests run only on a GPU machine)",
    ),
]

SPACES = Path(__file__).resolve().parents[1] / "spaces"
TINY, TINY_ALL = str(SPACES / "tiny.yaml"), str(SPACES / "tiny_all.yaml")
CUDA = "cuda:0"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _records(tmp_path: Path, study: str) -> dict:
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    return {r.number: r for r in HistoryStore(url).trials(study)}


def _finished(tmp_path: Path, study: str) -> list:
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    return optuna.load_study(study_name=study, storage=url).get_trials(states=FINISHED)


def test_several_families_train_on_cuda(demo_dataset, tmp_path):
    """A real search on CUDA over all five families: every trial completes on the GPU with its
    peak memory recorded (SQL and MLflow), and the study's peaks size the default workers."""
    mlflow_uri = f"sqlite:///{tmp_path / 'trials' / 'mlflow.db'}"
    search(
        demo_dataset,
        study="families",
        trials=10,
        space=TINY_ALL,
        workdir=tmp_path,
        progress=False,
        device=CUDA,
        mlflow_uri=mlflow_uri,
        report=False,
    )
    recs = _records(tmp_path, "families")
    assert len(recs) == 10
    assert all(r.status == "COMPLETE" for r in recs.values()), {
        n: (r.status, r.reason, r.error) for n, r in recs.items()
    }
    assert {r.device for r in recs.values()} == {CUDA}
    assert len({r.family for r in recs.values()}) >= 4
    assert all(r.peak_gpu_mb and r.peak_gpu_mb > 0 for r in recs.values())
    from mlflow.tracking import MlflowClient  # optional heavy import: only this test reads MLflow

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("families")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trial_runs = [r for r in runs if TRIAL_TAG in r.data.tags]
    assert len(trial_runs) == 10
    assert all(r.data.metrics.get("peak_gpu_mb", 0) > 0 for r in trial_runs)
    # small trials on a large GPU: by default as many workers per GPU as SQLite takes
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    n_gpu = torch.cuda.device_count()
    devices = plan_devices(None, None, study="families", storage=url)
    assert len(devices) == max(1, 4 // n_gpu) * n_gpu


@pytest.mark.parametrize("family, method, params", AMP_CASES, ids=[c[1] for c in AMP_CASES])
def test_amp_matches_fp32_on_cuda(family, method, params):
    if amp_dtype(torch.device(CUDA), amp=True) is None:
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no native bfloat16")
    amp_against_fp32(family, method, params, torch.device(CUDA))


def test_amp_search_on_cuda(demo_dataset, tmp_path):
    search(
        demo_dataset,
        study="amp",
        trials=3,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        device=CUDA,
        amp=True,
        mlflow_uri="off",
        report=False,
    )
    recs = _records(tmp_path, "amp")
    assert [r.status for r in recs.values()] == ["COMPLETE"] * 3


def test_raw_inputs_are_batched_into_pinned_memory(demo_dataset):
    ds = Dataset.load(demo_dataset)
    prepared = prepare_modality(ds, "image", EncoderSpec(name="image.small_cnn", mode="scratch"))
    idx = torch.as_tensor([5, 1, 7, 7, 0])
    x, present = PinnedBatches(prepared).batch(idx)
    ref_x, ref_present = prepared.batch(idx)
    assert x.is_pinned() and present.is_pinned()
    assert torch.equal(x, ref_x) and torch.equal(present, ref_present)
    device = torch.device(CUDA)
    data = TrainData.from_dataset(ds, inputs={"image": prepared})
    wrapped = trial_inputs(data.inputs, device)
    assert isinstance(wrapped["image"], PinnedBatches)
    batch = make_batch(data.with_inputs(wrapped), idx, device)
    got_x, got_present = batch["image"]
    assert got_x.device.type == "cuda"
    assert torch.equal(got_x.cpu(), ref_x) and torch.equal(got_present.cpu(), ref_present)


def test_out_of_memory_on_a_shared_gpu_ends_one_trial(demo_dataset, tmp_path):
    """Two workers share the GPU (each capped at 47.5% of it); trial 2 allocates 60% of the
    device: a real CUDA out-of-memory error in that worker only. It ends as pruned (oom) after
    its retry; the other trials, both workers', finish."""
    search(
        demo_dataset,
        study="oomgpu",
        trials=6,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        workers=2,
        devices=f"{CUDA},{CUDA}",
        mlflow_uri="off",
        max_faults=10,
        report=False,
        hooks=[ExhaustMemory(numbers=(2,), fraction=0.6)],
    )
    recs = _records(tmp_path, "oomgpu")
    finished = _finished(tmp_path, "oomgpu")
    assert len(finished) == 6
    assert (recs[2].status, recs[2].reason) == ("PRUNED", "oom")
    assert "out of memory" in (recs[2].error or "").lower()
    others = [r for n, r in recs.items() if n != 2 and r.status in ("COMPLETE", "PRUNED")]
    assert len(others) == 5 and all(r.status == "COMPLETE" for r in others)
    assert len({r.worker for r in others}) == 2  # both workers finished trials
    assert recs[2].worker in {r.worker for r in others}  # the worker went on after its oom


def test_four_workers_on_one_gpu(demo_dataset, tmp_path):
    search(
        demo_dataset,
        study="four",
        trials=12,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        workers=4,
        devices=CUDA,
        mlflow_uri="off",
        report=False,
    )
    finished = _finished(tmp_path, "four")
    assert len(finished) == 12
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    trials = optuna.load_study(study_name="four", storage=url).trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    recs = _records(tmp_path, "four")
    assert len(recs) == 12 and all(r.status == "COMPLETE" for r in recs.values())
    assert {r.device for r in recs.values()} == {CUDA}
    assert len({r.worker for r in recs.values()}) >= 2
    assert all(r.peak_gpu_mb for r in recs.values())
