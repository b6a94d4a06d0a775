"""The search core's parts on their own: options, sampler/pruner registries, the trial record,
the checkpoint store and the trial hooks (seen through a real in-process search)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch

from autofuse.checkpoints import KEEP_TOP_K, CheckpointStore
from autofuse.errors import ConfigError
from autofuse.options import PRUNER_NAMES, SAMPLER_NAMES, SearchOptions
from autofuse.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from autofuse.space import load_space
from autofuse.storage.history import TRIAL_FIELDS, TrialModel, TrialRecord
from autofuse.study import search
from autofuse.trial import TrialHook

TINY = str(Path(__file__).parent / "spaces" / "tiny.yaml")


def test_options_defaults_live_in_one_place():
    o = SearchOptions()
    assert (o.heartbeat_interval, o.max_retry, o.max_faults, o.seed) == (30, 2, 5, 0)
    assert o.grace == 4 * o.heartbeat_interval
    # what the study stores is enough to rebuild the same options in a joining worker
    again = SearchOptions.from_stored(SearchOptions.parse(trials=7, amp=True).stored())
    assert again.trials == 7 and again.amp is True
    # a study written before the options model stored the total as n_total
    assert SearchOptions.from_stored({"n_total": 9}).trials == 9


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"trial_timeout": -1}, "--trial-timeout"),
        ({"heartbeat_interval": 0}, "--heartbeat"),
        ({"trials": 0}, "--trials"),
        ({"workers": 0}, "--workers"),
        ({"sampler": "annealing"}, "--sampler"),
        ({"max_faults": 0}, "--max-faults"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_options_name_the_option(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        SearchOptions.parse(**changes)


def test_sampler_and_pruner_registries_match_the_option_choices():
    assert set(SAMPLERS) == set(SAMPLER_NAMES)
    assert set(PRUNERS) == set(PRUNER_NAMES)
    sp = load_space(TINY)
    for name in SAMPLERS:
        assert isinstance(make_sampler(sp, name, 0), optuna.samplers.BaseSampler)
    for name in PRUNERS:
        assert isinstance(make_pruner(sp, name), optuna.pruners.BasePruner)


def test_trial_record_has_every_sql_column():
    columns = {c.name for c in TrialModel.__table__.columns} - {"id", "study_id"}
    assert set(TRIAL_FIELDS) == columns
    assert {f.name for f in dataclasses.fields(TrialRecord)} == columns | {"history"}


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 2)


def test_checkpoint_store_keeps_the_top_k(tmp_path, demo_dataset):
    from autofuse.spec import ArchitectureSpec

    spec = ArchitectureSpec.model_validate(
        {"encoders": {}, "fusion": {"family": "encoder_decoder", "method": "decision"}}
    )
    store = CheckpointStore(tmp_path)
    kept = []
    values: list[float] = []
    for n, v in enumerate([0.5, 0.7, 0.6, 0.4, 0.8]):
        if store.save_if_top(n, v, values, "maximize", _Model(), spec, {"modalities": {}}):
            kept.append(n)
        values.append(v)
    assert kept == [0, 1, 2, 4]  # 0.4 was below the top 3 of (0.5, 0.7, 0.6)
    store.prune([4, 1, 2])
    assert store.finalists() == {1, 2, 4} and len(store.finalists()) == KEEP_TOP_K
    with pytest.raises(ConfigError, match="only the best 3"):
        store.load_finalist(0)


def test_corrupt_running_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    w = {"w": torch.zeros(2)}
    state = {
        "model": w, "optimizer": {}, "generator": torch.zeros(4, dtype=torch.uint8), "epoch": 2,
        "best_state": w, "best_val": 0.5, "best_epoch": 2, "stale": 0,
        "history": [{"epoch": 1}, {"epoch": 2}],
    }  # fmt: skip
    store.save_running(3, state)
    assert store.load_running(3)["epoch"] == 2
    store.running_path(3).write_bytes(b"not a checkpoint")
    assert store.load_running(3) is None
    assert "starts from epoch 1" in caplog.text
    assert store.load_running(4) is None


@dataclasses.dataclass
class Recorder(TrialHook):
    calls: list = dataclasses.field(default_factory=list)

    def on_trial_start(self, ex):
        self.calls.append((ex.number, "start"))

    def on_epoch_end(self, ex, epoch, metrics):
        assert "accuracy" in metrics
        self.calls.append((ex.number, f"epoch{epoch}"))

    def on_checkpoint(self, ex, state):
        assert ex.ctx.store.running_path(ex.number).is_file()
        self.calls.append((ex.number, f"checkpoint{state['epoch']}"))

    def on_trial_end(self, ex, status, fields):
        self.calls.append((ex.number, status))


def test_hooks_see_every_step_of_a_trial(demo_dataset, tmp_path):
    rec = Recorder()
    search(
        demo_dataset,
        study="hooks",
        trials=2,
        space=TINY,
        workdir=tmp_path,
        progress=False,
        mlflow_uri="off",
        report=False,
        hooks=[rec],
        checkpoint_every_s=0,
    )
    for n in (0, 1):
        steps = [s for m, s in rec.calls if m == n]
        assert steps[0] == "start" and steps[-1] == "COMPLETE"
        # per epoch: the checkpoint is written before the epoch's metrics are handed on
        assert steps[1:3] == ["checkpoint1", "epoch1"]
    # a completed trial leaves no running checkpoint behind
    assert not list((tmp_path / "trials" / "hooks" / "running").glob("*.pt"))
