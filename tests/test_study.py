"""End-to-end search: outputs, rebuildable best architecture, resume, refusals, CLI errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file

import autofuse
from autofuse.errors import ConfigError
from autofuse.study import search

TINY = str(Path(__file__).parent / "spaces" / "tiny.yaml")
BROKEN = Path(__file__).parent / "data" / "broken"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_dataset):
    work = tmp_path_factory.mktemp("work")
    res = search(demo_dataset, study="s1", trials=3, space=TINY, workdir=work, progress=False)
    return work, res


def test_search_writes_the_three_outputs(finished):
    work, res = finished
    d = work / "trials" / "s1"
    assert (d / "best" / "architecture.json").exists()
    assert (d / "best" / "model.safetensors").exists()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["trials"]["completed"] + summary["trials"]["pruned"] == 3
    assert summary["trials"]["failed"] == 0
    assert set(summary["val_metrics"]) >= {"accuracy", "macro_f1"}
    assert set(summary["test_metrics"]) == {"accuracy", "macro_f1"}
    assert summary["n_params"] > 0 and summary["latency_ms"] > 0
    # the two hand-designed baselines ran first
    assert set(summary["baselines"]) == {"late_fusion", "early_concat"}
    st = optuna.load_study(study_name="s1", storage=f"sqlite:///{work / 'trials' / 'autofuse.db'}")
    assert st.trials[0].user_attrs["baseline"] == "late_fusion"
    assert st.best_trial.number == summary["best_trial"]


def test_best_architecture_rebuilds_exactly(finished):
    work, res = finished
    spec, info = autofuse.load_architecture(res.best_dir / "architecture.json")
    state = load_file(str(res.best_dir / "model.safetensors"))
    m1 = autofuse.build_model(spec, info)
    m1.load_state_dict(state)
    m2 = autofuse.build_model(spec, info)
    assert set(m2.state_dict()) == set(state)
    m2.load_state_dict(state)
    assert sum(p.numel() for p in m1.parameters()) > 0
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_resume_continues_to_the_requested_total(finished, demo_dataset):
    work, _ = finished
    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    before = {
        t.number: (t.state, t.value, t.params)
        for t in optuna.load_study(study_name="s1", storage=url).trials
    }
    search(demo_dataset, study="s1", trials=5, space=TINY, workdir=work, progress=False)
    st = optuna.load_study(study_name="s1", storage=url)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len([t for t in st.trials if t.state in finished_states]) == 5
    for t in st.trials:
        if t.number in before:
            assert (t.state, t.value, t.params) == before[t.number]


def test_resume_refuses_another_dataset(finished, demo_dataset, tmp_path):
    work, _ = finished
    other = tmp_path / "other"
    shutil.copytree(demo_dataset, other)
    csv = other / "samples.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer -> another fingerprint
    with pytest.raises(ConfigError, match="different dataset"):
        search(other, study="s1", trials=6, space=TINY, workdir=work, progress=False)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "autofuse.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_search_on_broken_dataset_fails_cleanly(tmp_path):
    r = _cli(
        "search",
        str(BROKEN / "missing_file"),
        "--study",
        "x",
        "--trials",
        "1",
        "--workdir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert "error:" in r.stderr and "file not found" in r.stderr
    assert not (tmp_path / "trials").exists()  # no study created, nothing written


def test_cli_bad_space_and_storage(tmp_path, demo_dataset):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fusion: {encoder_decoder: {nope: {}}}\nencoders: {}\n")
    r = _cli(
        "search",
        str(demo_dataset),
        "--study",
        "x",
        "--space",
        str(bad),
        "--workdir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert (
        r.returncode != 0
        and "fusion.encoder_decoder.nope" in r.stderr
        and "Traceback" not in r.stderr
    )
    r = _cli(
        "search",
        str(demo_dataset),
        "--study",
        "x",
        "--storage",
        "nosuchdb://x",
        "--workdir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "--storage" in r.stderr and "Traceback" not in r.stderr
    r = _cli(
        "search", str(demo_dataset), "--study", "../evil", "--workdir", str(tmp_path), cwd=tmp_path
    )
    assert r.returncode != 0 and "--study" in r.stderr


def test_cli_lists_registries_and_space():
    r = _cli("fusions", cwd=".")
    assert r.returncode == 0 and "encoder_decoder.early" in r.stdout
    r = _cli("encoders", cwd=".")
    assert (
        r.returncode == 0 and "image.timm" in r.stdout and "text.sentence_transformer" in r.stdout
    )
    r = _cli("space", "show", "fast", cwd=".")
    assert r.returncode == 0 and "encoder_decoder" in r.stdout


def test_resume_refuses_another_space_unless_forced(finished, demo_dataset):
    work, _ = finished
    other = str(Path(__file__).parent / "spaces" / "tiny_all.yaml")
    with pytest.raises(ConfigError, match="different search space"):
        search(demo_dataset, study="s1", trials=6, space=other, workdir=work, progress=False)


def test_same_space_ignores_settings_added_later():
    from autofuse.study import _same_space

    old = {"name": "x", "fusion": {"a": {"points": ["late"]}}}
    assert _same_space(old, {**old, "coverage": 2})
    assert not _same_space(old, {"name": "x", "fusion": {"a": {"points": ["early"]}}})
