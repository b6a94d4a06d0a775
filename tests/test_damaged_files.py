"""Damaged files (issue 12): checkpoints, exports and running checkpoints that cannot be read.

Every case damages real files of a real tiny search (``tests/spaces/tiny.yaml`` on the demo
dataset, made once per module; each test works on a copy) and checks what autofuse does now:

- a corrupt finalist checkpoint: ``report`` skips it with a warning naming the file and still
  writes the report; ``export`` fails with one line naming the file and offering ``--retrain``,
  which then exports a model refitted from the trial's spec;
- a resumed search whose checkpoints are all corrupt trains, then writes its summary and report;
- a corrupt exported ``model.safetensors`` or ensemble member: one line naming the file;
- a running checkpoint that cannot be used (bytes, another program's file, a pickle that would
  run code, another model's weights): ``None`` with a warning naming the file, so the retried
  trial starts from epoch 1 (the kill -9 test in ``tests/storage/test_kill_resume.py`` runs that
  end to end).

Afterwards the study's trials (Optuna and autofuse's history) are what they were, and a command
that only reads leaves the database and the other checkpoints byte-for-byte as they were.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import autofuse
from autofuse.checkpoints import CheckpointStore, read_weights
from autofuse.cli import main
from autofuse.errors import ConfigError, DamagedFileError
from autofuse.export import export_trial, write_ensemble_export
from autofuse.model import build_model
from autofuse.runner import resume_problem
from autofuse.storage.history import HistoryStore
from autofuse.study import search
from autofuse.testing.faults import rot_checkpoint
from autofuse.train import param_groups
from autofuse.trial import TrialExecution, TrialHook

TINY = Path(__file__).parent / "spaces" / "tiny.yaml"
STUDY = "d"
N_TRIALS = 3  # all of them keep a finalist checkpoint (KEEP_TOP_K = 3)
#: random-looking bytes that no reader accepts (a safetensors header length of ~7e18)
GARBAGE = bytes(range(7, 250)) * 4


@dataclass
class KeepRunningCheckpoint(TrialHook):
    """Copies trial 0's running checkpoint (a real ``running/trial_0.pt``) to ``dest``."""

    dest: str

    def on_checkpoint(self, ex: TrialExecution, state: dict) -> None:
        if ex.number == 0:
            shutil.copyfile(ex.ctx.store.running_path(ex.number), self.dest)


@pytest.fixture(scope="module")
def base(tmp_path_factory, demo_dataset) -> Path:
    """A finished tiny study ``d`` (3 trials, each with a finalist checkpoint, the best model in
    ``best/``) and a real running checkpoint of trial 0 at ``running_trial_0.pt`` beside it."""
    root = tmp_path_factory.mktemp("damaged")
    work = root / "work"
    search(
        demo_dataset,
        study=STUDY,
        trials=N_TRIALS,
        space=TINY,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        report=False,
        device="cpu",
        checkpoint_every_s=0,
        hooks=[KeepRunningCheckpoint(str(root / "running_trial_0.pt"))],
    )
    for lock in (work / "trials").glob("*.lock"):
        lock.unlink()
    return root


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A copy of the finished study's work directory."""
    shutil.copytree(base / "work", tmp_path / "work")
    return tmp_path / "work"


def _url(work: Path) -> str:
    return f"sqlite:///{work / 'trials' / 'autofuse.db'}"


def _trials(work: Path) -> tuple[dict, dict]:
    """The study's trials as Optuna and autofuse's history record them."""
    st = optuna.load_study(study_name=STUDY, storage=_url(work))
    optuna_trials = {t.number: (t.state.name, t.values, t.params) for t in st.trials}
    history = {
        r.number: (r.status, r.value, r.test_metrics, r.history)
        for r in HistoryStore(_url(work), create=False).trials(STUDY)
    }
    return optuna_trials, history


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (lock files of a run left out)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _stored(work: Path) -> dict[str, str]:
    """The database and the study's own files (checkpoints, best model, summary)."""
    return {
        "db": _digest(work / "trials")["autofuse.db"],
        **{f"study/{k}": v for k, v in _digest(work / "trials" / STUDY).items()},
    }


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


def _one_error_line(output: str) -> str:
    """The single ``error:`` line of a refused command (and no traceback)."""
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _finalist(work: Path, n: int) -> tuple[Path, Path]:
    return CheckpointStore(work / "trials" / STUDY).finalist_paths(n)


def _best_trial(work: Path) -> int:
    return json.loads((work / "trials" / STUDY / "summary.json").read_text())["best_trial"]


# ---- a corrupt finalist checkpoint: the report skips it ---------------------------------------


