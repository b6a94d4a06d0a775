"""The GPU features, checked on the CPU: workers per device (the decision and the device plan),
mixed precision against float32 (bfloat16 autocast works on the CPU too), the float32 islands of
the fusion methods, the out-of-memory retry with half the batch size, and the peak-memory record.
tests/gpu/test_gpu.py runs the same on a real GPU."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from test_train_loop import fit_kwargs, make_case, new_model

from autofuse.errors import ConfigError
from autofuse.fusion.constraint import LowRankTensorFusion, TensorFusion, alignment_loss
from autofuse.fusion.generative import MVAEFusion
from autofuse.model import MultimodalModel
from autofuse.runner import trial_inputs
from autofuse.spec import FusionSpec
from autofuse.storage.history import HistoryStore, head_revision
from autofuse.study import search
from autofuse.testing import fake_features, fake_shapes
from autofuse.testing.faults import InjectFaults
from autofuse.train import amp_dtype, fit
from autofuse.trial import TrialExecution, TrialHook
from autofuse.workers import (
    device_shares,
    limit_device_memory,
    plan_devices,
    workers_per_device,
)

TINY = str(Path(__file__).parent / "spaces" / "tiny.yaml")
CPU = torch.device("cpu")

# ---- workers per device ---------------------------------------------------------------------


def test_workers_per_device_from_memory_and_measured_peaks():
    assert workers_per_device(80_000, []) == 1  # no history: one
    assert workers_per_device(80_000, [0.0, float("nan")]) == 1  # nothing measured
    # floor(0.8 * 80000 / (1.5 * 4000)) = 10, capped at 8
    assert workers_per_device(80_000, [4000, 3000, 5000]) == 8
    assert workers_per_device(80_000, [4000, 3000, 5000], cap=4) == 4
    # the median, not the mean: one huge trial does not decide
    assert workers_per_device(24_000, [2000, 2000, 40_000]) == 6
    assert workers_per_device(16_000, [20_000]) == 1  # larger than the device: still one


def test_plan_devices_repeats_devices_per_worker_count():
    assert plan_devices(None, "cpu", 3) == ["cpu"] * 3
    assert plan_devices(4, "cpu") == ["cpu"] * 4
    assert plan_devices(None, None, 2) == ["cpu", "cpu"]  # no GPU here: CPU processes
    with pytest.raises(ConfigError, match="no GPU is visible"):
        plan_devices(None, "cuda:0,cuda:0")
    with pytest.raises(ConfigError, match="not device names"):
        plan_devices(None, "gpu0")
    assert device_shares(["cuda:0", "cuda", "cuda:1", "cpu"]) == [2, 2, 1, 1]
    assert limit_device_memory("cpu", 4) is None  # only a shared CUDA device is capped


def test_default_workers_per_gpu_come_from_the_study_history(tmp_path, monkeypatch):
    """With a GPU (faked here) and nothing said, K per GPU is sized from the study's peaks."""
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 1)
    props = SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: props)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert plan_devices(None, None, study="s", storage=url) == ["cuda:0"]  # no history yet
    hs = HistoryStore(url)
    hs.upsert_study("s")
    for n, peak in enumerate((3000.0, 4000.0, 5000.0)):
        hs.record_trial("s", n, status="COMPLETE", peak_gpu_mb=peak)
    hs.record_trial("s", 3, status="PRUNED", reason="oom", peak_gpu_mb=70_000.0)
    # 10 fit, but a SQLite study takes at most 4 workers
    assert plan_devices(None, None, study="s", storage=url) == ["cuda:0"] * 4
    assert plan_devices(None, None, 2, study="s", storage=url) == ["cuda:0"] * 2  # as asked
    assert plan_devices(3, None, study="s", storage=url) == ["cuda:0"] * 3
    assert plan_devices(None, "cuda:0,cuda:0", study="s", storage=url) == ["cuda:0"] * 2


def test_peak_memory_is_a_trial_record_field(tmp_path):
    assert head_revision() >= "0004"
    hs = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}")
    hs.upsert_study("s")
    hs.record_trial("s", 0, status="COMPLETE", peak_gpu_mb=123.5)
    hs.record_trial("s", 1, status="COMPLETE")
    a, b = hs.trials("s")
    assert (a.peak_gpu_mb, b.peak_gpu_mb) == (123.5, None)
    assert a.to_dict()["peak_gpu_mb"] == 123.5


# ---- mixed precision ------------------------------------------------------------------------


def test_amp_is_off_on_the_cpu_unless_asked_for():
    assert amp_dtype(CPU, amp=True) is None  # --amp on a CPU worker: float32
    assert amp_dtype(CPU, amp=False, on_cpu=True) is None
    assert amp_dtype(CPU, amp=True, on_cpu=True) == torch.bfloat16


