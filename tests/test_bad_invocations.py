"""The corpus of bad invocations (issue 12): options, environment, search spaces, storages,
checkpoints, exports and datasets that a careless or hostile user may give.

Each case runs one command line against a copy of a finished study and checks that autofuse
answers with exactly one ``error:`` line naming what is wrong, exit code 2, no traceback, no URL
password, and that afterwards every file under the test's folder (the study's work directory,
its SQLite stores, its checkpoints, the exports, the other inputs) is byte-for-byte what it was:
nothing created, nothing changed.

The table is :data:`CASES`: an id, the arguments (``{work}``, ``{good}``, ``{tiny}`` ... are
filled in by :func:`_fill`), the substrings the error line holds, and optional set-up (a file
written or damaged first), environment and marks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ci import need
from click.testing import CliRunner

from autofuse.cli import main
from autofuse.testing.faults import rot_weights

TESTS = Path(__file__).parent
GOOD = TESTS / "data" / "good"
BROKEN = TESTS / "data" / "broken"
TINY = TESTS / "spaces" / "tiny.yaml"
SECRET = "s3cr3t-pw"


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: writes or damages files before the run: ``setup(tmp)``
    setup: Callable[[Path], None] | None = None
    #: run in a subprocess without the right to write where permissions forbid it (root too)
    unprivileged: bool = False
    marks: tuple = ()
    code: int = 2
    #: where the command runs (the default work directory when neither --workdir nor
    #: AUTOFUSE_HOME is given)
    cwd: str = "{tmp}"


def _search(
    *extra: str, study: str = "s", dataset: str = "{good}", workdir: str | None = "{work}"
) -> list[str]:
    """``autofuse search`` of a tiny space (``workdir=None``: no --workdir option)."""
    at = ["--workdir", workdir] if workdir else []
    return [
        "search",
        dataset,
        "--study",
        study,
        "--space",
        "{tiny}",
        "--trials",
        "1",
        *at,
        "--mlflow-uri",
        "off",
        "--no-progress",
        *extra,
    ]


def _space_case(id: str, body: str, *expect: str) -> Case:
    """A search with a space file the test writes (``extends`` the tiny space)."""

    def setup(tmp: Path) -> None:
        (tmp / "spaces").mkdir(exist_ok=True)
        (tmp / "spaces" / "x.yaml").write_text(f"extends: {TINY}\n{body}\n")

    argv = _search(study="new")
    argv[argv.index("{tiny}")] = "{tmp}/spaces/x.yaml"
    return Case(f"space-{id}", argv, ["spaces/x.yaml", *expect], setup=setup)


def _write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def _unless(present: Callable[[], bool], what: str) -> Callable[[Path], None]:
    """Set-up that skips the case on a machine where ``present()`` (the bad value is good
    there: that GPU exists, that driver is installed)."""

    def setup(tmp: Path) -> None:
        if present():
            pytest.skip(f"this machine has {what}")

    return setup


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _importable(module: str) -> Callable[[], bool]:
    import importlib.util

    return lambda: importlib.util.find_spec(module) is not None


def _foreign_sqlite(tmp: Path) -> None:
    import sqlite3

    con = sqlite3.connect(tmp / "other.db")
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()


def _read_only_store(tmp: Path) -> None:
    """The study's database, copied into a read-only folder (the work directory stays writable)."""
    (tmp / "ro").mkdir()
    db = tmp / "ro" / "autofuse.db"
    shutil.copyfile(tmp / "work" / "trials" / "autofuse.db", db)
    db.chmod(stat.S_IRUSR | stat.S_IRGRP)
    (tmp / "ro").chmod(0o555)


def _read_only_home(tmp: Path) -> None:
    (tmp / "work").chmod(0o555)


