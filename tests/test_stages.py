"""The staged search: stage 1 trains each encoder configuration once (and a second study reuses
it), honest features keep a memorising modality from fooling the fusion head, the modality
subset search drops a pure-noise modality, the winner (a greedy ensemble here) predicts the same
in a fresh process, and a study killed in stage 2 resumes in stage 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

import autofuse
from autofuse.data import Dataset
from autofuse.encoders import EncoderSpec
from autofuse.runner import CandidateRunner
from autofuse.spec import ArchitectureSpec, FusionSpec, HeadSpec, TrainingSpec
from autofuse.stages import FINALIST, FUSION, UNIMODAL, split_train_rows, stage_of
from autofuse.study import search

STAGED = str(Path(__file__).parent / "spaces" / "staged.yaml")


def _stages(work: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    return optuna.load_study(study_name=study, storage=url).trials


@pytest.fixture(scope="module")
def staged(demo_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("staged")
    res = search(
        demo_dataset, study="st", space=STAGED, workdir=work, progress=False, mlflow_uri="off"
    )
    return work, res


def test_three_stages_in_one_study(staged):
    work, res = staged
    trials = _stages(work, "st")
    by_stage = {s: [t for t in trials if stage_of(t) == s] for s in (UNIMODAL, FUSION, FINALIST)}
    # stage 1: one trial per modality and encoder choice (tiny.yaml: one choice each)
    assert sorted(t.user_attrs["unimodal"]["modality"] for t in by_stage[UNIMODAL]) == [
        "image",
        "tabular",
        "text",
    ]
    assert all(t.user_attrs["family"] == "unimodal" for t in by_stage[UNIMODAL])
    # stage 2: 6 fusion trials over the stage-1 features (frozen, from their training runs)
    assert len(by_stage[FUSION]) == 6
    for t in by_stage[FUSION]:
        encs = t.user_attrs["spec"]["encoders"]
        assert all(e["mode"] == "frozen" and e["source"] for e in encs.values())
        assert set(t.user_attrs["kept"]) == set(encs)
    # stage 3: 2 designs x 2 seeds, fine-tuned end to end from the stage-1 weights
    fin = by_stage[FINALIST]
    assert len(fin) == 4 and len({t.user_attrs["finalist_of"] for t in fin}) == 2
    for t in fin:
        encs = t.user_attrs["spec"]["encoders"]
        assert all(e["mode"] == "scratch" and e["source"] for e in encs.values())
        assert t.user_attrs["spec"]["training"]["encoder_lr_scale"] == pytest.approx(0.1)
    s = res.summary
    assert set(s["stages"]) == {UNIMODAL, FUSION, FINALIST}
    assert s["winner"]["kind"] in ("single", "ensemble") and s["winner"]["why"]
    assert s["best_dir"] and Path(s["best_dir"]).is_dir()
    # SQL history records the stage of every trial
    from autofuse.storage.history import HistoryStore

    recs = HistoryStore(f"sqlite:///{work / 'trials' / 'autofuse.db'}").trials("st")
    assert {r.stage for r in recs} == {UNIMODAL, FUSION, FINALIST}


def test_a_second_study_reuses_stage_one(staged, demo_dataset):
    work, _ = staged
    cache = work / "trials" / "cache"
    entries = {p.name for p in cache.iterdir() if (p / "stage1.json").exists()}
    assert len(entries) == 3  # one training run per encoder configuration
    search(
        demo_dataset,
        study="st2",
        space=STAGED,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        report=False,
        trials=2,
    )
    uni = [t for t in _stages(work, "st2") if stage_of(t) == UNIMODAL]
    assert len(uni) == 3 and all(t.user_attrs.get("reused") for t in uni)
    first = {
        t.user_attrs["unimodal"]["label"]: t.value
        for t in _stages(work, "st")
        if stage_of(t) == UNIMODAL
    }
    assert {t.user_attrs["unimodal"]["label"]: t.value for t in uni} == first
    assert {p.name for p in cache.iterdir() if (p / "stage1.json").exists()} == entries


def test_winner_predicts_the_same_in_a_fresh_process(staged, demo_dataset, tmp_path):
    work, res = staged
    winner = res.summary["winner"]
    out = tmp_path / "exported"
    r = subprocess.run(
        [sys.executable, "-m", "autofuse.cli", "export", "--study", "st", "--out", str(out),
         "--workdir", str(work)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    kind = "ensemble" if (out / "ensemble.json").exists() else "single"
    assert kind == winner["kind"]
    trials = ", ".join(map(str, winner["trials"]))
    said = f"the greedy ensemble of trials {trials}" if kind == "ensemble" else f"trial {trials}"
    assert r.stdout.startswith(f"exported {said} of study st"), r.stdout
    preds = tmp_path / "p.csv"
    r = subprocess.run(
        [sys.executable, "-m", "autofuse.cli", "predict", str(out), str(demo_dataset),
         "--out", str(preds), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(preds, dtype=str)
    rows = pd.read_csv(Path(demo_dataset) / "samples.csv", dtype=str)
    test = (rows["split"] == "test").to_numpy()
    acc = float((df["prediction"].to_numpy()[test] == rows["label"].to_numpy()[test]).mean())
    assert acc == pytest.approx(winner["test"]["accuracy"], abs=1e-9)
    # in this process too, and through the MLflow pyfunc flavour
    inproc = autofuse.load(out, device="cpu").predict(str(demo_dataset))
    assert (inproc["prediction"].astype(str).to_numpy() == df["prediction"].to_numpy()).all()
    import mlflow

    from autofuse.mlflow_model import log_pyfunc

    uri = log_pyfunc(out, registered_name="st", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    pf = mlflow.pyfunc.load_model("models:/st/1")
    table = pd.read_csv(Path(demo_dataset) / "samples.csv")  # numbers as numbers
    got = pf.predict(_absolute_paths(table, Path(demo_dataset)))
    assert (got["prediction"].astype(str).to_numpy() == df["prediction"].to_numpy()).all()


def _absolute_paths(rows: pd.DataFrame, root: Path) -> pd.DataFrame:
    out = rows.drop(columns=["label", "split"]).copy()
    out["image_path"] = [str(root / p) if isinstance(p, str) else p for p in out["image_path"]]
    return out


# ---- honest features and the modality subset -----------------------------------------------


def _noise_dataset(folder: Path, n: int = 360, seed: int = 0) -> Path:
    """Two tabular views: ``signal`` (2 columns, the label is a noisy linear rule of them) and
    ``noise`` (24 random columns, unrelated to the label but easy to memorise row by row)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2))
    y = ((s[:, 0] + 0.5 * s[:, 1] + rng.normal(0, 0.6, n)) > 0).astype(int)
    df = pd.DataFrame({f"s{i}": s[:, i] for i in range(2)})
    noise = rng.normal(size=(n, 24))
    for i in range(24):
        df[f"n{i}"] = noise[:, i]
    df["label"] = y
    df["split"] = np.where(
        np.arange(n) < int(0.6 * n), "train", np.where(np.arange(n) < int(0.8 * n), "val", "test")
    )
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "samples.csv", index=False)
    cfg = {
        "name": "noise",
        "table": "samples.csv",
        "target": {"column": "label", "task": "classification"},
        "split": {"column": "split"},
        "modalities": {
            "signal": {"type": "tabular", "columns": ["s0", "s1"]},
            "noise": {"type": "tabular", "columns": [f"n{i}" for i in range(24)]},
        },
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def _unimodal(m: str, epochs: int) -> ArchitectureSpec:
    return ArchitectureSpec(
        encoders={m: EncoderSpec(name="tabular.mlp", mode="scratch", dim=64, params={"hidden": 256})},
        fusion=FusionSpec(family="encoder_decoder", method="decision", point="late", params={"combine": "mean"}),
        head=HeadSpec(fused_dim=64, dropout=0.0),
        training=TrainingSpec(lr=3e-3, weight_decay=0.0, batch_size=32, epochs=epochs, patience=epochs, seed=0),
    )  # fmt: skip


def _fused_val_accuracy(runner: CandidateRunner, keys: dict[str, str], rows) -> float:
    """A fusion head (early concat) over stored stage-1 features, trained on ``rows``."""
    encs = {
        m: EncoderSpec(name="tabular.mlp", mode="frozen", dim=64, params={"hidden": 256}, source=k)
        for m, k in keys.items()
    }
    spec = ArchitectureSpec(
        encoders=encs,
        fusion=FusionSpec(family="encoder_decoder", method="early", point="late", params={"hidden": 32}),
        head=HeadSpec(fused_dim=32, dropout=0.0),
        training=TrainingSpec(lr=3e-3, batch_size=32, epochs=30, patience=30, seed=0),
    )  # fmt: skip
    return runner.run(spec, train_rows=rows).val_metrics["accuracy"]


def test_stage_one_skips_finetune_without_pretrained_weights():
    """``finetune`` from random weights is the ``scratch`` run again: stage 1 trains it once."""
    from autofuse.space import load_space, unimodal_specs

    sp = load_space("default")

    def modes(space) -> list[str]:
        return sorted(
            s.encoders["img"].mode
            for _, s in unimodal_specs(space, {"img": "image"})
            if s.encoders["img"].name == "image.timm"
        )

    assert modes(sp) == ["frozen", "scratch"]
    choices = [
        c.model_copy(update={"params": {**c.params, "pretrained": [True]}})
        if c.name == "image.timm"
        else c
        for c in sp.encoders["image"]
    ]
    hub = sp.model_copy(update={"encoders": {**sp.encoders, "image": choices}})
    assert modes(hub) == ["finetune", "frozen", "scratch"]


def test_honest_features_keep_a_memorising_modality_from_fooling_the_fusion(tmp_path):
    ds = Dataset.load(_noise_dataset(tmp_path / "noise"))
    runner = CandidateRunner(ds, tmp_path / "cache", __import__("torch").device("cpu"))
    t = runner.template
    enc_rows, fus_rows = split_train_rows(t.splits["train"], t.y_raw, ds.task, 0.4)
    for rows, tag in ((None, "insample"), (enc_rows, "honest")):
        for m in ("signal", "noise"):
            spec = _unimodal(m, epochs=60 if m == "noise" else 20)
            res = runner.run(spec, train_rows=rows)
            runner.store_stage1(f"{tag}-{m}", m, spec.encoders[m], res.model.encoders[m], {})
    # the noise encoder memorised its training rows ...
    res = runner.run(_unimodal("noise", 60))
    assert res.history[-1]["train_loss"] < 0.1 and res.val_metrics["accuracy"] < 0.7
    # ... so a head trained on those same rows' features trusts it and fails on held-out rows,
    # while a head trained on rows the encoders never saw learns to follow the signal
    insample = _fused_val_accuracy(
        runner, {"signal": "insample-signal", "noise": "insample-noise"}, None
    )
    honest = _fused_val_accuracy(
        runner, {"signal": "honest-signal", "noise": "honest-noise"}, fus_rows
    )
    print(f"val accuracy: honest {honest:.3f}, in-sample {insample:.3f}")
    assert honest > insample + 0.05, (honest, insample)


def test_subset_search_drops_a_pure_noise_modality(tmp_path):
    folder = _noise_dataset(tmp_path / "noise")
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "extends": str(Path(STAGED)),
                "name": "noise",
                "trials": 12,
                "encoders": {
                    "tabular": [{"name": "tabular.mlp", "modes": ["scratch"], "params": {"dim": [32], "hidden": [128]}}]
                },
                "training": {"lr": {"low": 0.003, "high": 0.01, "log": True}, "batch_size": [32], "epochs": 20, "patience": 20, "fused_dim": [32]},
                "sampler": {"name": "tpe", "n_startup_trials": 6},
                "stages": {"enabled": True, "finalists": 1, "seeds": 1, "ensemble": False},
            }
        )
    )  # fmt: skip
    res = search(
        folder, study="sub", space=str(space), workdir=tmp_path, progress=False, mlflow_uri="off",
        report=False, seed=0,
    )  # fmt: skip
    trials = _stages(tmp_path, "sub")
    winner = next(t for t in trials if t.number == res.summary["winner"]["trials"][0])
    assert sorted(winner.user_attrs["spec"]["encoders"]) == ["signal"]