def test_float32_islands_under_autocast():
    """Tensor products, the MVAE's product of experts and KL term, and soft CCA stay float32."""
    shapes = fake_shapes(3)
    feats = fake_features(shapes, batch=6)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = torch.randn(6, 8), torch.randn(6, 8)
        loss, n = alignment_loss(a, b, torch.ones(6, dtype=torch.bool), "cca")
        assert loss.dtype == torch.float32 and n.dtype == torch.float32
        for cls in (TensorFusion, LowRankTensorFusion):
            out = cls(shapes, out_dim=4)(feats)
            assert out.z.dtype == torch.float32, cls.__name__
        mvae = MVAEFusion(shapes, out_dim=4)
        mu, logvar = torch.randn(6, 3, 8).bfloat16(), torch.randn(6, 3, 8).bfloat16()
        mu_j, logvar_j = mvae.product_of_experts(mu, logvar, torch.ones(6, 3, dtype=torch.bool))
        assert mu_j.dtype == logvar_j.dtype == torch.float32
        out = mvae(feats)
        assert out.aux_loss.dtype == torch.float32 and torch.isfinite(out.aux_loss)


AMP_CASES = [
    ("constraint", "tensor", {"rank_dim": 4, "hidden": 16}),
    ("constraint", "low_rank_tensor", {"rank": 3, "hidden": 16}),
    ("generative", "mvae", {"latent": 8, "hidden": 16}),
    ("constraint", "coordinated", {"alignment": "cca", "hidden": 16, "shared": 16}),
    ("encoder_decoder", "early", {"hidden": 16, "depth": 2}),
]


def amp_against_fp32(family: str, method: str, params: dict, device: torch.device) -> None:
    """One fit with bfloat16 autocast against one in float32 on cached features: finite, and the
    validation metric within 5% (also used by tests/gpu/test_gpu.py on CUDA)."""
    spec, info, data = make_case("regression", "late")
    fusion = FusionSpec(family=family, method=method, point="late", params=params)
    spec = spec.model_copy(update={"fusion": fusion})
    data = data.with_inputs(trial_inputs(data.inputs, device))  # as a trial: features moved once
    kw = {**fit_kwargs(spec), "device": device}
    runs = {}
    for amp in (False, True):
        torch.manual_seed(1)
        model = new_model(spec, info).to(device)
        dtypes: set[torch.dtype] = set()
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        hook = first.register_forward_hook(lambda m, i, o, d=dtypes: d.add(o.dtype))
        res = fit(model, data, **kw, amp=amp, amp_on_cpu=True)
        hook.remove()
        runs[amp] = res
        assert (torch.bfloat16 in dtypes) is amp, (amp, dtypes)  # autocast really ran
        assert all(math.isfinite(h["train_loss"]) for h in res.history)
        assert all(math.isfinite(v) for v in res.val_metrics.values())
        assert all(torch.isfinite(p).all() for p in model.parameters())
    fp32, amp = runs[False].val_metrics["rmse"], runs[True].val_metrics["rmse"]
    assert abs(amp - fp32) <= 0.05 * abs(fp32), (fp32, amp)


@pytest.mark.parametrize("family, method, params", AMP_CASES, ids=[c[1] for c in AMP_CASES])
def test_amp_matches_fp32_on_the_cpu(family, method, params):
    amp_against_fp32(family, method, params, CPU)


# ---- out of memory --------------------------------------------------------------------------


class CountLiveModels(TrialHook):
    """At a fault, how many models built by the faulting trial are still alive (none should be;
    models other tests of the session keep alive do not count)."""

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}
        self.before: set[int] = set()

    @staticmethod
    def _models() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if issubclass(type(o), MultimodalModel)}

    def on_trial_start(self, ex: TrialExecution) -> None:
        self.before = self._models()

    def on_fault(self, ex: TrialExecution, fault) -> None:
        self.live.setdefault(ex.number, []).append(len(self._models() - self.before))


def test_out_of_memory_retries_once_with_half_the_batch(demo_dataset, tmp_path):
    """Trial 2 runs out of memory once (its retry with batch 16 completes), trial 3 every time
    (pruned as oom, nothing of it left alive); the study goes on."""
    counter = CountLiveModels()
    search(
        demo_dataset,
        study="oom",
        trials=5,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        max_faults=10,
        report=False,
        hooks=[InjectFaults({2: "oom_once", 3: "oom"}), counter],
    )
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    recs = {r.number: r for r in HistoryStore(url).trials("oom")}
    attrs = {
        t.number: t.user_attrs for t in optuna.load_study(study_name="oom", storage=url).trials
    }
    assert recs[0].spec["training"]["batch_size"] == 32 and "oom_retry" not in attrs[0]
    assert recs[2].status == "COMPLETE" and recs[2].value is not None
    assert attrs[2]["oom_retry"] is True and attrs[2]["batch_size"] == 16
    assert recs[2].spec["training"]["batch_size"] == 16
    assert (recs[3].status, recs[3].reason) == ("PRUNED", "oom")
    assert attrs[3]["oom_retry"] is True and attrs[3]["batch_size"] == 16
    assert "attempt 2" in recs[3].error  # the retry ran out of memory too
    assert counter.live == {3: [0]}
    assert recs[4].status == "COMPLETE"
    assert all(r.peak_gpu_mb is None for r in recs.values())  # CPU trials: no GPU peak
