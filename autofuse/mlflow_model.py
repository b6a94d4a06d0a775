"""An exported model as an MLflow pyfunc model, registered in the model registry.

    uri = log_pyfunc("exports/demo", registered_name="demo")     # -> "models:/demo/1"
    model = mlflow.pyfunc.load_model("models:/demo/1")
    model.predict(df)                                             # a pandas DataFrame

The export folder (``autofuse export``, or an ensemble export written by
:func:`autofuse.export.write_ensemble_export`) travels as the model's artifact ``export`` and this
file as the model's code (MLflow "models from code": nothing is pickled); :class:`AutofusePyfunc`
loads it with :func:`autofuse.predict.load_dir` (a :class:`~autofuse.predict.Predictor`, or an
:class:`~autofuse.predict.EnsemblePredictor` for an ensemble), so loading and predicting import no
search code (no Optuna). The environment that loads the model needs autofuse
installed (its requirements are recorded), or log with ``bundle_code=True`` to ship autofuse's
source inside the model.

Input: one row per sample with the training dataset's columns (the target column is not needed,
an id column is optional); file-path columns hold absolute paths, or paths relative to the
``root`` given as a predict parameter (``model.predict(df, params={"root": "/data/new"})``) or as
``model_config={"root": ...}`` at load time. Empty cells are missing modalities. Output: the
prediction table of :meth:`Predictor.predict` (id, ``prediction``, ``proba_<class>``), the same
for an ensemble.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from autofuse._util import sqlite_path
from autofuse.data.schema import name_problem
from autofuse.errors import ConfigError
from autofuse.predict import EnsemblePredictor, Predictor, find_export_dir, load_dir
from autofuse.storage.mlflow import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, _global_tracking_uri

log = logging.getLogger(__name__)

#: artifact key of the export folder inside the pyfunc model
ARTIFACT = "export"
#: dependencies that loading and predicting do not need
_SEARCH_ONLY = ("optuna", "alembic", "sqlalchemy", "psycopg2-binary", "pymysql", "rich", "click")


class AutofusePyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of an autofuse export (see the module docstring)."""

    def load_context(self, context) -> None:
        cfg = dict(context.model_config or {})
        self.root = cfg.get("root") or None
        self.bad_files = cfg.get("bad_files") or "error"
        folder = find_export_dir(Path(context.artifacts[ARTIFACT]))
        self.predictor = load_dir(folder, device=cfg.get("device") or None)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.predictor.predict(
            df,
            root=params.get("root") or self.root,
            bad_files=params.get("bad_files") or self.bad_files,
        )


def _members(predictor: Predictor | EnsemblePredictor) -> list[Predictor]:
    """The single models behind ``predictor`` (itself, or an ensemble's members)."""
    return predictor.members if isinstance(predictor, EnsemblePredictor) else [predictor]


def _describe(mi: dict, cols: list[str], inputs: list[ColSpec], example: dict) -> None:
    """Add the input columns ``cols`` of a modality (``dataset_info["modalities"][m]``) to the
    schema ``inputs`` and two example values each to ``example``; columns already there are
    left as they are."""
    state = mi["state"]
    for c in cols:
        if c in example:
            continue
        if mi["type"] == "tabular" and c in state.get("numeric", []):
            j = state["numeric"].index(c)
            inputs.append(ColSpec("double", c))
            example[c] = [float(state["mean"][j]), float(state["mean"][j] + state["std"][j])]
            continue
        inputs.append(ColSpec("string", c))
        if mi["type"] == "tabular":
            cats = state.get("categorical", {}).get(c) or ["unknown"]
            example[c] = [cats[0], cats[-1]]
        elif mi["type"] == "text":
            words = state.get("vocab", [])[:6]
            example[c] = [" ".join(words) or "an example", "another example"]
        else:  # a file: left empty (the modality is missing in the example rows)
            example[c] = [None, None]


def _signature_and_example(predictor: Predictor | EnsemblePredictor) -> tuple[Any, Any]:
    """Input / output schema from the training dataset's columns, and a two-row input example
    built from the saved preprocessing state (file columns left empty: missing modalities, so the
    example predicts without any file). For an ensemble: every column some member reads, each
    described by the first member that reads it."""
    cfg = predictor.dataset_config
    inputs, example = [], {}
    if cfg.get("id_column"):
        inputs.append(ColSpec("string", cfg["id_column"], required=False))
        example[cfg["id_column"]] = ["example-1", "example-2"]
    for member in _members(predictor):
        for m, cols in member.input_columns().items():
            _describe(member.info["modalities"][m], cols, inputs, example)
    outputs = []
    if cfg.get("id_column"):
        outputs.append(ColSpec("string", cfg["id_column"], required=False))
    outputs.append(ColSpec("double" if predictor.task == "regression" else "string", "prediction"))
    for c in predictor.classes or []:
        outputs.append(ColSpec("double", f"proba_{c}"))
    outputs.append(ColSpec("string", "status", required=False))  # bad_files="missing" only
    params = ParamSchema(
        [ParamSpec("root", "string", ""), ParamSpec("bad_files", "string", "error")]
    )
    sig = ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)
    return sig, pd.DataFrame(example)