def _damage(rel: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        p = tmp / rel
        p.write_bytes(p.read_bytes()[:40] + b"\x00garbage\xff" * 8)

    return setup


def _export_then(damage: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(tmp / "work" / "trials" / "s" / "best", tmp / "export")
        p = tmp / "export" / damage
        p.write_bytes(b"{not json" if p.suffix == ".json" else p.read_bytes()[:64])

    return setup


def _rot(rel: str, *, export: bool = False) -> Callable[[Path], None]:
    """Set-up (issue 18): one byte of the tensor data of the weight file ``rel`` flipped, its
    header intact (only its recorded sha256 tells); ``export``: first copy ``best/`` to
    ``{tmp}/export``."""

    def setup(tmp: Path) -> None:
        if export:
            shutil.copytree(tmp / "work" / "trials" / "s" / "best", tmp / "export")
        rot_weights(tmp / rel)

    return setup


# issue 18: the real PostgreSQL and MariaDB servers of this machine kind (their `test` databases,
# which nothing writes to: each case is refused before a table or row is made)
PG_TEST = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_TEST = "mysql://root@127.0.0.1:3306/test"
#: a PostgreSQL session made read-only by its URL (libpq's ``options``)
PG_READ_ONLY = "options=-c%20default_transaction_read_only%3Don"
#: a MariaDB / MySQL session made read-only by its URL (PyMySQL runs it on every connection)
MYSQL_READ_ONLY = "init_command=SET%20SESSION%20TRANSACTION%20READ%20ONLY"
#: a MariaDB user granted nothing but SELECT on `test` (made by a case, dropped at exit)
READER = f"af_reader_{os.getpid()}"


def _server(url: str) -> Callable[[Path], None]:
    """Set-up: the server of ``url`` answers (else skip; under CI=true a failure)."""

    def setup(tmp: Path) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        try:
            with engine.connect():
                pass
        except sa.exc.OperationalError as e:
            need(False, f"no server at {url}: {str(e.orig).splitlines()[0]}")
        finally:
            engine.dispose()

    return setup


def _select_only_reader(tmp: Path) -> None:
    """Set-up: the MariaDB user :data:`READER`, granted only SELECT on `test`."""
    import atexit

    import sqlalchemy as sa

    _server(MYSQL_TEST)(tmp)
    admin = sa.create_engine(MYSQL_TEST, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE USER IF NOT EXISTS '{READER}'@'%'"))
        c.execute(sa.text(f"GRANT SELECT ON `test`.* TO '{READER}'@'%'"))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP USER IF EXISTS '{READER}'@'%'"))
        admin.dispose()

    atexit.register(drop)


CASES: list[Case] = [
    # ---- options of `autofuse search` -----------------------------------------------------------
    Case("trials-0", _search("--trials", "0"), ["--trials 0"]),
    Case("trials-text", _search("--trials", "many"), ["'--trials'", "'many'"]),
    Case("seed-negative", _search("--seed", "-1"), ["--seed -1"]),
    Case("seed-too-big", _search("--seed", str(2**40)), ["--seed", "2147483647"]),
    Case("heartbeat-0", _search("--heartbeat", "0"), ["--heartbeat 0"]),
    Case("heartbeat-huge", _search("--heartbeat", "99999999"), ["--heartbeat"]),
    Case("trial-timeout-negative", _search("--trial-timeout", "-5"), ["--trial-timeout"]),
    Case("trial-timeout-inf", _search("--trial-timeout", "inf"), ["--trial-timeout", "finite"]),
    Case("trial-timeout-nan", _search("--trial-timeout", "nan"), ["--trial-timeout", "finite"]),
    Case("max-faults-0", _search("--max-faults", "0"), ["--max-faults 0"]),
    Case("workers-0", _search("--workers", "0"), ["--workers 0"]),
    Case("workers-too-many-sqlite", _search("--workers", "64"), ["SQLite"]),
    Case("workers-per-device-0", _search("--workers-per-device", "0"), ["--workers-per-device"]),
    Case("time-budget-text", _search("--time-budget", "soon"), ["--time-budget", "not a duration"]),
    Case("time-budget-negative", _search("--time-budget", "-5m"), ["--time-budget"]),
    Case("checkpoint-every-nan", _search("--checkpoint-every", "nan"), ["--checkpoint-every"]),
    Case("device-typo", _search("--device", "gpu"), ["--device 'gpu'", "not a device"]),
    Case(
        "device-missing-gpu",
        _search("--device", "cuda:7"),
        ["--device 'cuda:7'"],
        setup=_unless(lambda: _gpus() > 7, "8 GPUs"),
    ),
    Case(
        "device-mps",
        _search("--device", "mps"),
        ["--device 'mps'", "no MPS device"],
        setup=_unless(_mps, "an MPS device"),
    ),
    Case("devices-empty-entry", _search("--devices", "cpu,"), ["--devices", "empty entry"]),
    Case("devices-typo", _search("--devices", "cpu,gpu0"), ["--devices", "gpu0"]),
    Case("sampler-unknown", _search("--sampler", "annealing"), ["'--sampler'", "annealing"]),
    Case("option-unknown", _search("--trails", "3"), ["No such option", "--trails"]),
    Case("study-name-escapes", _search(study="../up"), ["--study '../up'"]),
    Case("space-unknown", _search("--space", "no-such-space"), ["no such file or bundled space"]),
    Case("storage-not-a-url", _search("--storage", "trials.db"), ["--storage 'trials.db'"]),
    Case("storage-unknown-db", _search("--storage", "oracle9://x/y"), ["unknown database"]),
    Case(
        "storage-missing-driver",
        _search("--storage", "mssql://sa@127.0.0.1/db"),
        ["--storage", "driver is not installed"],
        setup=_unless(_importable("pyodbc"), "pyodbc"),
    ),
    Case(
        "storage-unreachable-password",
        _search("--storage", f"postgresql+psycopg2://bob:{SECRET}@127.0.0.1:9/optuna"),
        ["bob:***@127.0.0.1:9", "cannot connect"],
    ),
    Case(
        "storage-is-a-folder",
        _search("--storage", "sqlite:///{tmp}/afolder"),
        ["afolder is a folder"],
        setup=lambda tmp: (tmp / "afolder").mkdir(),
    ),
    Case(
        "mlflow-uri-scheme",
        _search("--mlflow-uri", f"ftp://bob:{SECRET}@host/x"),
        ["--mlflow-uri", "bob:***@host", "not an MLflow tracking URI"],
    ),
    Case("mlflow-uri-no-host", _search("--mlflow-uri", "http://:5000"), ["no host"]),
    # ---- the work directory and AUTOFUSE_HOME ---------------------------------------------------
    Case(
        "workdir-is-a-file",
        _search(workdir="{tmp}/afile"),
        ["--workdir", "afile", "is a file"],
        setup=_write("afile", "x"),
    ),
    Case(
        "autofuse-home-is-a-file",
        _search(workdir=None),
        ["AUTOFUSE_HOME", "afile", "is a file"],
        env={"AUTOFUSE_HOME": "{tmp}/afile"},
        setup=_write("afile", "x"),
    ),
    Case(
        "autofuse-home-under-a-file",
        _search(workdir=None),
        ["AUTOFUSE_HOME", "is a file"],
        env={"AUTOFUSE_HOME": "{tmp}/afile/home"},
        setup=_write("afile", "x"),
    ),
    Case(
        "workdir-read-only",
        _search(),
        ["--workdir", "is read-only"],
        setup=_read_only_home,
        unprivileged=True,
    ),
    Case(
        "autofuse-home-read-only",
        _search(workdir=None),
        ["AUTOFUSE_HOME", "is read-only"],
        env={"AUTOFUSE_HOME": "{work}"},
        setup=_read_only_home,
        unprivileged=True,
    ),
    Case(
        "cwd-read-only",
        _search(workdir=None),
        ["--workdir", "(the current directory)", "is read-only"],
        setup=_read_only_home,
        unprivileged=True,
        cwd="{work}",
    ),
    # ---- search spaces written by the user ------------------------------------------------------
    _space_case("epochs-0", "training: {epochs: 0}", "training.epochs", "at least 1 epoch"),
    _space_case("batch-size-0", "training: {batch_size: [32, 0]}", "training.batch_size[1]"),
    _space_case("batch-size-empty", "training: {batch_size: []}", "training.batch_size", "empty"),
    _space_case("lr-negative", "training: {lr: -0.001}", "training.lr", "greater than 0"),
    _space_case(
        "lr-low-above-high", "training: {lr: {low: 0.1, high: 0.01}}", "training.lr", "low"
    ),
    _space_case("patience-negative", "training: {patience: -1}", "training.patience"),
    _space_case("dropout-1", "training: {head_dropout: [1.0]}", "training.head_dropout[0]"),
    _space_case(
        "fusion-empty-choice",
        "fusion: {encoder_decoder: {early: {params: {hidden: []}}}}",
        "fusion.encoder_decoder.early.params.hidden",
        "empty",
    ),
    _space_case(
        "fusion-points-empty",
        "fusion: {encoder_decoder: {early: {points: []}}}",
        "fusion.encoder_decoder.early.points",
    ),
    _space_case(
        "fusion-width-0",
        "fusion: {encoder_decoder: {early: {params: {hidden: [0]}}}}",
        "fusion.encoder_decoder.early.params.hidden[0]",
    ),
    _space_case(
        "fusion-choice-not-implemented",
        "fusion: {graph: {modality_graph: {params: {conv: [gin]}}}}",
        "fusion.graph.modality_graph.params.conv",
        "gin",
    ),
    _space_case(
        "encoder-modes-empty",
        "encoders: {tabular: [{name: tabular.mlp, modes: []}]}",
        "encoders.tabular[0].modes",
    ),
    _space_case("trials-0", "trials: 0", "trials"),
    _space_case("not-yaml", "training: {epochs: [1, 2", "not valid YAML"),
    # ---- the other commands ---------------------------------------------------------------------
    Case(
        "worker-device",
        ["worker", "--study", "s", "--storage", "sqlite:///{work}/trials/autofuse.db"]
        + ["--device", "cuda:7", "--workdir", "{work}"],
        ["--device 'cuda:7'"],
        setup=_unless(lambda: _gpus() > 7, "8 GPUs"),
    ),
    Case(
        "worker-missing-database",
        ["worker", "--study", "s", "--storage", "sqlite:///{tmp}/none.db", "--workdir", "{work}"],
        ["no study database", "none.db"],
    ),
    Case(
        "worker-trials-0",
        ["worker", "--study", "s", "--storage", "sqlite:///{work}/trials/autofuse.db"]
        + ["--trials", "0", "--workdir", "{work}"],
        ["'--trials'", "0"],
    ),
    Case(
        "worker-unknown-study",
        ["worker", "--study", "nope", "--storage", "sqlite:///{work}/trials/autofuse.db"]
        + ["--workdir", "{work}"],
        ["no study 'nope'"],
    ),
    Case(
        "export-trial-negative",
        ["export", "--study", "s", "--trial", "-1", "--out", "{tmp}/out", "--workdir", "{work}"],
        ["'--trial'", "-1"],
    ),
    Case(
        "export-out-is-a-file",
        ["export", "--study", "s", "--out", "{tmp}/afile", "--workdir", "{work}"],
        ["'--out'", "afile"],
        setup=_write("afile", "x"),
    ),
    Case(
        "export-device",
        ["export", "--study", "s", "--out", "{tmp}/out", "--retrain", "--device", "gpu"]
        + ["--workdir", "{work}"],
        ["--device 'gpu'"],
    ),
    Case(
        "predict-device",
        ["predict", "{work}/trials/s/best", "{good}", "--out", "{tmp}/p.csv", "--device", "cuda:7"],
        ["--device 'cuda:7'"],
        setup=_unless(lambda: _gpus() > 7, "8 GPUs"),
    ),
    Case(
        "predict-out-under-a-file",
        ["predict", "{work}/trials/s/best", "{good}", "--out", "{tmp}/afile/p.csv"],
        ["--out", "afile"],
        setup=_write("afile", "x"),
    ),
    Case(
        "report-device",
        ["report", "--study", "s", "--device", "cuda:7", "--workdir", "{work}"],
        ["--device 'cuda:7'"],
        setup=_unless(lambda: _gpus() > 7, "8 GPUs"),
    ),
    Case(
        "studies-missing-database",
        ["studies", "--workdir", "{tmp}/empty"],
        ["no study database"],
        setup=lambda tmp: (tmp / "empty").mkdir(),
    ),
    Case(
        "studies-storage-password",
        ["studies", "--storage", f"mysql+pymysql://root:{SECRET}@127.0.0.1:9/x"],
        ["root:***@127.0.0.1:9"],
    ),
    Case(
        "leaderboard-top-0",
        ["leaderboard", "--study", "s", "--top", "0", "--workdir", "{work}"],
        ["'--top'"],
    ),
    Case(
        "mlflow-sync-bad-uri",
        ["mlflow", "sync", "--study", "s", "--mlflow-uri", "ftp://x", "--workdir", "{work}"],
        ["--mlflow-uri", "not an MLflow tracking URI"],
    ),
    Case(
        "mlflow-sync-unreachable-password",
        ["mlflow", "sync", "--study", "s", "--workdir", "{work}"]
        + ["--mlflow-uri", f"http://bob:{SECRET}@127.0.0.1:9"],
        ["bob:***@127.0.0.1:9"],
    ),
    Case(
        "predict-mlflow-env",
        ["predict", "models:/s/1", "{good}", "--out", "{tmp}/p.csv"],
        ["MLFLOW_TRACKING_URI", "bob:***@x", "not an MLflow tracking URI"],
        env={"MLFLOW_TRACKING_URI": f"gopher://bob:{SECRET}@x"},
    ),
    Case("demo-trials-0", ["demo", "--trials", "0", "--workdir", "{work}"], ["'--trials'"]),
    # ---- storages (the study database itself) ---------------------------------------------------
    Case(
        "storage-not-a-database",
        _search("--storage", "sqlite:///{tmp}/notes.db"),
        ["notes.db", "not a SQLite database"],
        setup=_write("notes.db", "these are my notes, not a database\n" * 50),
    ),
    Case(
        "storage-foreign-sqlite",
        _search("--storage", "sqlite:///{tmp}/other.db"),
        ["other.db", "another application", "invoices"],
        setup=_foreign_sqlite,
    ),
    Case(
        "storage-read-only",
        _search("--trials", "2", "--storage", "sqlite:///{tmp}/ro/autofuse.db"),
        ["autofuse.db", "read-only"],
        setup=_read_only_store,
        unprivileged=True,
    ),
    # ---- checkpoints and exports ----------------------------------------------------------------
    Case(
        "export-corrupt-checkpoint",
        ["export", "--study", "s", "--trial", "0", "--out", "{tmp}/out", "--workdir", "{work}"],
        ["trial_0.safetensors", "--retrain"],
        setup=_damage("work/trials/s/checkpoints/trial_0.safetensors"),
    ),
    Case(
        "predict-corrupt-weights",
        ["predict", "{tmp}/export", "{good}", "--out", "{tmp}/p.csv"],
        ["export/model.safetensors", "unreadable"],
        setup=_export_then("model.safetensors"),
    ),
    Case(
        "predict-corrupt-architecture",
        ["predict", "{tmp}/export", "{good}", "--out", "{tmp}/p.csv"],
        ["export/architecture.json", "not valid JSON"],
        setup=_export_then("architecture.json"),
    ),
    # ---- datasets with non-finite and mixed-type numbers (tests/data/broken) --------------------
    Case(
        "dataset-inf",
        _search(study="new", dataset="{broken}/inf_in_numeric"),
        ["row 3 (id=s3), column age", "not a finite number"],
    ),
    Case(
        "dataset-overflow",
        _search(study="new", dataset="{broken}/overflow_in_numeric"),
        ["row 2 (id=s2), column age", "1e400"],
    ),
    Case(
        "dataset-nan-literal",
        _search(study="new", dataset="{broken}/nan_literal_in_numeric"),
        ["row 4 (id=s4), column age"],
    ),
    Case(
        "dataset-typo-in-numeric",
        _search(study="new", dataset="{broken}/typo_in_numeric"),
        ["row 5 (id=s5), column age", "'3O' is not a number"],
    ),
    Case(
        "dataset-inf-on-existing-study",
        _search(dataset="{broken}/inf_in_numeric"),
        ["column age"],
    ),
    # issue 18: bit rot (one byte flipped in a weight file's tensor data, its header intact)
    Case(
        "export-bit-flipped-checkpoint",
        ["export", "--study", "s", "--trial", "0", "--out", "{tmp}/out", "--workdir", "{work}"],
        ["trial_0.safetensors", "sha256 mismatch", "--retrain"],
        setup=_rot("work/trials/s/checkpoints/trial_0.safetensors"),
    ),
    Case(
        "predict-bit-flipped-best",
        ["predict", "{work}/trials/s/best", "{good}", "--out", "{tmp}/p.csv"],
        ["best/model.safetensors", "sha256 mismatch", "re-export the model"],
        setup=_rot("work/trials/s/best/model.safetensors"),
    ),
    Case(
        "predict-bit-flipped-export",
        ["predict", "{tmp}/export", "{good}", "--out", "{tmp}/p.csv"],
        ["export/model.safetensors", "sha256 mismatch"],
        setup=_rot("export/model.safetensors", export=True),
    ),
    # issue 18: a process whose work folder lacks the study's files (no shared artifact store)
    Case(
        "search-joins-from-another-workdir",
        _search("--storage", "sqlite:///{work}/trials/autofuse.db", workdir="{tmp}/other"),
        ["study 's' keeps its files", "--workdir", "--artifacts"],
    ),
    Case(
        "worker-joins-from-another-workdir",
        ["worker", "--study", "s", "--storage", "sqlite:///{work}/trials/autofuse.db"]
        + ["--workdir", "{tmp}/other", "--mlflow-uri", "off"],
        ["study 's' keeps its files", "--workdir", "--artifacts"],
    ),
    # issue 18: storages
    Case(
        "storage-plain-postgresql-unreachable",
        _search("--storage", f"postgresql://bob:{SECRET}@127.0.0.1:9/optuna"),
        ["postgresql://bob:***@127.0.0.1:9/optuna", "cannot connect"],
    ),
    Case(
        "storage-plain-mariadb-unreachable",
        _search("--storage", "mariadb://root@127.0.0.1:9/x"),
        ["--storage 'mariadb://root@127.0.0.1:9/x'", "cannot connect"],
    ),
    Case(
        "storage-postgresql-read-only-session",
        _search("--storage", f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test?{PG_READ_ONLY}"),
        ["postgres:***@127.0.0.1:5432/test", "read-only (transaction_read_only is on)"],
        setup=_server(PG_TEST),
    ),
    Case(
        "storage-mariadb-read-only-session",
        _search("--storage", f"{MYSQL_TEST}?{MYSQL_READ_ONLY}"),
        [f"--storage {MYSQL_TEST}?init_command=", "read-only (the session is read-only"],
        setup=_server(MYSQL_TEST),
    ),
    Case(
        "storage-mariadb-select-only-user",
        _search("--storage", MYSQL_TEST.replace("root@", f"{READER}@")),
        [f"{READER}@127.0.0.1:3306/test", f"read-only (the user {READER}@% is granted no INSERT"],
        setup=_select_only_reader,
    ),
    Case(
        "studies-mariadb-read-only-empty",
        ["studies", "--storage", f"{MYSQL_TEST}?{MYSQL_READ_ONLY}"],
        ["read-only", "holds no study yet"],
        setup=_server(MYSQL_TEST),
    ),
    # issue 18: names, targets, arrays
    Case("study-name-trailing-newline", _search(study="new\n"), ["--study 'new\\n'"]),
    Case("study-name-carriage-return", _search(study="new\r"), ["--study 'new\\r'"]),
    Case("study-name-control-char", _search(study="ne\x01w"), ["--study 'ne\\x01w'"]),
    Case(
        "worker-study-name-newline",
        ["worker", "--study", "s\n", "--storage", "sqlite:///{work}/trials/autofuse.db"]
        + ["--workdir", "{work}"],
        ["--study 's\\n'"],
    ),
    Case(
        "export-register-name-newline",
        ["export", "--study", "s\n", "--out", "{tmp}/out", "--register", "--workdir", "{work}"],
        ["--study 's\\n'"],
    ),
    Case(
        "dataset-one-class-target",
        _search(study="new", dataset="{broken}/single_class_target"),
        ["samples.csv, column label", "every training row has the class 'a'"],
    ),
    Case(
        "dataset-constant-regression-target",
        _search(study="new", dataset="{broken}/constant_regression_target"),
        ["samples.csv, column label", "constant on the train split"],
    ),
    Case(
        "dataset-class-only-in-test",
        _search(study="new", dataset="{broken}/class_without_train"),
        ["column label", "class 'c' has no training sample", "the search refuses the dataset"],
    ),
    Case(
        "dataset-npy-nan",
        _search(study="new", dataset="{broken}/nan_in_npy"),
        ["row 2 (id=s2), column watch_path", "ts/2.npy", "nan at [5, 1]"],
    ),
    Case(
        "dataset-npy-inf",
        _search(study="new", dataset="{broken}/inf_in_npy"),
        ["row 4 (id=s4), column watch_path", "ts/4.npy", "-inf at [0, 2]"],
    ),
    Case(
        "dataset-modality-name-newline",
        _search(study="new", dataset="{broken}/newline_in_modality_name"),
        ["dataset.yaml, key modalities", "['review\\n']"],
    ),
    Case(
        "dataset-column-name-newline",
        _search(study="new", dataset="{broken}/newline_in_column_name"),
        ["dataset.yaml, key target.column", "'label\\n'"],
    ),
    # issue 19: group column
    Case(
        "dataset-group-column-missing",
        _search(study="new", dataset="{broken}/unknown_group_column"),
        ["dataset.yaml, key group", "column 'subject' not found in samples.csv"],
    ),
]


# ---- the study every case runs against ----------------------------------------------------------


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A work directory with a finished one-trial study ``s`` (its SQLite store, checkpoints and
    the best model's export), made once; each case runs on a copy."""
    from autofuse.study import search

    work = tmp_path_factory.mktemp("corpus") / "work"
    search(
        GOOD,
        study="s",
        trials=1,
        space=TINY,
        workdir=work,
        progress=False,
        mlflow_uri="off",
        report=False,
    )
    for lock in (work / "trials").glob("*.lock"):  # lock files of the run (not part of a study)
        lock.unlink()
    return work


def _fill(text: str, tmp: Path) -> str:
    return text.format(
        tmp=tmp, work=tmp / "work", good=GOOD, tiny=TINY, broken=BROKEN, SECRET=SECRET
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too): path -> sha256 of the bytes (or
    ``dir``), so any created, removed or changed entry shows."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(case: Case, argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run the command: in this process (click's runner) or, for a case about permissions, in a
    subprocess that cannot write where permissions forbid it (as root: without the
    capabilities that override file permissions)."""
    if not case.unprivileged:
        r = CliRunner().invoke(main, argv, env=env)
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        return r.exit_code, r.output
    cmd = [sys.executable, "-m", "autofuse.cli", *argv]
    if os.geteuid() == 0:
        cmd = [*_unprivileged_root(), *cmd]
    full_env = {k: v for k, v in os.environ.items() if k != "AUTOFUSE_HOME"}
    proc = subprocess.run(
        cmd, env={**full_env, **env}, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def _unprivileged_root() -> list[str]:
    """The command prefix that runs a child as root without the capabilities that override file
    permissions (so a read-only folder is read-only to it), if this machine allows it."""
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    ok = setpriv is not None and subprocess.run([*prefix, "true"], check=False).returncode == 0
    need(ok, "running as root and setpriv cannot drop the file-permission capabilities")
    return prefix


def _restore_rights(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR | (stat.S_IXUSR if p.is_dir() else 0))


def test_corpus_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_invocation(case: Case, finished_study: Path, tmp_path: Path, monkeypatch):
    tmp = tmp_path
    shutil.copytree(finished_study, tmp / "work")
    if case.setup is not None:
        case.setup(tmp)
    cwd = Path(_fill(case.cwd, tmp))
    monkeypatch.chdir(cwd)  # a command that fell back to the cwd would write here: it shows
    monkeypatch.delenv("AUTOFUSE_HOME", raising=False)
    argv = [_fill(a, tmp) for a in case.argv]
    env = {k: _fill(v, tmp) for k, v in case.env.items()}
    before = tree_digest(tmp)
    try:
        code, output = _run(case, argv, env, cwd)
    finally:
        _restore_rights(tmp)
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert "Traceback" not in output, output
    assert code == case.code, output
    assert len(errors) == 1, output
    # the error is the last thing said: one line, or (a dataset's problems) one line and the
    # problems listed under it, indented
    message = lines[errors[0] :]
    assert all(line[:1].isspace() for line in message[1:]), output
    for sub in case.expect:
        assert _fill(sub, tmp) in "\n".join(message), f"{sub!r} not in {message!r}"
    assert SECRET not in output, output
    after = tree_digest(tmp)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the invocation changed or created: {changed}"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://bob:{SECRET}@db.example:5432/optuna",
        f"postgresql+psycopg2://bob:{SECRET}@db/optuna?sslmode=require",
        f"mysql+pymysql://root:{SECRET}@127.0.0.1/x",
        f"http://bob:{SECRET}@mlflow.example:5000",
        f"https://mlflow.example/?token={SECRET}",
        f"postgresql://bob@db/optuna?password={SECRET}",
    ],
)
def test_secrets_are_masked_in_urls_and_messages(url):
    from autofuse._util import first_line, mask_secrets, mask_url

    shown = mask_url(url)
    assert SECRET not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]
    msg = f"cannot connect to {url!r}: refused"
    assert SECRET not in mask_secrets(msg) and "refused" in mask_secrets(msg)
    assert SECRET not in first_line(RuntimeError(msg))


def test_urls_without_secrets_are_shown_as_given():
    from autofuse._util import mask_secrets, mask_url

    for url in ("sqlite:////tmp/a.db", "postgresql://bob@db/optuna", "http://127.0.0.1:5000"):
        assert mask_url(url) == url
    text = "trial 3 at 12:30 by bob@example.org: ok"
    assert mask_secrets(text) == text


def test_log_lines_mask_secrets(caplog):
    """A log line that shows a URL with a password is masked by the CLI's logging set-up."""
    import logging

    from autofuse.cli import _setup_logging

    _setup_logging(0)
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord(
        "autofuse",
        logging.WARNING,
        __file__,
        1,
        "MLflow at %s is down",
        (f"http://u:{SECRET}@h",),
        None,
    )
    assert all(f.filter(record) for f in handler.filters)
    assert SECRET not in record.getMessage() and "u:***@h" in record.getMessage()


@pytest.mark.parametrize(
    "argv",
    [
        ["studies", "--workdir", "{work}"],
        ["leaderboard", "--study", "s", "--workdir", "{work}"],
    ],
    ids=["studies", "leaderboard"],
)
def test_reading_commands_work_in_a_read_only_workdir(argv, finished_study, tmp_path):
    """What is allowed: a finished study in a read-only folder (an archive, a shared mount) can
    still be listed and ranked; only the commands that write refuse it."""
    shutil.copytree(finished_study, tmp_path / "work")
    for p in [tmp_path / "work", *(tmp_path / "work").rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    case = Case("read-only-read", argv, [], unprivileged=True)
    before = tree_digest(tmp_path)
    try:
        code, output = _run(case, [_fill(a, tmp_path) for a in argv], {}, tmp_path)
    finally:
        _restore_rights(tmp_path)
    assert code == 0, output
    assert "error:" not in output and "Traceback" not in output, output
    assert tree_digest(tmp_path) == before


def test_device_check_knows_this_machine():
    """Every visible GPU is accepted, the next index is not (on a machine without a GPU: no
    CUDA device at all); a misspelt device is refused."""
    import torch

    from autofuse.errors import ConfigError
    from autofuse.options import check_device

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert check_device("cpu") == "cpu"
    for ok in [f"cuda:{i}" for i in range(n)] + (["cuda"] if n else []):
        assert check_device(ok) == ok
    with pytest.raises(ConfigError, match=f"--device 'cuda:{n}'"):
        check_device(f"cuda:{n}")
    for bad in ("gpu", "cuda:x", "CUDA", "cpu:3", "cuda:-1", ""):
        with pytest.raises(ConfigError, match="not a device"):
            check_device(bad)


def test_search_api_checks_options_before_writing(tmp_path):
    """The same checks hold for ``autofuse.search()``: nothing is written."""
    from autofuse.errors import ConfigError
    from autofuse.study import search

    bad = [
        {"device": "cuda:99"},
        {"seed": -3},
        {"trial_timeout": float("inf")},
        {"heartbeat_interval": 30, "grace_period": 10},
        {"storage": f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:9/x"},
        {"mlflow_uri": "smtp://mail"},
    ]
    for changes in bad:
        with pytest.raises(ConfigError) as e:
            search(GOOD, study="s", space=TINY, workdir=tmp_path / "w", progress=False, **changes)
        assert SECRET not in str(e.value)
    assert not (tmp_path / "w").exists()


def test_unreachable_mlflow_warning_masks_the_password(caplog, tmp_path):
    """MLflow that does not answer is documented as a warning (the search goes on); the
    warning shows the URI without its password."""
    import logging

    from autofuse.storage.mlflow import MlflowTracker

    with caplog.at_level(logging.WARNING):
        tracker = MlflowTracker(f"http://bob:{SECRET}@127.0.0.1:9", "s", probe_timeout=2)
    assert not tracker.available
    text = caplog.text
    assert "bob:***@127.0.0.1:9" in text and SECRET not in text