def test_report_skips_a_corrupt_finalist_and_names_it(work, caplog):
    damaged = _finalist(work, 1)[1]
    damaged.write_bytes(GARBAGE)
    before, stored = _trials(work), _stored(work)

    code, out = _cli("report", "--study", STUDY, "--workdir", work, "--device", "cpu")

    assert code == 0, out
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(damaged) in w and "skipped" in w for w in warned), warned
    md = (work / "reports" / STUDY / "report.md").read_text()
    assert f"Trial 1 not evaluated: {damaged}: unreadable weights" in md
    data = json.loads((work / "reports" / STUDY / "report.json").read_text())
    rb = data["robustness"]
    assert sorted(f["trial"] for f in rb["finalists"]) == [0, 2]  # the others are evaluated
    assert [s["trial"] for s in rb["skipped"]] == [1]
    # a report only reads: the trials, the database and every checkpoint are as they were
    assert _trials(work) == before
    assert _stored(work) == stored


def test_report_with_every_finalist_corrupt_still_writes_the_report(work, caplog):
    for n in range(N_TRIALS):
        _finalist(work, n)[1].write_bytes(GARBAGE[: 10 + n])  # also a file too short for a header
    before = _trials(work)

    code, out = _cli("report", "--study", STUDY, "--workdir", work, "--device", "cpu")

    assert code == 0, out
    md = (work / "reports" / STUDY / "report.md").read_text()
    assert "Not evaluated: no finalist checkpoint could be read" in md
    assert str(_finalist(work, 0)[1]) in md
    assert _trials(work) == before


# ---- a corrupt finalist checkpoint: export names it and offers --retrain ------------------------


def _wrong_weights(work: Path, n: int) -> None:
    """A readable safetensors file whose tensors belong to no model of the study."""
    save_file({"encoders.image.w": torch.zeros(3, 3)}, str(_finalist(work, n)[1]))


