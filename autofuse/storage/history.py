"""autofuse's own trial history in SQL (tables prefixed ``autofuse_``), beside Optuna's tables.

Optuna's storage holds what the sampler needs; these tables hold the full record of every trial
(spec, family / method / point, encoders, metrics and per-epoch curve, parameter count, latency,
timings, device, worker, status and reason, MLflow run id) in a form that leaderboards, reports
and other tools can query directly. The schema is versioned with Alembic (migrations ship in
``autofuse/storage/migrations``, version table ``autofuse_alembic_version``). A brand-new
database is created at the current version; an older one must be upgraded explicitly with
``autofuse db upgrade``.

Structure after Optuna's ``storages/_rdb``: SQLAlchemy models, one session context manager.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import orm

from autofuse._util import first_line, json_text, mask_url, utcnow
from autofuse.errors import ConfigError
from autofuse.storage.guard import check_storage
from autofuse.storage.lock import SchemaLock, holding
from autofuse.storage.models import EpochModel, StudyModel, TrialModel
from autofuse.storage.proxy import HEARTBEAT_ATTR
from autofuse.storage.sql import engine_kwargs_for, ensure_sqlite_dir, immediate_transactions

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "autofuse_alembic_version"


@dataclass
class StudyRecord:
    name: str
    dataset_fingerprint: str | None
    dataset_info: dict | None
    dataset_path: str | None
    space: dict | None
    metric: str | None
    direction: str | None
    created_at: dt.datetime | None
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None


@dataclass
class TrialRecord:
    number: int
    status: str
    reason: str | None = None
    error: str | None = None
    baseline: str | None = None
    family: str | None = None
    method: str | None = None
    point: str | None = None
    encoders: dict | None = None
    spec: dict | None = None
    value: float | None = None
    val_metrics: dict | None = None
    test_metrics: dict | None = None
    history: list[dict] = field(default_factory=list)
    n_params: int | None = None
    latency_ms: float | None = None
    train_time_s: float | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    device: str | None = None
    worker: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    retry_of: int | None = None
    resumed_from_epoch: int | None = None
    mlflow_run_id: str | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    stage: str | None = None
    low_fidelity: bool | None = None
    #: peak CUDA memory the trial allocated (MiB); None on the CPU
    peak_gpu_mb: float | None = None
    #: how ``value`` was measured (a K-fold selection estimate: per-fold scores and losses);
    #: None: on the validation split
    selection: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("started_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d

    @classmethod
    def from_optuna(cls, t: Any) -> TrialRecord:
        """The record of an Optuna ``FrozenTrial`` from the user attributes the search writes
        under the same names (for databases written before autofuse's own tables existed)."""
        u = t.user_attrs
        fields = {f: u.get(f) for f in TRIAL_FIELDS if f in u}
        return cls(
            **{
                **fields,
                "number": t.number,
                "status": t.state.name,
                "value": t.value,
                "history": u.get("history") or [],
                "started_at": t.datetime_start,
                "finished_at": t.datetime_complete,
            }
        )


TRIAL_FIELDS = [c.name for c in TrialModel.__table__.columns if c.name not in ("id", "study_id")]


def _alembic_config(connection):
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


class HistoryStore:
    """Reads and writes autofuse's trial history on any SQLAlchemy URL.

    Args:
        url: SQLAlchemy URL (usually the same database as the Optuna storage).
        create: create the tables on a database that has none yet (at the current version).
        check: verify the schema version now (``autofuse db upgrade`` opens without it).
    """

    def __init__(self, url: str, *, create: bool = True, check: bool = True) -> None:
        self.url = url
        check_storage(url, write=create)  # refused before a table is created (storage/guard.py)
        ensure_sqlite_dir(url)
        try:
            self.engine = sa.create_engine(
                url,
                # strict JSON columns: a NaN metric is stored as null (PostgreSQL refuses NaN)
                json_serializer=lambda obj: json_text(obj, indent=None),
                **engine_kwargs_for(url),
            )
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
            raise ConfigError(
                f"--storage {mask_url(url)!r}: not a usable SQLAlchemy URL ({first_line(e)})"
            ) from None
        if url.startswith("sqlite") and ":memory:" not in url:
            immediate_transactions(self.engine)  # read-then-insert (study row, trial row) is atomic
        self._sessions = orm.sessionmaker(bind=self.engine, expire_on_commit=False)
        if check:
            self.check(create=create)

    def close(self) -> None:
        """Close the pooled connections (the store still works: it reconnects when used)."""
        self.engine.dispose()

    # ---- schema ---------------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()

    def check(self, create: bool = True) -> None:
        """Create a fresh schema, accept the current one, refuse an old one with a clear message.

        Creating the tables runs under :class:`~autofuse.storage.lock.SchemaLock`: processes
        opening a new database at the same instant create them once (the others wait, then find
        them current)."""
        rev = self._revision_or_error()
        if rev == head_revision():
            return
        if create:
            # another process may be creating the tables right now (on MySQL / MariaDB every
            # step of a migration commits, so its version shows mid-way): wait for it, look again
            with holding(SchemaLock(self.url)):
                rev = self._revision_or_error()
                if rev is None:
                    if sa.inspect(self.engine).has_table("autofuse_trials"):
                        raise ConfigError(
                            f"{mask_url(self.url)}: autofuse tables exist without a schema "
                            "version; run `autofuse db upgrade`"
                        )
                    self._upgrade()
                    return
        self._refuse(rev)

    def _revision_or_error(self) -> str | None:
        try:
            return self.current_revision()
        except sa.exc.OperationalError as e:
            raise ConfigError(
                f"--storage {mask_url(self.url)!r}: cannot connect ({first_line(e)})"
            ) from None

    def _refuse(self, rev: str | None) -> None:
        head = head_revision()
        if rev == head:
            return
        if rev is None:
            raise ConfigError(
                f"{mask_url(self.url)}: no autofuse tables; run `autofuse db upgrade`"
            )
        raise ConfigError(
            f"{mask_url(self.url)}: the autofuse tables are at schema version {rev}, this "
            f"autofuse needs {head}; run `autofuse db upgrade --storage URL` first"
        )

    def upgrade(self) -> tuple[str | None, str]:
        """Run the Alembic migrations up to the newest version; returns (before, after)."""
        with holding(SchemaLock(self.url)):
            before = self.current_revision()
            self._upgrade()
            return before, self.current_revision() or ""

    def _upgrade(self) -> None:
        """The migrations (the caller holds the schema lock)."""
        with self.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")

    @contextmanager
    def session(self) -> Iterator[orm.Session]:
        """One transaction: commit on success, roll back on error (Optuna's ``_create_scoped_session``)."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except Exception:
            s.rollback()
            raise
        finally:
            s.close()

    # ---- writes ---------------------------------------------------------------------------------
    def upsert_study(self, name: str, **fields: Any) -> None:
        """Create or update the study's row. Two processes creating the same study at once: the
        second insert violates the unique name, and is retried as an update of the first's row."""
        for attempt in (1, 2):
            try:
                with self.session() as s:
                    row = s.scalar(sa.select(StudyModel).where(StudyModel.name == name))
                    if row is None:
                        row = StudyModel(name=name, created_at=utcnow())
                        s.add(row)
                    for k, v in fields.items():
                        setattr(row, k, v)
                return
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise

    def _study_id(self, s: orm.Session, name: str) -> int:
        sid = s.scalar(sa.select(StudyModel.id).where(StudyModel.name == name))
        if sid is None:
            raise KeyError(f"study {name!r} is not in the autofuse history")
        return sid

    def _trial(self, s: orm.Session, study: str, number: int) -> TrialModel | None:
        sid = self._study_id(s, study)
        return s.scalar(
            sa.select(TrialModel).where(TrialModel.study_id == sid, TrialModel.number == number)
        )

    def record_trial(self, study: str, number: int, **fields: Any) -> None:
        """Insert or update one trial's record (only the given fields change)."""
        bad = set(fields) - set(TRIAL_FIELDS)
        if bad:
            raise ValueError(f"unknown trial fields {sorted(bad)}")
        with self.session() as s:
            row = self._trial(s, study, number)
            if row is None:
                row = TrialModel(
                    study_id=self._study_id(s, study),
                    number=number,
                    status=fields.get("status", "RUNNING"),
                )
                s.add(row)
            for k, v in fields.items():
                setattr(row, k, v)

    def log_epoch(self, study: str, number: int, epoch: int, metrics: dict[str, float]) -> None:
        with self.session() as s:
            row = self._trial(s, study, number)
            if row is None:
                raise KeyError(f"trial {number} of {study!r} is not recorded")
            ep = s.scalar(
                sa.select(EpochModel).where(
                    EpochModel.trial_id == row.id, EpochModel.epoch == epoch
                )
            )
            if ep is None:
                s.add(EpochModel(trial_id=row.id, epoch=epoch, metrics=dict(metrics)))
            else:
                ep.metrics = dict(metrics)

    # ---- reads ----------------------------------------------------------------------------------
    def study(self, name: str) -> StudyRecord | None:
        with self.session() as s:
            row = s.scalar(sa.select(StudyModel).where(StudyModel.name == name))
            return None if row is None else _study_record(row)

    def studies(self) -> list[StudyRecord]:
        with self.session() as s:
            return [
                _study_record(r) for r in s.scalars(sa.select(StudyModel).order_by(StudyModel.id))
            ]

    def trials(self, name: str) -> list[TrialRecord]:
        """Every recorded trial of a study, by number, with its per-epoch curve."""
        with self.session() as s:
            sid = s.scalar(sa.select(StudyModel.id).where(StudyModel.name == name))
            if sid is None:
                return []
            rows = list(
                s.scalars(
                    sa.select(TrialModel)
                    .where(TrialModel.study_id == sid)
                    .order_by(TrialModel.number)
                )
            )
            epochs: dict[int, list[dict]] = {}
            q = (
                sa.select(EpochModel)
                .join(TrialModel, EpochModel.trial_id == TrialModel.id)
                .where(TrialModel.study_id == sid)
                .order_by(EpochModel.epoch)
            )
            for ep in s.scalars(q):
                epochs.setdefault(ep.trial_id, []).append({"epoch": ep.epoch, **(ep.metrics or {})})
            return [
                TrialRecord(
                    **{f: getattr(r, f) for f in TRIAL_FIELDS}, history=epochs.get(r.id, [])
                )
                for r in rows
            ]


def _study_record(row: StudyModel) -> StudyRecord:
    return StudyRecord(
        name=row.name,
        dataset_fingerprint=row.dataset_fingerprint,
        dataset_info=row.dataset_info,
        dataset_path=row.dataset_path,
        space=row.space,
        metric=row.metric,
        direction=row.direction,
        created_at=row.created_at,
        mlflow_experiment_id=row.mlflow_experiment_id,
        mlflow_parent_run_id=row.mlflow_parent_run_id,
    )


#: trial states that end a trial (Optuna's names; autofuse's records use the same)
FINAL_STATES = ("COMPLETE", "PRUNED", "FAIL")
#: the error of a trial whose worker stopped before it recorded an end
KILLED_ERROR = "worker stopped (missed heartbeats); trial retried"


def repairs(
    records: Iterable[TrialRecord], trials: Iterable[Any]
) -> list[tuple[TrialRecord, dict]]:
    """Records that disagree with their Optuna trial's final state, each with the fields that
    make it agree (Optuna decides: it is what the sampler and the trial count use).

    ``trials``: Optuna ``FrozenTrial`` s (``number``, ``state``, ``value``, ``user_attrs``,
    ``datetime_complete``). A record still RUNNING whose trial Optuna failed lost its worker
    (``killed``, unless the trial's attributes name another reason); a record that ended
    otherwise than Optuna says (an error after the record was written) takes Optuna's state.
    A trial Optuna still runs, or has queued, is left alone."""
    by_number = {t.number: t for t in trials}
    out = []
    for rec in records:
        t = by_number.get(rec.number)
        state = getattr(getattr(t, "state", None), "name", None)
        if state not in FINAL_STATES or rec.status == state:
            continue
        attrs = t.user_attrs or {}
        fields: dict[str, Any] = {
            "status": state,
            "finished_at": rec.finished_at or t.datetime_complete or utcnow(),
        }
        if state == "FAIL" and rec.status == "RUNNING":
            fields["reason"] = attrs.get("reason") or "killed"
            fields["error"] = attrs.get("error") or KILLED_ERROR
        elif state == "FAIL":
            fields["reason"] = "error"
            fields["error"] = f"recorded as {rec.status}, but the trial failed in Optuna"
        else:
            fields["reason"] = attrs.get("reason", rec.reason)
            fields["value"] = t.value
        out.append((rec, fields))
    return out


def reconcile(history: HistoryStore, study: str, trials: Iterable[Any]) -> list[TrialRecord]:
    """Rewrite the records of ``study`` that disagree with Optuna's final states
    (:func:`repairs`); returns the repaired records."""
    fixed = []
    for rec, fields in repairs(history.trials(study), trials):
        history.record_trial(study, rec.number, **fields)
        fixed.append(dataclasses.replace(rec, **fields))
    return fixed


# ---- workers behind the storage proxy ---------------------------------------------------------


def proxied_record(t: Any, as_left: bool = False) -> TrialRecord:
    """The record of a trial run behind the storage proxy, from its Optuna trial (the worker
    keeps it in the trial's user attributes, :class:`ProxyHistory`). A trial that failed without
    a reason lost its worker (the proxy's reaper failed it): ``killed``, or with ``as_left`` the
    RUNNING record its worker left (what :func:`reconcile` repairs)."""
    rec = TrialRecord.from_optuna(t)
    if rec.status == "FAIL" and not t.user_attrs.get("reason"):
        if as_left:
            rec.status = "RUNNING"
        else:
            rec.reason, rec.error = "killed", KILLED_ERROR
    return rec


class ProxyHistory:
    """The trial history of a worker that reaches the study through ``autofuse storage-proxy``
    (``--storage grpc://HOST:PORT``): it has no SQL connection for ``autofuse_trials``, so the
    record lives in the trial's Optuna user attributes (``TrialLog`` writes every field there;
    here the MLflow run id and the per-epoch curve ``history`` too), and the proxy process mirrors
    it into ``autofuse_trials`` (:class:`autofuse.storage.proxy_server.Upkeep`). Same methods as
    :class:`HistoryStore` for a worker: ``record_trial``, ``log_epoch``, ``trials``, ``close``.

    Args:
        storage: the study's ``GrpcStorageProxy``.
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self._ids: dict[tuple[str, int], int] = {}
        self._curves: dict[tuple[str, int], dict[int, dict]] = {}
        self._ended: dict[tuple[str, int], dict[str, Any]] = {}  # final fields written here

    def _trial_id(self, study: str, number: int) -> int:
        key = (study, number)
        if key not in self._ids:
            sid = self.storage.get_study_id_from_name(study)
            self._ids[key] = self.storage.get_trial_id_from_study_id_trial_number(sid, number)
        return self._ids[key]

    def _set_attr(self, study: str, number: int, key: str, value: Any) -> None:
        import optuna  # the proxy is an Optuna storage: Optuna is loaded already

        try:
            self.storage.set_trial_user_attr(self._trial_id(study, number), key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a finished trial keeps its attributes (a repair of a killed trial)

    def record_trial(self, study: str, number: int, **fields: Any) -> None:
        bad = set(fields) - set(TRIAL_FIELDS)
        if bad:
            raise ValueError(f"unknown trial fields {sorted(bad)}")
        if fields.get("mlflow_run_id"):  # not a user attribute of TrialLog's
            self._set_attr(study, number, "mlflow_run_id", fields["mlflow_run_id"])
        if fields.get("status") in FINAL_STATES:
            self._ended.setdefault((study, number), {}).update(fields)

    def log_epoch(self, study: str, number: int, epoch: int, metrics: dict[str, float]) -> None:
        curve = self._curves.setdefault((study, number), {})
        curve[epoch] = {"epoch": epoch, **metrics}
        self._set_attr(study, number, "history", [curve[e] for e in sorted(curve)])

    def trials(self, name: str) -> list[TrialRecord]:
        """The study's records as their workers left them (a killed worker's trial: RUNNING,
        until this process repaired it), by number; queued trials have none."""
        try:
            sid = self.storage.get_study_id_from_name(name)
        except KeyError:
            return []
        out = []
        for t in self.storage.get_all_trials(sid, deepcopy=False):
            if t.state.name == "WAITING":
                continue
            rec = proxied_record(t, as_left=HEARTBEAT_ATTR in t.system_attrs)
            out.append(dataclasses.replace(rec, **self._ended.get((name, t.number), {})))
        return out

    def close(self) -> None:
        """Nothing of its own to close (the worker closes the proxy client)."""


def upgrade_url(url: str) -> tuple[str | None, str]:
    """``autofuse db upgrade``: migrate the autofuse tables at ``url`` to the newest version."""
    return HistoryStore(url, check=False).upgrade()
