"""``autofuse`` command line: each command is a thin call into the Python API.

Heavy libraries (torch, optuna, mlflow) are imported inside the commands, so ``autofuse --help``
starts fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import click

from autofuse._util import (  # light: the options module loads it anyway
    folder_problem,
    json_text,
    mask_secrets,
    sqlite_path,
)
from autofuse.errors import AutofuseError, ConfigError
from autofuse.options import SearchOptions, check_device, check_mlflow_uri, check_storage
from autofuse.paths import Paths, check_study_name


class _Group(click.Group):
    """Turns user errors into one clear line and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AutofuseError as e:  # no URL password in any message
            click.secho(f"error: {mask_secrets(e)}", fg="red", err=True)
            sys.exit(e.exit_code)
        except click.UsageError as e:  # a bad option value or a missing one: one line too
            if isinstance(e, click.exceptions.NoArgsIsHelpError):
                raise
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.secho(f"error: {e.format_message()}{hint}", fg="red", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)


def _setup_logging(verbose: int) -> None:
    import os

    # the search shows its own progress display; silence the hub's per-file bars
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault(
        "MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"
    )
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _MaskSecrets) for f in handler.filters):
            handler.addFilter(_MaskSecrets())
    _VERBOSITY["level"] = level if verbose else logging.WARNING


class _MaskSecrets(logging.Filter):
    """Log lines show URLs with their passwords masked (``postgresql://bob:***@db/x``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        masked = mask_secrets(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True


_VERBOSITY = {"level": logging.WARNING}


def _quiet_optuna() -> None:
    """Optuna logs every trial at INFO; the progress display replaces that unless -v. (Called by
    the commands that import Optuna anyway: Optuna resets its logger level on import.)"""
    import optuna

    optuna.logging.set_verbosity(_VERBOSITY["level"])


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="autofuse")
def main(verbose: int) -> None:
    """autofuse: search fusion architectures for multimodal datasets."""
    _setup_logging(verbose)


# ---- search ------------------------------------------------------------------------------------


def _checked(kind: str):
    """A click callback checking an option's value before the command runs (a ConfigError naming
    the option; the same checks as :class:`~autofuse.options.SearchOptions`)."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        flag = param.opts[0] if param.opts else param.name
        if kind == "workdir":  # also when not given: $AUTOFUSE_HOME may be a file
            Paths.resolve(value)
            return value
        if value is None:
            return None
        check = {"device": check_device, "storage": check_storage, "mlflow_uri": check_mlflow_uri}[
            kind
        ]
        return check(value, flag)

    return callback


def _writable(workdir: str | None):
    """The work directory, refused (before anything is written) if outputs cannot go there."""
    return Paths.resolve(workdir).writable()


def _existing_storage(storage: str | None, workdir: str | None) -> None:
    """Commands that read a study: a SQLite storage file that does not exist is an error (it
    is not created empty)."""
    db = sqlite_path(storage or Paths.resolve(workdir).default_storage)
    if db is not None and not db.exists():
        raise AutofuseError(
            f"no study database at {db}; run `autofuse search` first, or pass --workdir or "
            "--storage"
        )


_SEED = click.IntRange(0, 2**31 - 1)

_workdir = click.option(
    "--workdir",
    default=None,
    callback=_checked("workdir"),
    help="Root of trials/ and reports/ (default: $AUTOFUSE_HOME or the cwd).",
)