DAMAGE = {
    "weights-garbage": (lambda work, n: _finalist(work, n)[1].write_bytes(GARBAGE), "weights"),
    "weights-truncated": (
        lambda work, n: _finalist(work, n)[1].write_bytes(_finalist(work, n)[1].read_bytes()[:200]),
        "weights",
    ),
    "weights-empty": (lambda work, n: _finalist(work, n)[1].write_bytes(b""), "weights"),
    "weights-of-nothing": (_wrong_weights, "weights"),
    "spec-not-json": (lambda work, n: _finalist(work, n)[0].write_text('{"format": "auto'), "spec"),
    "spec-binary": (lambda work, n: _finalist(work, n)[0].write_bytes(b"\xff\xfe\x00" * 9), "spec"),
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_export_of_a_corrupt_checkpoint_names_the_file_and_offers_retrain(work, tmp_path, how):
    n = _best_trial(work)
    damage, which = DAMAGE[how]
    damage(work, n)
    path = _finalist(work, n)[0 if which == "spec" else 1]
    before, stored = _trials(work), _stored(work)
    out = tmp_path / "export"

    code, output = _cli("export", "--study", STUDY, "--out", out, "--workdir", work)

    assert code == 2, output
    line = _one_error_line(output)
    assert line.startswith(f"error: {path}: ")
    assert f"add --retrain to refit trial {n}" in line
    assert not out.exists()
    assert _trials(work) == before and _stored(work) == stored


def test_export_retrain_refits_a_trial_whose_checkpoint_is_corrupt(work, tmp_path, demo_dataset):
    n = _best_trial(work)
    _finalist(work, n)[1].write_bytes(GARBAGE)
    before = _trials(work)
    out = tmp_path / "export"

    code, output = _cli(
        "export", "--study", STUDY, "--out", out, "--workdir", work, "--retrain", "--device", "cpu"
    )

    assert code == 0, output
    doc = json.loads((out / "architecture.json").read_text())
    assert doc["export"]["trial"] == n and doc["export"]["retrained"] is True
    assert len(autofuse.load(out, device="cpu").predict(demo_dataset)) == 240
    assert _trials(work) == before


# ---- a resumed search whose checkpoints are corrupt ----------------------------------------------


def test_resumed_search_with_corrupt_checkpoints_writes_summary_and_report(
    work, demo_dataset, caplog
):
    study_dir = work / "trials" / STUDY
    damaged = [*study_dir.glob("checkpoints/*.safetensors"), study_dir / "best/model.safetensors"]
    for p in damaged:
        p.write_bytes(GARBAGE)
    (study_dir / "summary.json").unlink()
    before_optuna, before_history = _trials(work)

    code, out = _cli(
        "search", demo_dataset, "--study", STUDY, "--trials", N_TRIALS + 1, "--space", TINY,
        "--workdir", work, "--mlflow-uri", "off", "--no-progress", "--device", "cpu",
    )  # fmt: skip

    assert code == 0, out
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["trials"]["completed"] == N_TRIALS + 1
    assert (
        Path(summary["report"]["html"]).is_file() and Path(summary["report"]["markdown"]).is_file()
    )
    warned = " | ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert str(study_dir / "checkpoints") in warned  # each damaged file is named
    if summary["best_trial"] < N_TRIALS:  # the best is an old trial: its checkpoint is damaged
        assert summary["best_dir"] is None and "not exported" in out
    else:  # the new trial is the best: exported as usual
        assert summary["best_dir"] == str(study_dir / "best")
        autofuse.load(study_dir / "best", device="cpu")
    # the trials that ran before are unchanged in both records
    after_optuna, after_history = _trials(work)
    assert {n: after_optuna[n] for n in before_optuna} == before_optuna
    assert {n: after_history[n] for n in before_history} == before_history


# ---- a corrupt export ---------------------------------------------------------------------------


@pytest.fixture
def exported(work, tmp_path) -> Path:
    return export_trial(STUDY, tmp_path / "export", workdir=work).out


@pytest.mark.parametrize("name", ["model.safetensors", "architecture.json"])
def test_load_of_a_corrupt_export_names_the_file(exported, demo_dataset, tmp_path, name):
    (exported / name).write_bytes(GARBAGE)
    with pytest.raises(ConfigError) as e:
        autofuse.load(exported, device="cpu")
    assert str(exported / name) in str(e.value) and "\n" not in str(e.value)
    code, output = _cli("predict", exported, demo_dataset, "--out", tmp_path / "p.csv")
    assert code == 2 and str(exported / name) in _one_error_line(output)
    assert not (tmp_path / "p.csv").exists()


def test_a_corrupt_ensemble_member_is_named(work, tmp_path):
    members = [export_trial(STUDY, tmp_path / f"m{n}", trial=n, workdir=work).out for n in (0, 1)]
    ens = write_ensemble_export(tmp_path / "ens", members, [0.5, 0.5], {"study": STUDY})
    damaged = ens / "member_1" / "model.safetensors"
    damaged.write_bytes(GARBAGE)
    with pytest.raises(ConfigError, match="unreadable") as e:
        autofuse.load(ens, device="cpu")
    assert str(damaged) in str(e.value)
    # an ensemble is not written from a damaged member: the member's file is named
    (members[1] / "model.safetensors").write_bytes(GARBAGE)
    with pytest.raises(DamagedFileError) as e:
        write_ensemble_export(tmp_path / "ens2", members, [0.5, 0.5], {"study": STUDY})
    assert e.value.path == str(members[1] / "model.safetensors")
    assert not (tmp_path / "ens2").exists()


def test_read_weights_names_a_damaged_file(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(GARBAGE)
    with pytest.raises(DamagedFileError, match="unreadable weights") as e:
        read_weights(p)
    assert e.value.path == str(p) and str(e.value).startswith(f"{p}: ")


# ---- a running checkpoint that cannot be used ---------------------------------------------------


class _RunsCode:
    """An object whose unpickling would run a command (a hostile running checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _state(base: Path) -> dict:
    return torch.load(base / "running_trial_0.pt", weights_only=True)


RUNNING = {
    "bit-rot-in-a-tensor": lambda p, base: rot_checkpoint(base / "running_trial_0.pt", p),
    "bit-rot-in-the-pickle": lambda p, base: rot_checkpoint(
        base / "running_trial_0.pt", p, pickle=True
    ),
    "garbage": lambda p, base: p.write_bytes(GARBAGE),
    "empty": lambda p, base: p.write_bytes(b""),
    "truncated": lambda p, base: p.write_bytes((base / "running_trial_0.pt").read_bytes()[:5000]),
    "not-a-dict": lambda p, base: torch.save([1, 2, 3], p),
    "missing-keys": lambda p, base: torch.save({"epoch": 2, "history": []}, p),
    "wrong-types": lambda p, base: torch.save({**_state(base), "epoch": "two"}, p),
    "runs-code": lambda p, base: torch.save(_RunsCode(p.parent / "pwned"), p),
}


@pytest.mark.parametrize("how", sorted(RUNNING))
def test_an_unusable_running_checkpoint_is_ignored_with_a_warning(base, tmp_path, caplog, how):
    store = CheckpointStore(tmp_path / "study")
    path = store.running_path(0)
    path.parent.mkdir(parents=True)
    RUNNING[how](path, base)
    assert store.load_running(0) is None
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(str(path))
    assert warned[0].endswith("the trial starts from epoch 1")
    assert not (path.parent / "pwned").exists()  # nothing in the file ran
    assert path.exists()  # left for the trial's end to discard


def test_a_real_running_checkpoint_loads_and_names_its_file(base, tmp_path):
    store = CheckpointStore(tmp_path / "study")
    store.running_path(0).parent.mkdir(parents=True)
    shutil.copyfile(base / "running_trial_0.pt", store.running_path(0))
    state = store.load_running(0)
    assert state is not None and state["epoch"] >= 1
    assert state["checkpoint_file"] == str(store.running_path(0))


def test_another_models_running_checkpoint_is_not_resumed(base):
    """Trial 0's running checkpoint fits trial 0's model, not another design's (trial 1)."""
    state = _state(base)
    store = CheckpointStore(base / "work" / "trials" / STUDY)
    own = store.load_finalist(0)[0].fusion.method
    problems, methods = {}, {}
    for n in range(N_TRIALS):
        spec, info, _ = store.load_finalist(n)
        model = build_model(spec, info, skip_frozen=True)
        groups = param_groups(model, spec.training.lr, spec.training.encoder_lr_scale)
        problems[n], methods[n] = resume_problem(state, model, groups), spec.fusion.method
    assert problems[0] is None
    others = [n for n in methods if methods[n] != own]
    assert others, f"every trial fuses with {own}: no other design to try"
    for n in others:
        assert problems[n] is not None and "another model" in problems[n], problems[n]


# ---- a staged study: damaged finalist outputs and weights -----------------------------------------

STAGED = Path(__file__).parent / "spaces" / "staged.yaml"


def _stage_trials(work, study: str, stage: str) -> list:
    import optuna

    url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
    trials = optuna.load_study(study_name=study, storage=url).trials
    return [t for t in trials if t.user_attrs.get("stage") == stage]


def test_resumed_staged_search_with_damaged_finalists_concludes(demo_dataset, tmp_path, caplog):
    """A staged study whose finalists' outputs and weights are damaged: resuming it still picks
    a winner (from the readable outputs: the damaged one is left out), writes the summary and the
    report; the winner it cannot export is said so (summary ``best_dir`` None), and export names
    the damaged file."""
    work = tmp_path / "work"
    common = dict(space=STAGED, workdir=work, progress=False, mlflow_uri="off", device="cpu")
    search(demo_dataset, study="st", **common)
    store = CheckpointStore(work / "trials" / "st")
    # stage 3's models (the ones with saved outputs): whichever wins, its weights are damaged
    stage3 = {t.number for t in _stage_trials(work, "st", "finalist")}
    finalists = sorted(n for n in store.finalists() if store.has_outputs(n) and n in stage3)
    assert len(finalists) == 4  # 2 designs x 2 seeds
    # the ensemble choice reads each design's best seed: damage the first design's
    by_design: dict[int, list] = {}
    for t in _stage_trials(work, "st", "finalist"):
        by_design.setdefault(t.user_attrs["finalist_of"], []).append(t)
    first = min(by_design)
    damaged = min(by_design[first], key=lambda t: (-t.value, t.number)).number
    store.outputs_path(damaged).write_bytes(GARBAGE)  # left out of the ensemble choice
    for n in finalists:
        store.finalist_paths(n)[1].write_bytes(GARBAGE)
    before_optuna, before_history = _trials_of(work, "st")
    (store.study_dir / "summary.json").unlink()

    code, out = _cli(
        "search", demo_dataset, "--study", "st", "--space", STAGED, "--workdir", work,
        "--mlflow-uri", "off", "--no-progress", "--device", "cpu",
    )  # fmt: skip

    assert code == 0, out
    summary = json.loads((store.study_dir / "summary.json").read_text())
    assert Path(summary["report"]["html"]).is_file()
    warned = " | ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert str(store.outputs_path(damaged)) in warned
    if summary["winner"]["kind"] == "ensemble":  # of the models whose outputs could be read
        assert damaged not in summary["winner"]["trials"]
    # the winner's weights are damaged: not exported, and said so
    assert summary["best_dir"] is None and summary["winner"]["exported"] is False
    assert "best model: not exported" in out
    code, out = _cli("export", "--study", "st", "--out", tmp_path / "x", "--workdir", work)
    line = _one_error_line(out)
    assert code == 2 and str(store.finalist_paths(summary["winner"]["trials"][0])[1]) in line
    assert _trials_of(work, "st") == (before_optuna, before_history)  # no trial ran or changed


def _trials_of(work: Path, study: str) -> tuple[dict, dict]:
    st = optuna.load_study(study_name=study, storage=_url(work))
    return (
        {t.number: (t.state.name, t.values, t.params) for t in st.trials},
        {
            r.number: (r.status, r.value, r.test_metrics, r.history)
            for r in HistoryStore(_url(work), create=False).trials(study)
        },
    )