# ---- kill -9 in stage 2 ---------------------------------------------------------------------

FIRST_RUN = """
import sys
from autofuse.study import search
from autofuse.testing.faults import HoldTrial
dataset, work, marker = sys.argv[1:]
search(dataset, study="k2", space={space!r}, workdir=work, heartbeat_interval=1,
       progress=False, mlflow_uri="off", report=False, checkpoint_every_s=0,
       hooks=[HoldTrial(marker, number={held}, epoch=1)])
"""


@pytest.mark.slow
def test_kill9_in_stage_two_resumes_in_stage_two(demo_dataset, tmp_path):
    held = 5  # trials 0-2 are stage 1 (three modalities), 3.. are the fusion search
    work, marker = tmp_path / "w", tmp_path / "held"
    script = FIRST_RUN.format(space=STAGED, held=held)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(demo_dataset), str(work), str(marker)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        while not (marker.exists() and marker.read_text()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 300, "the held trial never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t for t in _stages(work, "k2")}
    assert stage_of(before[held]) == FUSION and before[held].state.name == "RUNNING"
    stage1 = {n: t.datetime_complete for n, t in before.items() if stage_of(t) == UNIMODAL}
    time.sleep(5)  # > the grace period (4 heartbeats of 1 s): the held trial is stale now
    r = subprocess.run(
        [sys.executable, "-m", "autofuse.cli", "search", str(demo_dataset), "--study", "k2",
         "--space", STAGED, "--workdir", str(work), "--heartbeat", "1", "--no-progress",
         "--mlflow-uri", "off"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    after = _stages(work, "k2")
    # stage 1 was not run again: the same three trials, untouched
    assert {t.number: t.datetime_complete for t in after if stage_of(t) == UNIMODAL} == stage1
    # the killed fusion trial failed and was retried as a fusion trial
    assert next(t for t in after if t.number == held).state.name == "FAIL"
    retries = [t for t in after if t.user_attrs.get("retry_of") == held]
    assert len(retries) == 1 and stage_of(retries[0]) == FUSION
    assert retries[0].state.name in ("COMPLETE", "PRUNED")
    fusion_done = [
        t for t in after if stage_of(t) == FUSION and t.state.name in ("COMPLETE", "PRUNED")
    ]
    assert len(fusion_done) == 6
    assert json.loads((work / "trials" / "k2" / "summary.json").read_text())["winner"]


@pytest.mark.slow
def test_a_joining_worker_follows_the_stages(demo_dataset, tmp_path):
    """`autofuse worker` on a staged study: it runs trials of each stage the coordinator opens,
    and the study ends with exactly the requested trials per stage."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    url = f"sqlite:///{tmp_path / 'trials' / 'autofuse.db'}"
    common = ["--workdir", str(tmp_path), "--mlflow-uri", "off"]
    coord = subprocess.Popen(
        [sys.executable, "-m", "autofuse.cli", "search", str(demo_dataset), "--study", "j",
         "--space", STAGED, "--trials", "10", "--no-progress", *common],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    t0 = time.monotonic()
    while not (tmp_path / "trials" / "autofuse.db").exists():
        assert coord.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.2)
    joiner = subprocess.run(
        [sys.executable, "-m", "autofuse.cli", "worker", "--study", "j", "--storage", url,
         "--device", "cpu", *common],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert joiner.returncode == 0, joiner.stderr[-2000:]
    assert coord.wait(timeout=600) == 0, coord.stderr.read().decode()[-2000:]
    trials = _stages(tmp_path, "j")
    counts = {s: sum(stage_of(t) == s and t.state.name == "COMPLETE" for t in trials) for s in
              (UNIMODAL, FUSION, FINALIST)}  # fmt: skip
    assert counts == {UNIMODAL: 3, FUSION: 10, FINALIST: 4}
    workers = {t.user_attrs.get("worker") for t in trials if stage_of(t) != UNIMODAL}
    assert len(workers) == 2  # the joining worker trained trials too