def _print_result(res) -> None:
    s = res.summary
    click.echo(
        f"study {res.study_name}: {s['trials']['completed']} completed, "
        f"{s['trials']['pruned']} pruned, {s['trials']['failed']} failed "
        f"in {s['wall_time_s']:.0f} s"
    )
    if s.get("best_trial") is None:
        click.echo("no trial completed; nothing exported")
        return
    if s.get("warning"):
        click.secho(f"warning: {s['warning']}", fg="yellow")
    if s.get("stage3_skipped"):
        click.secho(f"note: {s['stage3_skipped']}; the best stage-2 design is the result",
                    fg="yellow")  # fmt: skip
    w = s.get("winner")
    if w:
        kind = "a greedy ensemble of trials " + ", ".join(map(str, w["trials"]))
        click.echo(f"winner: {kind if w['kind'] == 'ensemble' else 'trial ' + str(w['trials'][0])}")
        click.echo(f"  why: {w['why']}")
    spec = s["spec"]
    f = spec["fusion"]
    encs = ", ".join(f"{m}={e['name']}/{e['mode']}" for m, e in spec["encoders"].items())
    click.echo(
        f"best trial {s['best_trial']}: {f['family']}.{f['method']} at {f['point']} [{encs}]"
    )
    click.echo(f"  val:  {_fmt(s['val_metrics'])}")
    click.echo(f"  test: {_fmt(s['test_metrics'])}")
    click.echo(f"results: {res.study_dir / 'summary.json'}")
    rf = s.get("refit_full")
    if rf:
        click.echo(f"refit on train + val: {rf['dir']}")
        click.echo(
            f"  test: {_fmt(rf.get('test'))} (the selected model's: {_fmt(s['test_metrics'])})"
        )
    if s.get("best_dir") is None and "best_dir" in s:  # its checkpoint could not be read
        one = " --trial N" if w and w["kind"] == "ensemble" else ""
        click.echo(
            f"best model: not exported (see the warning above); refit it with "
            f"`autofuse export --study {res.study_name}{one} --retrain --out DIR`"
            + (" (N: one of the ensemble's trials)" if one else "")
        )
    else:
        click.echo(f"best architecture: {res.best_dir / 'architecture.json'}")
        click.echo(f"best weights: {res.best_dir / 'model.safetensors'}")
    if s.get("report", {}).get("html"):
        click.echo(f"report: {s['report']['html']}")
    links = s.get("mlflow") or {}
    if links.get("experiment_url"):  # the Runs page (see autofuse.storage.mlflow.experiment_url)
        click.echo(f"mlflow: {links['experiment_url']}")
        if links.get("ui"):
            click.echo(f"  serve it with: {links['ui']}")
    if links.get("registered_model"):
        click.echo(f"registered model: {links['registered_model']}")


def _fmt(m: dict | None) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in (m or {}).items() if isinstance(v, (int, float)))


def search_options(*names: str):
    """Click options for the named :class:`~autofuse.options.SearchOptions` fields: flag, type,
    choices, default and help all come from the model, so they are written once."""

    def option(name: str):
        f = SearchOptions.model_fields[name]
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        flag = str(extra.get("cli") or "--" + name.replace("_", "-"))
        args = [a for a in get_args(f.annotation) if a is not type(None)] or [f.annotation]
        kind = args[0]
        kw: dict = {"help": f.description, "default": f.default, "show_default": True}
        if flag.startswith("--no-"):  # --no-progress sets progress False
            return click.option(flag, name, flag_value=False, default=True, help=f.description)
        if kind is bool:
            return click.option(flag, name, is_flag=True, **kw)
        if get_origin(kind) is Literal:
            kw["type"] = click.Choice(get_args(kind))
        elif extra.get("text"):  # parsed by the model (e.g. a duration like 20m)
            kw["type"] = str
        elif kind in (int, float):
            kw["type"] = kind
        kw["show_default"] = f.default is not None
        return click.option(flag, name, **kw)

    def deco(fn):
        for name in reversed(names):
            fn = option(name)(fn)
        return fn

    return deco


#: the options of `autofuse search` (in --help order)
SEARCH_OPTIONS = (
    "trials",
    "time_budget",
    "storage",
    "space",
    "sampler",
    "pruner",
    "seed",
    "baselines",
    "trial_timeout",
    "device",
    "force",
    "mlflow_uri",
    "heartbeat_interval",
    "workers",
    "devices",
    "workers_per_device",
    "amp",
    "max_faults",
    "checkpoint_every_s",
    "artifacts",
    "refit_full",
    "progress",
    "workdir",
)


