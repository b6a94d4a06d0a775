"""Storages autofuse must not write into (issue 12), refused before anything is written.

Real files and real servers: a SQLite "database" of random bytes, a read-only SQLite file or
folder, and SQLite / PostgreSQL / MariaDB databases that belong to another application (their own
tables only, or a table named like one of Optuna's with other columns). Each is refused with one
line naming the storage (password masked), exit code 2, and afterwards the database is exactly
what it was (same bytes, or the same tables and rows) and nothing was created beside it. An
empty database, an Optuna one and one that also holds other tables are accepted; a read-only
file holding a study can still be read (``autofuse studies``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from ci import need
from click.testing import CliRunner

from autofuse.cli import main
from autofuse.errors import ConfigError, DamagedFileError
from autofuse.storage.guard import check_storage
from autofuse.storage.history import HistoryStore
from autofuse.storage.sql import make_storage

TINY = Path(__file__).parents[1] / "spaces" / "tiny.yaml"
SECRET = "s3cr3t-guard"

FOREIGN = {
    # another application's tables only
    "own-tables": [
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)",
        "INSERT INTO invoices VALUES (1, 9.5)",
    ],
    # a table with Optuna's name and other columns
    "same-name": [
        "CREATE TABLE studies (id INTEGER PRIMARY KEY, title VARCHAR(40))",
        "INSERT INTO studies VALUES (1, 'mine')",
    ],
    # Alembic's version table (any Alembic user has one) beside its own tables
    "alembic-user": [
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
        "INSERT INTO alembic_version VALUES ('ae1027a6acf')",
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, body VARCHAR(40))",
    ],
}
EXPECT = {
    "own-tables": ["another application", "invoices"],
    "same-name": ["its table 'studies' is not Optuna's or autofuse's", "title"],
    "alembic-user": ["another application", "alembic_version, posts"],
}


def _search(demo_dataset, storage: str, work: Path) -> list[str]:
    return [
        "search", str(demo_dataset), "--study", "s", "--trials", "1", "--space", str(TINY),
        "--storage", storage, "--workdir", str(work), "--mlflow-uri", "off", "--no-progress",
    ]  # fmt: skip


def _invoke(argv: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(main, argv)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


def _error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.iterdir())
    }


def _sql(url: str, statements: list[str]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        for s in statements:
            c.execute(sa.text(s))
    engine.dispose()


def _contents(url: str) -> dict[str, list]:
    """Every table of the database with its rows (what 'unchanged' means on a server)."""
    engine = sa.create_engine(url)
    with engine.connect() as c:
        out = {
            t: sorted(map(tuple, c.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
            for t in sa.inspect(c).get_table_names()
        }
    engine.dispose()
    return out


# ---- SQLite files --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_sqlite_of_another_application_is_refused_untouched(demo_dataset, tmp_path, kind):
    db = tmp_path / "db" / "other.db"
    db.parent.mkdir()
    _sql(f"sqlite:///{db}", FOREIGN[kind])
    before = _digest(db.parent)

    code, out = _invoke(_search(demo_dataset, f"sqlite:///{db}", tmp_path / "work"))

    assert code == 2
    line = _error_line(out)
    assert f"--storage sqlite:///{db}" in line
    for part in EXPECT[kind]:
        assert part in line, line
    assert _digest(db.parent) == before  # the same bytes, nothing beside it (no lock file)


@pytest.mark.parametrize(
    "content",
    [b"these are my notes, not a database\n" * 50, os.urandom(4096), b"SQLite format 2\x00" * 8],
    ids=["text", "random", "near-header"],
)
def test_a_file_that_is_not_a_database_is_refused_untouched(demo_dataset, tmp_path, content):
    db = tmp_path / "db" / "notes.db"
    db.parent.mkdir()
    db.write_bytes(content)
    before = _digest(db.parent)
    for argv in (
        _search(demo_dataset, f"sqlite:///{db}", tmp_path / "work"),
        ["studies", "--storage", f"sqlite:///{db}"],  # a command that only reads: the same
    ):
        code, out = _invoke(argv)
        assert code == 2
        assert _error_line(out) == f"error: {db}: not a SQLite database (it holds other data); " + (
            "use another --storage file"
        )
    with pytest.raises(DamagedFileError) as e:
        HistoryStore(f"sqlite:///{db}")
    assert e.value.path == str(db)
    assert _digest(db.parent) == before


def test_a_damaged_sqlite_database_is_named(tmp_path):
    """A SQLite file whose header is right but whose pages are not (a torn copy)."""
    db = tmp_path / "torn.db"
    _sql(f"sqlite:///{db}", FOREIGN["own-tables"])
    data = bytearray(db.read_bytes())
    data[100:4096] = bytes(len(data[100:4096]))  # the schema page zeroed
    db.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="cannot be read as a SQLite database") as e:
        check_storage(f"sqlite:///{db}")
    assert e.value.path == str(db)


def _study_db(url: str) -> None:
    """A database autofuse set up, holding one (empty) study ``kept``."""
    HistoryStore(url)
    optuna.create_study(study_name="kept", storage=make_storage(url))


def test_accepted_empty_optuna_and_shared_databases(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # SQLite's own empty database
    optuna_only = tmp_path / "optuna.db"
    optuna.create_study(study_name="o", storage=f"sqlite:///{optuna_only}")
    shared = tmp_path / "shared.db"
    optuna.create_study(study_name="o", storage=f"sqlite:///{shared}")
    _sql(f"sqlite:///{shared}", FOREIGN["own-tables"])  # beside Optuna's: its owner's business
    for db in (empty, optuna_only, shared, tmp_path / "new" / "new.db"):
        url = f"sqlite:///{db}"
        HistoryStore(url)  # creates autofuse's tables
        make_storage(url)  # creates Optuna's (or finds them)
        assert sa.inspect(sa.create_engine(url)).has_table("autofuse_trials"), db
    assert optuna.get_all_study_names(f"sqlite:///{shared}") == ["o"]
    assert _contents(f"sqlite:///{shared}")["invoices"] == [(1, 9.5)]


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions hold (as root: without the capabilities
    that override them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    ok = setpriv is not None and subprocess.run([*prefix, "true"], check=False).returncode == 0
    need(ok, "running as root and setpriv cannot drop the file-permission capabilities")
    return prefix


def _cli(argv: list[str]) -> tuple[int, str]:
    r = subprocess.run(
        [*_unprivileged(), sys.executable, "-m", "autofuse.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "AUTOFUSE_HOME"},
    )
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_sqlite_is_said_to_be_read_only(demo_dataset, tmp_path, what):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "autofuse.db"
    _study_db(f"sqlite:///{db}")
    for lock in folder.glob("*.lock"):
        lock.unlink()
    target = db if what == "file" else folder
    mode = target.stat().st_mode
    target.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = _digest(folder)
        code, out = _cli(_search(demo_dataset, f"sqlite:///{db}", tmp_path / "work"))
        assert code == 2, out
        line = _error_line(out)
        assert f"--storage sqlite:///{db}" in line and "read-only" in line
        assert str(target) in line
        # reading the study is fine: `studies` lists it
        code, out = _cli(["studies", "--storage", f"sqlite:///{db}"])
        assert code == 0 and "kept" in out, out
        assert _digest(folder) == before
    finally:
        target.chmod(mode)


def test_a_new_database_in_a_read_only_folder_is_refused(demo_dataset, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, out = _cli(_search(demo_dataset, f"sqlite:///{folder}/sub/new.db", tmp_path / "w"))
        assert code == 2, out
        line = _error_line(out)
        assert f"the folder {folder} is read-only" in line and "new.db" in line
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# ---- PostgreSQL and MariaDB ----------------------------------------------------------------------


@pytest.fixture(params=["postgresql", "mysql"])
def server_db(request):
    from tests_storage_db import fresh_database

    url, drop = fresh_database(request.param)
    yield request.param, url
    drop()


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_server_database_of_another_application_is_refused_untouched(
    server_db, demo_dataset, tmp_path, kind
):
    backend, url = server_db
    _sql(url, FOREIGN[kind])
    before = _contents(url)
    if backend == "postgresql":  # trust authentication: any password is accepted, and masked
        url = url.replace("postgres@", f"postgres:{SECRET}@")

    code, out = _invoke(_search(demo_dataset, url, tmp_path / "work"))

    assert code == 2
    line = _error_line(out)
    assert SECRET not in out
    shown = url.replace(SECRET, "***")
    assert f"--storage {shown}" in line
    for part in EXPECT[kind]:
        assert part in line, line
    assert _contents(url) == before  # no table created, no row changed


def test_server_database_autofuse_set_up_is_accepted(server_db):
    _, url = server_db
    _study_db(url)
    check_storage(url, write=True)
    HistoryStore(url)
    assert optuna.get_all_study_names(make_storage(url)) == ["kept"]


def test_read_only_postgresql_is_said_to_be_read_only(demo_dataset, tmp_path):
    from tests_storage_db import fresh_database

    url, drop = fresh_database("postgresql")
    try:
        _study_db(url)
        name = url.rsplit("/", 1)[1]
        _sql(url, [f"ALTER DATABASE {name} SET default_transaction_read_only = on"])
        before = _contents(url)
        code, out = _invoke(_search(demo_dataset, url, tmp_path / "work"))
        assert code == 2
        line = _error_line(out)
        assert "read-only" in line and name in line
        with pytest.raises(ConfigError, match="read-only"):
            HistoryStore(url)
        assert optuna.get_all_study_names(make_storage(url)) == ["kept"]  # reading is fine
        assert _contents(url) == before
    finally:
        drop()


#: a MariaDB / MySQL session made read-only by its URL (PyMySQL runs it on every connection)
READ_ONLY_SESSION = "init_command=SET%20SESSION%20TRANSACTION%20READ%20ONLY"


@pytest.mark.parametrize("how", ["session", "select-only-user"])
def test_read_only_mariadb_is_said_to_be_read_only(demo_dataset, tmp_path, how):
    """Issue 18: a MariaDB database the connection cannot write (a read-only session, a user
    granted only SELECT) is refused before anything is written, as on PostgreSQL; reading an
    existing study from it is fine."""
    from tests_storage_db import fresh_database, select_only_user

    url, drop = fresh_database("mysql")
    cleanup = [drop]
    try:
        _study_db(url)
        name = url.rsplit("/", 1)[1]
        if how == "session":
            ro, why = f"{url}?{READ_ONLY_SESSION}", "the session is read-only"
        else:
            ro, drop_user = select_only_user(url)
            cleanup.insert(0, drop_user)
            why = "is granted no INSERT on it"
        before = _contents(url)
        code, out = _invoke(_search(demo_dataset, ro, tmp_path / "work"))
        assert code == 2
        line = _error_line(out)
        assert "read-only" in line and name in line and why in line, line
        with pytest.raises(ConfigError, match="read-only"):
            HistoryStore(ro)
        assert optuna.get_all_study_names(make_storage(ro)) == ["kept"]  # reading is fine
        assert _contents(url) == before
    finally:
        for f in cleanup:
            f()


def test_empty_read_only_mariadb_is_refused_for_reading_too():
    """Optuna would create its tables in an empty database even to read it."""
    from tests_storage_db import fresh_database, select_only_user

    url, drop = fresh_database("mysql")
    ro, drop_user = select_only_user(url)
    try:
        with pytest.raises(ConfigError, match="read-only .*holds no study yet"):
            make_storage(ro)
        check_storage(url, write=True)  # root may write: accepted
        assert _contents(url) == {}
    finally:
        drop_user()
        drop()