def _requirements(bundle_code: bool) -> list[str]:
    try:
        reqs = [r for r in requires("autofuse") or [] if "extra ==" not in r]
        own = [] if bundle_code else [f"autofuse=={version('autofuse')}"]
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return [
            "torch",
            "timm",
            "safetensors",
            "pandas",
            "numpy",
            "pillow",
            "scipy",
            "scikit-learn",
            "pydantic",
            "pyyaml",
            "sentence-transformers",
            "mlflow",
        ]
    keep = [r for r in reqs if not r.split(";")[0].strip().lower().startswith(_SEARCH_ONLY)]
    return own + keep


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store: ``<db folder>/mlartifacts/<experiment>`` (as the search's tracker does;
    MLflow would otherwise write into ``./mlruns`` of the current directory)."""
    db = sqlite_path(uri)
    if db is None:
        return None
    safe = re.sub(r"[^\w.\-]", "_", experiment) or "study"
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


_DESCRIBED = ("study", "trial", "family", "method", "point", "retrained")


def _describe_run(predictor: Predictor | EnsemblePredictor) -> tuple[str, dict[str, str], dict]:
    """Run name, run tags and the model's ``autofuse`` metadata for ``predictor``'s export: the
    trial's study, number and architecture; for an ensemble, those of every member with its
    weight."""
    meta = predictor.export
    if not isinstance(predictor, EnsemblePredictor):
        tags = {
            "autofuse.role": "export",
            "autofuse.study": str(meta.get("study")),
            "autofuse.trial": str(meta.get("trial")),
        }
        return f"export-trial-{meta.get('trial')}", tags, {k: meta.get(k) for k in _DESCRIBED}
    members = [
        {**{k: m.export.get(k) for k in _DESCRIBED}, "weight": w}
        for m, w in zip(predictor.members, predictor.weights, strict=True)
    ]
    study = meta.get("study") or members[0]["study"]
    trials = ",".join(str(m["trial"]) for m in members)
    tags = {"autofuse.role": "export", "autofuse.study": str(study), "autofuse.ensemble": trials}
    return f"export-ensemble-{trials}", tags, {"study": study, "ensemble": members}


def log_pyfunc(
    export_dir: str | os.PathLike[str],
    registered_name: str | None = None,
    run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    root: str | None = None,
    device: str | None = None,
    bundle_code: bool = False,
) -> str:
    """Log an export folder as an MLflow pyfunc model and register it.

    Args:
        export_dir: a folder written by ``autofuse export``, or an ensemble export
            (:func:`autofuse.export.write_ensemble_export`).
        registered_name: register the model under this name (a new version each call); None
            only logs it.
        run_id: log into this run; default: the active run, else a new run ``export-trial-<n>``
            in the experiment ``experiment`` (default: the study's name, as the search uses).
        tracking_uri: MLflow tracking (and registry) URI; default: MLflow's current one.
        root: default folder for relative file paths in DataFrames given to ``predict``.
        device: where the loaded model runs (default: CUDA when available); the model config
            ``device`` key, which ``mlflow.pyfunc.load_model(uri, model_config=...)`` can override.
        bundle_code: ship autofuse's source with the model (``code_paths``).

    Returns:
        ``models:/<registered_name>/<version>`` when registered, else the logged model's URI.
    """
    info = log_pyfunc_info(
        export_dir,
        registered_name,
        run_id,
        tracking_uri=tracking_uri,
        experiment=experiment,
        root=root,
        device=device,
        bundle_code=bundle_code,
    )
    if registered_name:
        return f"models:/{registered_name}/{info.registered_model_version}"
    return info.model_uri


def log_pyfunc_info(
    export_dir: str | os.PathLike[str],
    registered_name: str | None = None,
    run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    root: str | None = None,
    device: str | None = None,
    bundle_code: bool = False,
) -> ModelInfo:
    """:func:`log_pyfunc`, returning MLflow's ``ModelInfo`` (``model_uri``,
    ``registered_model_version``): what the search's own registration records."""
    for key, value in (("registered_name", registered_name), ("experiment", experiment)):
        problem = name_problem(value) if isinstance(value, str) else None
        if problem:  # a name ending in a newline would register a model nobody can type
            raise ConfigError(f"{key} {problem}")
    folder = find_export_dir(Path(export_dir).expanduser().absolute())
    predictor = load_dir(folder, device="cpu")
    if any(m.dataset_config is None for m in _members(predictor)):
        raise ConfigError(
            f"{folder}: the export has no dataset config, so a DataFrame cannot be "
            "mapped to modalities; re-export with --dataset DIR"
        )
    sig, example = _signature_and_example(predictor)
    run_name, tags, described = _describe_run(predictor)
    code = [str(Path(__file__).resolve().parent)] if bundle_code else None
    scope = _global_tracking_uri(tracking_uri) if tracking_uri else contextlib.nullcontext()
    with scope:
        if run_id is not None:
            run_ctx = mlflow.start_run(run_id=run_id)
        elif mlflow.active_run() is not None:
            run_ctx = contextlib.nullcontext(mlflow.active_run())
        else:
            client = mlflow.MlflowClient()
            name = experiment or described.get("study") or "autofuse"
            exp = client.get_experiment_by_name(name)
            eid = (
                exp.experiment_id
                if exp is not None
                else client.create_experiment(
                    name,
                    artifact_location=_artifact_location(mlflow.get_tracking_uri(), name),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},  # a model-training experiment
                )
            )
            run_ctx = mlflow.start_run(experiment_id=eid, run_name=run_name, tags=tags)
        with run_ctx:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).resolve()),
                artifacts={ARTIFACT: str(folder)},
                signature=sig,
                input_example=example,
                registered_model_name=registered_name,
                pip_requirements=_requirements(bundle_code),
                code_paths=code,
                model_config={"root": root or "", "bad_files": "error", "device": device or ""},
                metadata={"autofuse": described},
            )
    return info


__all__ = ["ARTIFACT", "AutofusePyfunc", "log_pyfunc", "log_pyfunc_info"]

if __name__ != "autofuse.mlflow_model":  # run by MLflow as the model's code file (models from code)
    mlflow.models.set_model(AutofusePyfunc())