@main.command()
@click.argument("dataset", type=click.Path())
@click.option("--study", required=True, help="Study name; running again resumes it.")
@search_options(*SEARCH_OPTIONS)
def search(dataset, study, **options) -> None:
    """Search fusion architectures for DATASET (a folder with dataset.yaml)."""
    from autofuse.study import search as run_search

    _quiet_optuna()
    _print_result(run_search(dataset, study=study, **options))


@main.command()
@click.option("--study", required=True)
@click.option(
    "--storage",
    required=True,
    callback=_checked("storage"),
    help="The study's SQLAlchemy URL (PostgreSQL / MySQL to scale out).",
)
@click.option(
    "--mlflow-uri",
    default=None,
    callback=_checked("mlflow_uri"),
    help="MLflow tracking server shared by all workers.",
)
@click.option(
    "--device",
    default=None,
    callback=_checked("device"),
    help="cuda, cuda:N or cpu (default: CUDA when available).",
)
@click.option(
    "--dataset", default=None, type=click.Path(), help="Dataset folder, if not at the study's path."
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Total finished trials (default: the study's).",
)
@click.option(
    "--seed", type=_SEED, default=None, help="Sampler seed (default: from the process id)."
)
@click.option(
    "--artifacts",
    default=None,
    help="The study's artifact store as this host reaches it (default: the study's --artifacts).",
)
@_workdir
def worker(study, storage, mlflow_uri, device, dataset, trials, seed, artifacts, workdir) -> None:
    """Join an existing study as one more worker (from this or any machine)."""
    from autofuse.space import SearchSpace
    from autofuse.workers import join_stages, run_worker, worker_config_from_study

    check_study_name(study)
    _writable(workdir)
    _existing_storage(storage, workdir)
    _quiet_optuna()
    cfg = worker_config_from_study(
        study,
        storage,
        workdir=workdir,
        dataset=dataset,
        device=device,
        mlflow_uri=mlflow_uri,
        trials=trials,
        seed=seed,
        artifacts=artifacts,
    )
    if SearchSpace.model_validate(cfg.space).stages.enabled:
        click.echo(f"worker joins the staged study {study} on {cfg.device}")
        join_stages(cfg, progress=sys.stdout.isatty())
    else:
        click.echo(f"worker joins study {study} on {cfg.device} (target {cfg.n_total} trials)")
        run_worker(cfg, progress=sys.stdout.isatty())
    click.echo("study target reached; worker done")


@main.command()
@click.option(
    "--time-budget",
    default="2m",
    show_default=True,
    help="Wall-clock budget of the demo's search (a duration: 90s, 2m, 1h).",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Bound the fusion search to this many trials too (default: the budget alone).",
)
@click.option("--study", default="demo", show_default=True)
@click.option("--space", default="demo", show_default=True)
@_workdir
def demo(time_budget, trials, study, space, workdir) -> None:
    """Generate a small synthetic dataset (image + text + tabular) and search it."""
    from autofuse.data.builders import build_demo
    from autofuse.space import load_space
    from autofuse.study import search as run_search

    check_study_name(study)
    load_space(space)  # a bad space before the demo dataset is written
    _quiet_optuna()
    paths = _writable(workdir)
    folder = build_demo(paths.trials / "demo_data")
    click.echo(f"demo dataset: {folder}")
    res = run_search(
        folder, study=study, trials=trials, time_budget=time_budget, space=space, workdir=workdir
    )
    _print_result(res)


@main.command()
@click.option("--study", required=True, help="Study name.")
@click.option(
    "--storage",
    default=None,
    callback=_checked("storage"),
    help="SQLAlchemy URL (default sqlite:///trials/autofuse.db).",
)
@click.option(
    "--dataset",
    type=click.Path(),
    default=None,
    help="Dataset folder for the robustness test (default: the one the study recorded).",
)
@click.option(
    "--device",
    default=None,
    callback=_checked("device"),
    help="Where to evaluate the finalists (default: CUDA when available).",
)
@click.option("--no-robustness", is_flag=True, help="Skip re-evaluating the finalists.")
@_workdir
def report(study, storage, dataset, device, no_robustness, workdir) -> None:
    """Write the comparison report of a study: reports/<study>/report.html and report.md."""
    from autofuse.report import write_report

    _writable(workdir)

    out = write_report(
        study,
        workdir=workdir,
        storage=storage,
        dataset=dataset,
        robustness=not no_robustness,
        device=device,
    )
    click.echo(f"report: {out['html']}")
    click.echo(f"markdown: {out['markdown']} (figures in {out['figures']})")


# ---- data ----------------------------------------------------------------------------------------


@main.group()
def data() -> None:
    """Validate datasets and build the AV-MNIST-style dataset."""


@data.command("validate")
@click.argument("dataset", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_validate(dataset, as_json) -> None:
    """Check DATASET and print every problem plus a summary."""
    from autofuse.data import validate_dataset

    report = validate_dataset(dataset)
    if as_json:
        click.echo(json_text(report.to_dict()))
    else:
        for line in report.lines():
            click.echo(f"problem: {line}")
        if report.summary:
            _print_dataset_summary(report.summary)
            for note in report.summary.get("notes", []):
                click.echo(f"note: {note}")
    if report.problems:
        click.secho(f"error: {len(report.problems)} problem(s) in {dataset}", fg="red", err=True)
        sys.exit(1)
    if not as_json:
        click.echo(f"ok: {dataset} is a valid dataset")


def _print_dataset_summary(s: dict) -> None:
    from rich.table import Table

    splits = ", ".join(f"{k} {v}" for k, v in s.get("splits", {}).items())
    click.echo(
        f"dataset {s.get('name')}: {s.get('rows')} rows ({splits}), task {s.get('task')}, "
        f"target {s.get('target')}"
    )
    if s.get("classes"):
        counts = s.get("class_counts") or {}
        click.echo(
            f"classes ({len(s['classes'])}): "
            + ", ".join(f"{c} ({counts.get(c, '?')})" for c in s["classes"][:30])
            + (" ..." if len(s["classes"]) > 30 else "")
        )
    t = Table("modality", "type", "missing rate")
    for m, typ in s.get("modalities", {}).items():
        t.add_row(m, typ, f"{100 * s.get('missing_rate', {}).get(m, 0):.1f}%")
    _console().print(t)


@data.command("avmnist")
@click.option(
    "--mnist",
    "mnist_dir",
    required=True,
    type=click.Path(),
    help="Folder with MNIST idx .gz files.",
)
@click.option(
    "--fsdd", "fsdd_dir", required=True, type=click.Path(), help="FSDD folder (recordings/)."
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Output dataset folder.")
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per digit (default: all).",
)
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option(
    "--pca-components",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Image degradation: PCA components kept.",
)
def data_avmnist(mnist_dir, fsdd_dir, out_dir, per_class, seed, pca_components) -> None:
    """Build an AV-MNIST-style dataset (not comparable with the original AV-MNIST)."""
    from autofuse.data.builders import build_avmnist

    out = build_avmnist(
        Path(mnist_dir),
        Path(fsdd_dir),
        Path(out_dir),
        n_per_class=per_class,
        seed=seed,
        pca_components=pca_components,
    )
    click.echo(f"wrote {out}")


# ---- history ---------------------------------------------------------------------------------------

_storage = click.option(
    "--storage",
    default=None,
    callback=_checked("storage"),
    help="SQLAlchemy URL (default sqlite:///trials/autofuse.db).",
)


def _emit(rows: list[dict], fmt: str, columns: list[str] | None = None) -> None:
    import csv

    columns = columns or (list(rows[0]) if rows else [])
    if fmt == "json":
        click.echo(json_text(rows))
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    else:
        from rich.table import Table

        t = Table(*columns)
        for r in rows:
            t.add_row(*[_cell(r.get(c)) for c in columns])
        _console().print(t)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@main.command()
@click.option("--study", required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--by",
    type=click.Choice(["family", "method", "point"]),
    default=None,
    help="Best trial per family / method / fusion point.",
)
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True)
@_storage
@_workdir
def leaderboard(study, fmt, by, top, storage, workdir) -> None:
    """Top trials of a study, best first (from the SQL history)."""
    from autofuse.leaderboard import COLUMNS
    from autofuse.leaderboard import leaderboard as board

    _existing_storage(storage, workdir)
    rows = board(study, storage=storage, workdir=workdir, by=by, top=top)
    if not rows and fmt == "table":
        click.echo(f"study {study}: no completed trial yet")
        return
    _emit(rows, fmt, COLUMNS)


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@_storage
@_workdir
def studies(fmt, storage, workdir) -> None:
    """List the studies in a storage with their status and trial counts."""
    from autofuse.leaderboard import studies as list_studies

    _existing_storage(storage, workdir)
    rows = list_studies(storage=storage, workdir=workdir)
    if not rows and fmt == "table":
        click.echo("no studies")
        return
    _emit(rows, fmt)


@main.command()
@click.option("--study", required=True)
@_storage
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (the dashboard has no login: keep it local or behind a proxy).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@_workdir
def dashboard(study, storage, host, port, workdir) -> None:
    """A live dashboard of a study (optuna-dashboard on its storage) until Ctrl-C."""
    from autofuse.dashboard import locate, serve

    def announce(board) -> None:
        click.echo(f"dashboard of study {board.study}: {board.page}  (Ctrl-C to stop)")

    serve(locate(study, storage=storage, workdir=workdir, host=host, port=port), announce)


@main.command("storage-proxy")
@click.option("--storage", required=True, help="The database URL the workers share.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True)
def storage_proxy(storage, host, port) -> None:
    """Serve a study storage to many workers over gRPC (workers: --storage grpc://HOST:PORT)."""
    from autofuse.storage import make_storage
    from autofuse.storage.proxy import is_grpc
    from autofuse.storage.proxy_server import serve_proxy

    if is_grpc(storage):
        raise ConfigError("storage-proxy --storage: give the database URL, not a grpc:// proxy")
    db = make_storage(storage)  # creates Optuna's tables, so the workers find them
    click.echo(f"storage proxy: workers use --storage grpc://{host}:{port}  (Ctrl-C to stop)")
    serve_proxy(db, host, port, history_url=storage)  # mirrors proxied records into SQL


@main.group()
def db() -> None:
    """Manage autofuse's SQL tables."""


@db.command("upgrade")
@_storage
@_workdir
def db_upgrade(storage, workdir) -> None:
    """Migrate autofuse's tables to the current schema version (Alembic)."""
    from autofuse.leaderboard import storage_url
    from autofuse.storage.history import upgrade_url

    before, after = upgrade_url(storage_url(storage, workdir))
    click.echo(f"autofuse schema: {before or 'none'} -> {after}")


# ---- export and predict ------------------------------------------------------------------------


@main.command()
@click.option("--study", required=True, help="Study name.")
@click.option(
    "--trial",
    type=click.IntRange(min=0),
    default=None,
    help="Trial number (default: the study's best trial).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Export folder (created; an earlier export there is replaced).",
)
@click.option(
    "--storage",
    default=None,
    callback=_checked("storage"),
    help="SQLAlchemy URL (default sqlite:///trials/autofuse.db).",
)
@click.option(
    "--dataset",
    type=click.Path(),
    default=None,
    help="Dataset folder (default: the one the study recorded); gives the export its "
    "column layout and --retrain its data.",
)
@click.option(
    "--retrain",
    is_flag=True,
    help="Refit on train + val (the trial's settings, its best epoch count) first.",
)
@click.option(
    "--refit-full",
    is_flag=True,
    help="Retrain the study's winner (each member of an ensemble) on train + val for the "
    "epoch counts selection found, and export that.",
)
@click.option(
    "--finetune-encoders",
    is_flag=True,
    help="With --retrain: fine-tune the frozen encoders that allow it.",
)
@click.option(
    "--device",
    default=None,
    callback=_checked("device"),
    help="Where to retrain (default: CUDA when available).",
)
@click.option(
    "--register",
    is_flag=True,
    help="Also log the export as an MLflow pyfunc model registered under the study's name.",
)
@click.option(
    "--mlflow-uri",
    default=None,
    callback=_checked("mlflow_uri"),
    help="MLflow tracking URI for --register (default sqlite:///trials/mlflow.db).",
)
@_workdir
def export(
    study,
    trial,
    out_dir,
    storage,
    dataset,
    retrain,
    refit_full,
    finetune_encoders,
    device,
    register,
    mlflow_uri,
    workdir,
) -> None:
    """Export a trial (default: the best) as architecture.json + model.safetensors + model_card.md."""
    from autofuse.export import export_trial

    if folder_problem(out_dir):
        raise AutofuseError(f"--out {out_dir!r}: {folder_problem(out_dir)}")
    if refit_full and trial is not None:
        raise AutofuseError("--refit-full refits the study's winner; for one trial use --retrain")
    if retrain or refit_full or register:  # the data cache and MLflow store live in the workdir
        _writable(workdir)

    res = export_trial(
        study,
        out_dir,
        trial=trial,
        workdir=workdir,
        storage=storage,
        dataset=dataset,
        retrain=retrain,
        finetune_encoders=finetune_encoders,
        device=device,
        refit_full=refit_full,
    )
    what = (
        f"the greedy ensemble of trials {', '.join(map(str, res.members))}"
        if res.members
        else f"trial {res.trial}"
    )
    click.echo(
        f"exported {what} of study {res.study}"
        f"{' (retrained on train + val)' if res.retrained else ''} to {res.out}"
    )
    click.echo(f"  test: {_fmt(res.metrics.get('test'))}")
    if register:
        from autofuse.mlflow_model import log_pyfunc
        from autofuse.storage.mlflow import default_tracking_uri

        uri = log_pyfunc(
            res.out,
            registered_name=study,
            tracking_uri=mlflow_uri or default_tracking_uri(Paths.resolve(workdir).trials),
        )
        click.echo(f"registered: {uri}")


@main.command()
@click.argument("model")
@click.argument("dataset", type=click.Path())
@click.option(
    "--out",
    "out_file",
    default="predictions.csv",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="CSV to write (atomically).",
)
@click.option(
    "--on-bad-file",
    type=click.Choice(["error", "missing"]),
    default="error",
    show_default=True,
    help="A missing or unreadable per-sample file, or a non-finite value or non-number in a "
    "numeric column: fail before writing anything (naming row and column), or predict the row "
    "with that cell missing (a 'status' column names what each row lacked).",
)
@click.option(
    "--device",
    default=None,
    callback=_checked("device"),
    help="cpu, cuda or cuda:N (default: CUDA when available).",
)
@click.option(
    "--mlflow-uri",
    default=None,
    callback=_checked("mlflow_uri"),
    help="MLflow tracking URI for a models:/ or runs:/ MODEL (default: $MLFLOW_TRACKING_URI, "
    "else sqlite:///trials/mlflow.db).",
)
@_workdir
def predict(model, dataset, out_file, on_bad_file, device, mlflow_uri, workdir) -> None:
    """Predict every row of DATASET with MODEL (an export folder or an MLflow model URI)."""
    import os

    from autofuse.predict import is_mlflow_uri, load, write_predictions

    problem = folder_problem(Path(out_file).parent)  # before the model is loaded and run
    if problem:
        raise AutofuseError(f"--out {out_file!r}: its folder {problem}")
    if is_mlflow_uri(model) and not mlflow_uri and os.environ.get("MLFLOW_TRACKING_URI"):
        check_mlflow_uri(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    if is_mlflow_uri(model) and not (mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        from autofuse.storage.mlflow import default_tracking_uri

        mlflow_uri = default_tracking_uri(Paths.resolve(workdir).trials)
    df = load(model, device=device, tracking_uri=mlflow_uri).predict(dataset, bad_files=on_bad_file)
    write_predictions(df, out_file)
    click.echo(f"wrote {len(df)} predictions to {out_file}")


@main.group("mlflow")
def mlflow_group() -> None:
    """MLflow housekeeping."""


@mlflow_group.command("sync")
@click.option("--study", required=True)
@click.option(
    "--mlflow-uri",
    default=None,
    callback=_checked("mlflow_uri"),
    help="Tracking URI (default sqlite:///trials/mlflow.db).",
)
@_storage
@_workdir
def mlflow_sync(study, mlflow_uri, storage, workdir) -> None:
    """Back-fill MLflow runs missing for trials of STUDY (e.g. MLflow was unreachable)."""
    from autofuse.mlflow_study import mlflow_sync as sync

    _existing_storage(storage, workdir)
    if not mlflow_uri:  # the default MLflow store is a file under the work directory
        _writable(workdir)
    created = sync(study, mlflow_uri=mlflow_uri, storage=storage, workdir=workdir)
    click.echo(f"study {study}: {created} MLflow run(s) created")


# ---- registries and spaces -------------------------------------------------------------------------


@main.command()
def fusions() -> None:
    """List the registered fusion methods."""
    from rich.table import Table

    from autofuse.fusion import FUSIONS

    t = Table("method", "family", "points", "hyperparameters", "notes")
    for e in FUSIONS:
        notes = e.meta["description"]
        if e.meta.get("max_modalities"):
            notes += f" (max {e.meta['max_modalities']} modalities)"
        t.add_row(
            e.name,
            e.meta["family"],
            ", ".join(e.meta["points"]),
            _space_str(e.meta["space"]),
            notes,
        )
    _console().print(t)


@main.command()
def encoders() -> None:
    """List the registered encoders."""
    from rich.table import Table

    from autofuse.encoders import get_encoder_entry, list_encoders

    t = Table("encoder", "modality", "modes", "hyperparameters", "notes")
    for e in map(get_encoder_entry, list_encoders()):
        t.add_row(
            e.name,
            e.meta["modality"],
            ", ".join(e.meta["modes"]),
            _space_str(e.meta["space"]),
            e.meta.get("description", ""),
        )
    _console().print(t)


def _console():
    from rich.console import Console

    # full-width tables when piped (to a file, a pager or a test), terminal width otherwise
    return Console() if sys.stdout.isatty() else Console(width=240)


def _space_str(space: dict) -> str:
    parts = []
    for k, v in space.items():
        if isinstance(v, dict):
            parts.append(f"{k}: {v.get('low')}..{v.get('high')}{' log' if v.get('log') else ''}")
        else:
            parts.append(f"{k}: {v}")
    return "; ".join(parts)


@main.group()
def space() -> None:
    """Inspect search spaces."""


@space.command("show")
@click.argument("file", default="default")
def space_show(file) -> None:
    """Print the resolved search space of FILE (a YAML path or bundled name)."""
    import yaml

    from autofuse.space import describe, load_space

    click.echo(yaml.safe_dump(describe(load_space(file)), sort_keys=False))


if __name__ == "__main__":  # pragma: no cover
    main()
