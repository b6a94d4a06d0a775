"""Put an exported model to work: ``autofuse.load(path_or_uri).predict(data)``.

An export folder (``autofuse export``) holds ``architecture.json`` (the spec, the fitted
preprocessing state of every modality, the label encoding, the training dataset's column layout)
and ``model.safetensors`` (every weight, frozen encoders included). This module rebuilds the model
from them and predicts; it imports no search code (no Optuna), so it is what the MLflow pyfunc
model runs too.

An ensemble export (:func:`autofuse.export.write_ensemble_export`) holds ``ensemble.json`` (the
members' folders and weights) and one such export folder per member; :func:`load` recognises it
and returns an :class:`EnsemblePredictor`, which predicts with every member and combines their
outputs (:func:`autofuse.ensemble.combine`) into the same prediction table.

What ``predict`` does with imperfect input:

- a row without a modality (empty cell, or every cell of a multi-column modality empty) is
  predicted through ``present``, like in training;
- a column the model needs is absent from the table: :class:`~autofuse.data.DatasetError` naming
  the modality and the column, before anything is predicted (no silent all-missing fallback);
- a category never seen in training maps to the "unknown" index (0), an unknown word to the
  unknown-word id; both are counted in a warning;
- images of another size or mode are converted to RGB and resized to the encoder's input size
  (bilinear), audio is resampled and cropped / padded, time series resampled, as in training;
- a missing or unreadable per-sample file, a non-finite value (``inf``, ``1e400``, ``nan``) or a
  cell that is not a number in a numeric column: with ``bad_files="error"`` (default) a
  DatasetError listing every such cell (row and column), raised before anything is written (a
  non-finite value the training dataset's ``non_finite: missing`` policy allows counts as
  missing, as in training); with ``bad_files="missing"`` the cell counts as missing (a file: the
  modality is missing in that row; a number: a missing value, with its indicator), the cells are
  reported in a warning (and in ``Predictor.skipped``) and the table gets a ``status`` column:
  ``ok``, or ``missing: <what>`` naming what that row was predicted without;
- a row whose model output is not finite is never written as a prediction: with
  ``bad_files="error"`` a :class:`PredictionError` names the rows; with ``bad_files="missing"``
  the row's prediction and probabilities are empty and its ``status`` says ``failed: ...``;
- an export whose ``model.safetensors`` or ``architecture.json`` cannot be read, whose weights
  changed since they were written (the sha256 recorded in ``model.safetensors``, see
  :mod:`autofuse.weights`), or whose weights do not fit the architecture: a
  :class:`~autofuse.errors.ConfigError` naming the file.

Frozen encoders run for real here (in search their outputs came from the feature cache, stored in
float16); their token and level outputs are rounded through float16 and they run over the present
rows in the same batches as the cache, so a prediction matches the search's evaluation bit for
bit.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from autofuse._util import atomic_write, first_line
from autofuse.data import Dataset, DatasetError
from autofuse.data.validate import find_config, read_config
from autofuse.encoders import get_encoder_entry, prepare_modality
from autofuse.encoders.cache import encoder_features
from autofuse.encoders.preprocess import PreprocessError, _category_key
from autofuse.ensemble import ENSEMBLE_FILE, ENSEMBLE_FORMAT, ENSEMBLE_VERSION, combine
from autofuse.errors import AutofuseError, ConfigError, DamagedFileError
from autofuse.model import build_model
from autofuse.spec import load_architecture
from autofuse.train import TrainData, predict_outputs
from autofuse.weights import read_weights

log = logging.getLogger(__name__)

#: ``architecture.json`` key holding the export metadata (study, trial, metrics, sources)
EXPORT_KEY = "export"
#: rows per frozen-encoder forward pass (the feature cache's batch size: same batches, same bits)
FROZEN_BATCH = 64
#: the column ``bad_files="missing"`` adds: ``ok``, ``missing: ...`` or ``failed: ...``
STATUS_COLUMN = "status"
#: rows listed in a message before "and N more"
LISTED_ROWS = 10


class PredictionError(AutofuseError):
    """Rows that cannot be predicted (the model's output for them is not finite)."""


def is_mlflow_uri(s: str | os.PathLike[str]) -> bool:
    """``models:/NAME/1``, ``runs:/ID/model``, ``mlflow-artifacts:/...`` and other URI schemes."""
    s = str(s)
    if "://" in s and not s.startswith("file://"):
        return True
    return s.split(":", 1)[0] in ("models", "runs", "mlflow-artifacts") and ":/" in s


def _shallowest(hits: list[Path]) -> Path:
    return min(hits, key=lambda p: (len(p.parts), str(p)))


def find_export_dir(folder: Path) -> Path:
    """The export folder in ``folder``: ``folder`` itself or the shallowest one below it (an MLflow
    pyfunc model keeps the export under ``artifacts/``). An ensemble export (``ensemble.json``)
    comes before a single-model one (``architecture.json``), so an ensemble is not mistaken for
    one of its members."""
    for marker in (ENSEMBLE_FILE, "architecture.json"):
        if (folder / marker).is_file():
            return folder
    for marker in (ENSEMBLE_FILE, "architecture.json"):
        hits = list(folder.rglob(marker))
        if hits:
            return _shallowest(hits).parent
    raise ConfigError(f"{folder}: no architecture.json or {ENSEMBLE_FILE} (not an autofuse export)")


def is_ensemble_dir(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is an ensemble export (holds ``ensemble.json``)."""
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def load_dir(
    folder: str | os.PathLike[str], device: str | None = None
) -> Predictor | EnsemblePredictor:
    """Load an export folder as found by :func:`find_export_dir`: an :class:`EnsemblePredictor`
    for an ensemble export, else a :class:`Predictor`."""
    if is_ensemble_dir(folder):
        return EnsemblePredictor.from_dir(folder, device=device)
    return Predictor.from_dir(folder, device=device)


def load(
    path_or_uri: str | os.PathLike[str],
    *,
    device: str | None = None,
    tracking_uri: str | None = None,
) -> Predictor | EnsemblePredictor:
    """Load an exported model (one model, or an ensemble of models) for prediction.

    Args:
        path_or_uri: an export folder (``autofuse export --out DIR``, or an ensemble export
            written by :func:`autofuse.export.write_ensemble_export`), or an MLflow model URI
            (``models:/NAME/1``, ``runs:/RUN_ID/model``) of a model logged by
            :func:`autofuse.mlflow_model.log_pyfunc`.
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: CUDA when available).
        tracking_uri: MLflow tracking URI for ``models:/`` / ``runs:/`` URIs (default: MLflow's
            own, e.g. ``MLFLOW_TRACKING_URI``).
    """
    if is_mlflow_uri(path_or_uri):
        import mlflow  # lazy: only MLflow model URIs need MLflow (seconds to import)

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="autofuse-model-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=str(path_or_uri), dst_path=tmp
                )
            except Exception as e:  # MlflowException, connection errors, ...
                raise ConfigError(
                    f"cannot fetch {path_or_uri} from MLflow: {first_line(e)}"
                ) from None
            return load_dir(find_export_dir(Path(local)), device=device)  # all in memory
    folder = Path(path_or_uri).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such export folder")
    return load_dir(find_export_dir(folder), device=device)


def _loadable_spec(spec):
    """The spec to rebuild the model from files only: timm backbones start from random weights
    (every weight is then read from ``model.safetensors``), so no hub access is needed."""
    encoders = {}
    for m, e in spec.encoders.items():
        if "pretrained" in get_encoder_entry(e.name).obj.defaults:
            e = e.model_copy(update={"params": {**e.params, "pretrained": False}})
        encoders[m] = e
    return spec.model_copy(update={"encoders": encoders})


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "starts from random weights" not in record.getMessage()


def format_predictions(
    outputs: np.ndarray,
    ds,
    task: str,
    classes: list[str] | None,
    separator: str = "|",
) -> pd.DataFrame:
    """The prediction table for raw ``outputs`` of ``ds``'s rows (see :meth:`BasePredictor.predict`).

    ``outputs`` are logits (classification, multilabel; log-probabilities work too) or values on
    the target's scale (regression); float32 outputs are turned into probabilities in float32
    (what a single model's search evaluation does), float64 ones in float64.
    """
    cols: dict[str, Any] = {}
    id_col = ds.config.id_column
    if id_col is not None:
        cols[id_col] = ds.frame[id_col].tolist()
    if task == "regression":
        cols["prediction"] = outputs.reshape(-1).astype(np.float64)
        return pd.DataFrame(cols)
    classes = list(classes or [])
    dtype = np.float64 if outputs.dtype == np.float64 else np.float32
    logits = torch.from_numpy(np.ascontiguousarray(outputs, dtype=dtype))
    if task == "classification":
        proba = torch.softmax(logits, dim=1).numpy()
        cols["prediction"] = [classes[k] for k in outputs.argmax(axis=1)]
    else:
        proba = torch.sigmoid(logits).numpy()
        cols["prediction"] = [
            separator.join(c for c, on in zip(classes, row, strict=True) if on)
            for row in outputs > 0
        ]
    for k, c in enumerate(classes):
        cols[f"proba_{c}"] = proba[:, k].astype(np.float64)
    return pd.DataFrame(cols)


class BasePredictor:
    """What :class:`Predictor` and :class:`EnsemblePredictor` share: :meth:`predict` (read the
    data, run the model, format the table) on top of the subclass's :meth:`dataset` and
    :meth:`predict_outputs`.

    Attributes:
        task / classes: the task and the label encoding (class names, index order).
        skipped: messages for the cells the last ``predict`` treated as missing
            (``bad_files="missing"``).
        warnings: the last ``predict``'s warnings (unseen categories, skipped files).
    """

    task: str
    classes: list[str] | None
    skipped: list[str]
    warnings: list[str]

    @property
    def dataset_config(self) -> dict | None:
        """The training dataset's config (which columns hold which modality), if exported."""
        raise NotImplementedError

    def dataset(
        self, data: Any, *, root: str | os.PathLike[str] | None = None, bad_files: str = "error"
    ):
        """``data`` as a prediction-mode :class:`~autofuse.data.Dataset` for this model."""
        raise NotImplementedError

    def predict_outputs(self, ds) -> np.ndarray:
        """Raw outputs for every row of a prediction-mode dataset."""
        raise NotImplementedError

    def predict(
        self, data: Any, *, root: str | os.PathLike[str] | None = None, bad_files: str = "error"
    ) -> pd.DataFrame:
        """Predict every row of ``data``.

        Args:
            data: a dataset folder, a table file, or a DataFrame (columns as in the training
                dataset; the target column is optional, empty cells are missing modalities).
            root: for a DataFrame, the folder relative file paths are resolved against.
            bad_files: ``"error"`` or ``"missing"`` (see the module docstring).

        Returns:
            One row per input row, in input order: the id column first (when the dataset has
            one), then ``prediction`` (class label / value / labels joined by the target's
            separator) and, for classification and multilabel, ``proba_<class>`` per class;
            with ``bad_files="missing"`` also ``status`` (``ok``, ``missing: ...``,
            ``failed: ...``; a failed row has no prediction and no probabilities).

        Raises:
            DatasetError: a bad cell (``bad_files="error"``), a column the model needs is absent.
            PredictionError: the model's output is not finite for some row
                (``bad_files="error"``).
        """
        self.warnings, self.skipped = [], []
        ds = self.dataset(data, root=root, bad_files=bad_files)
        files = list(getattr(ds, "skipped", []))
        numbers = list(getattr(ds, "skipped_numbers", []))
        self.skipped = files + numbers
        for items, what in ((files, "unreadable file(s)"), (numbers, "bad number(s)")):
            if items:
                self.warnings.append(
                    f"{len(items)} {what} treated as missing: "
                    + "; ".join(items[:LISTED_ROWS])
                    + (" ..." if len(items) > LISTED_ROWS else "")
                )
        outputs = self.predict_outputs(ds)
        failed = ~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)
        if failed.any() and bad_files != "missing":
            rows = np.flatnonzero(failed).tolist()
            listed = "; ".join(ds.row_label(i) for i in rows[:LISTED_ROWS])
            more = f" and {len(rows) - LISTED_ROWS} more" if len(rows) > LISTED_ROWS else ""
            raise PredictionError(
                f"the model's output is not finite for {len(rows)} row(s): {listed}{more}; "
                "check their input values, or use --on-bad-file missing to mark such rows "
                "failed and predict the others"
            )
        for w in self.warnings:
            log.warning("%s", w)
        if failed.any():  # formatted from zeros, then emptied by _with_status
            outputs = outputs.copy()
            outputs[failed] = 0
        df = self.format(outputs, ds)
        if bad_files == "missing":
            df = _with_status(df, ds, failed)
        return df

    def format(self, outputs: np.ndarray, ds) -> pd.DataFrame:
        """The prediction table for raw ``outputs`` of ``ds``'s rows."""
        sep = (self.dataset_config or {}).get("target", {}).get("separator", "|")
        return format_predictions(outputs, ds, self.task, self.classes, sep)


class Predictor(BasePredictor):
    """An exported model ready to predict (see :func:`load`).

    Attributes:
        spec: the :class:`~autofuse.spec.ArchitectureSpec`.
        info: ``dataset_info`` (task, classes, target stats, per-modality preprocessing state,
            the training dataset's config under ``config``).
        export: export metadata (study, trial, metrics, weight sources).
        model: the full :class:`~autofuse.model.MultimodalModel` (eval mode).
        task / classes: the task and the label encoding (class names, index order).
        skipped: messages for the cells the last ``predict`` treated as missing
            (``bad_files="missing"``).
        warnings: the last ``predict``'s warnings (unseen categories, skipped files).
    """

    def __init__(
        self,
        spec,
        info: dict,
        weights: dict[str, torch.Tensor],
        export: dict | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.spec, self.info, self.export = spec, info, export or {}
        self.task: str = info["task"]
        self.classes: list[str] | None = info.get("classes")
        self.device = (
            torch.device(device)
            if device
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        quiet = _Quiet()
        image_log = logging.getLogger("autofuse.encoders.image")
        image_log.addFilter(quiet)
        try:
            model = build_model(_loadable_spec(spec), info)
        finally:
            image_log.removeFilter(quiet)
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # a tensor of the wrong shape
            raise ConfigError(
                f"model.safetensors does not match architecture.json ({first_line(e)})"
            ) from None
        if missing or unexpected:
            raise ConfigError(
                f"model.safetensors does not match architecture.json "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        self.model = model.to(self.device).eval()
        self.skipped: list[str] = []
        self.warnings: list[str] = []

    @classmethod
    def from_dir(cls, folder: str | os.PathLike[str], device: str | None = None) -> Predictor:
        """Read an export folder (``architecture.json`` + ``model.safetensors``)."""
        folder = Path(folder)
        arch = folder / "architecture.json"
        try:
            spec, info = load_architecture(arch)
            doc = json.loads(arch.read_text())
        except AutofuseError:
            raise
        except Exception as e:  # noqa: BLE001 - binary garbage, a missing key, a bad spec, ...
            raise ConfigError(
                f"{arch}: unreadable ({first_line(e)}); re-export the model"
            ) from None
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"{folder}: model.safetensors is missing")
        try:
            state = read_weights(weights)  # checked against the sha256 recorded in it
        except DamagedFileError as e:  # unreadable, or its bytes changed (bit rot)
            raise DamagedFileError(e.path, e.problem, "re-export the model") from None
        except OSError as e:  # gone since the check above
            raise ConfigError(
                f"{weights}: unreadable ({first_line(e)}); re-export the model"
            ) from None
        return cls(spec, info, state, doc.get(EXPORT_KEY), device=device)

    # ------------------------------------------------------------------ data
    @property
    def dataset_config(self) -> dict | None:
        """The training dataset's config (which columns hold which modality), if exported."""
        return self.info.get("config")

    def input_columns(self) -> dict[str, list[str]]:
        """Columns each modality reads (from the training dataset's config)."""
        cfg = self.dataset_config
        if cfg is None:
            raise ConfigError("this export has no dataset config (re-export with --dataset)")
        out = {}
        for m in self.spec.encoders:
            mod = cfg["modalities"][m]
            out[m] = [mod["column"]] if mod.get("column") else list(mod["columns"])
        return out

    def _config_for(self, data: Any) -> dict:
        """The model's modalities only, tabular categories as in training."""
        cfg = self.dataset_config
        if cfg is None:
            if isinstance(data, pd.DataFrame):
                raise ConfigError(
                    "this export has no dataset config, so a DataFrame cannot be "
                    "mapped to modalities; re-export with --dataset, or predict a "
                    "dataset folder with a dataset.yaml"
                )

            own, _, problems = read_config(find_config(data)[1])
            if own is None:
                raise DatasetError(problems, source=str(data))
            cfg = own.model_dump(mode="json")
        cfg = json.loads(json.dumps(cfg))
        mods = {}
        for m, mi in self.info["modalities"].items():
            if m not in cfg["modalities"]:
                raise ConfigError(
                    f"the dataset has no modality {m!r}, which the model needs ({mi['type']})"
                )
            mod = cfg["modalities"][m]
            if mod["type"] != mi["type"]:
                raise ConfigError(
                    f"modality {m!r} is {mod['type']} here but {mi['type']} in the model"
                )
            state = mi["state"]
            if mi["type"] == "tabular" and state.get("kind") == "tabular":
                mod["categorical"] = list(state["categorical"])
                mod["numeric"] = list(state["numeric"])  # a typo is reported, not re-typed
            mods[m] = mod
        cfg["modalities"] = mods
        return cfg

    def dataset(
        self, data: Any, *, root: str | os.PathLike[str] | None = None, bad_files: str = "error"
    ):
        """``data`` as an :class:`~autofuse.data.Dataset` in prediction mode (see
        :meth:`Dataset.for_prediction`), checked against what the model needs."""
        ds = Dataset.for_prediction(data, self._config_for(data), root=root, bad_files=bad_files)
        self._check_dataset(ds)
        return ds

    def _check_dataset(self, ds) -> None:
        """Tabular columns numeric in training must be numeric in ``ds``."""
        for m, mi in self.info["modalities"].items():
            state = mi["state"]
            if mi["type"] == "tabular" and state.get("kind") == "tabular":
                numeric, _ = ds.tabular_columns(m)
                wrong = [c for c in state["numeric"] if c not in numeric]
                if wrong:
                    raise ConfigError(
                        f"modality {m!r}: column(s) {wrong} hold non-numeric values "
                        "but were numeric in training"
                    )

    # ------------------------------------------------------------------ inference
    def _inputs(self, ds) -> dict[str, Any]:
        inputs = {}
        for m, espec in self.spec.encoders.items():
            state = self.info["modalities"][m]["state"]
            try:
                prepared = prepare_modality(ds, m, espec, state=state)
            except PreprocessError as e:
                raise ConfigError(f"modality {m!r}: {e}") from None
            self._note_unknown(ds, m, state, prepared)
            if espec.mode == "frozen":
                inputs[m] = frozen_features(self.model.encoders[m], prepared)
            else:
                inputs[m] = prepared
        return inputs

    def _note_unknown(self, ds, m: str, state: dict, prepared) -> None:
        if state.get("kind") != "tabular" or not state["categorical"]:
            return

        frame = ds.tabular_frame(m)
        present = prepared.present.numpy()
        for c, known in state["categorical"].items():
            keys = [_category_key(v) for v in frame[c].tolist()]
            seen = set(known)
            unseen = sorted(
                {
                    k
                    for k, p in zip(keys, present, strict=True)
                    if p and k is not None and k not in seen
                }
            )
            if unseen:
                n = sum(k in unseen for k in keys)
                shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
                self.warnings.append(
                    f"modality {m}, column {c}: {n} row(s) with categories unseen "
                    f"in training ({shown}) mapped to 'unknown'"
                )

    @torch.no_grad()
    def predict_outputs(self, ds) -> np.ndarray:
        """Raw outputs for every row of a prediction-mode dataset: logits ``[N, C]``
        (classification / multilabel) or values ``[N, 1]`` on the target's scale (regression)."""
        n = len(ds)
        idx = np.arange(n, dtype=np.int64)
        data = TrainData(
            task=self.task,
            y=torch.zeros(n),
            y_raw=np.zeros(n),
            inputs=self._inputs(ds),
            splits={"test": idx},
            target_stats=tuple(self.info.get("target_stats", (0.0, 1.0))),
        )
        return predict_outputs(self.model, data, idx, self.device)


def check_compatible(
    members: list[tuple[str, str, list[str] | None]],
) -> tuple[str, list[str] | None]:
    """The common ``(task, classes)`` of ensemble members given as ``(name, task, classes)``.

    Raises:
        ConfigError: no members, or a member whose task or classes (names and order: the
            output columns) differ from the first member's.
    """
    if not members:
        raise ConfigError("an ensemble needs at least one member")
    name0, task, classes = members[0]
    for name, t, c in members[1:]:
        if t != task:
            raise ConfigError(f"ensemble member {name} is a {t} model but {name0} is {task}")
        if list(c or []) != list(classes or []):
            raise ConfigError(
                f"ensemble member {name} has classes {c} but {name0} has {classes}; "
                "members must share the label encoding"
            )
    return task, classes


class EnsemblePredictor(BasePredictor):
    """A weighted ensemble of exported models (an ensemble export, see :func:`load`), with the
    public interface of :class:`Predictor`: every member predicts the same rows and their raw
    outputs are combined by :func:`autofuse.ensemble.combine` (probabilities averaged for
    classification and multilabel, values for regression).

    Attributes:
        members: the member :class:`Predictor` objects.
        weights: their weights (normalised to sum 1).
        export: the ensemble's metadata (``meta`` of ``ensemble.json``).
        task / classes: the members' common task and label encoding.
        skipped / warnings: as for :class:`Predictor` (members' warnings merged, each once).
    """

    def __init__(
        self, members: list[Predictor], weights: list[float], export: dict | None = None
    ) -> None:
        if len(members) != len(weights):
            raise ConfigError(f"{len(weights)} weight(s) for {len(members)} ensemble member(s)")
        w = np.asarray(weights, dtype=np.float64)
        if len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(f"ensemble weights must be >= 0 and not all 0, got {list(weights)}")
        self.task, self.classes = check_compatible(
            [(f"member_{k}", m.task, m.classes) for k, m in enumerate(members)]
        )
        self.members = list(members)
        self.weights = [float(x) for x in w / w.sum()]
        self.export = export or {}
        self.device = members[0].device
        self.skipped: list[str] = []
        self.warnings: list[str] = []

    @classmethod
    def from_dir(
        cls, folder: str | os.PathLike[str], device: str | None = None
    ) -> EnsemblePredictor:
        """Read an ensemble export folder (``ensemble.json`` + one export folder per member)."""
        folder = Path(folder)
        try:
            doc = json.loads((folder / ENSEMBLE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{folder / ENSEMBLE_FILE}: unreadable ({first_line(e)})") from None
        if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
            raise ConfigError(f"{folder / ENSEMBLE_FILE}: not an {ENSEMBLE_FORMAT} file")
        if not isinstance(doc.get("version"), int) or doc["version"] > ENSEMBLE_VERSION:
            raise ConfigError(
                f"{folder / ENSEMBLE_FILE}: version {doc.get('version')!r}; this autofuse reads "
                f"up to {ENSEMBLE_VERSION} (upgrade autofuse)"
            )
        entries = doc.get("members")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{folder / ENSEMBLE_FILE}: no members")
        root = folder.resolve()
        members, weights = [], []
        for k, e in enumerate(entries):
            if not isinstance(e, dict) or "path" not in e or "weight" not in e:
                raise ConfigError(f"{folder / ENSEMBLE_FILE}: member {k} needs a path and a weight")
            sub = (root / str(e["path"])).resolve()
            if not sub.is_relative_to(root):
                raise ConfigError(f"{folder / ENSEMBLE_FILE}: member path {e['path']!r} is outside")
            if not (sub / "architecture.json").is_file():
                raise ConfigError(
                    f"{folder}: ensemble member {e['path']} has no architecture.json "
                    "(members are single-model exports)"
                )
            members.append(Predictor.from_dir(sub, device=device))
            weights.append(e["weight"])
        pred = cls(members, weights, doc.get("meta"))
        if doc.get("task") not in (None, pred.task):
            raise ConfigError(
                f"{folder / ENSEMBLE_FILE}: task {doc['task']} but the members are {pred.task}"
            )
        return pred

    # ------------------------------------------------------------------ data
    @property
    def dataset_config(self) -> dict | None:
        """The training dataset's config (that of the first member)."""
        return self.members[0].dataset_config

    def input_columns(self) -> dict[str, list[str]]:
        """Columns each modality reads, over all members."""
        out: dict[str, list[str]] = {}
        for m in self.members:
            for mod, cols in m.input_columns().items():
                out.setdefault(mod, cols)
        return out

    def dataset(
        self, data: Any, *, root: str | os.PathLike[str] | None = None, bad_files: str = "error"
    ):
        """``data`` as a prediction-mode :class:`~autofuse.data.Dataset` holding every modality
        a member needs, checked against each member."""
        config: dict | None = None
        for k, m in enumerate(self.members):
            cfg = m._config_for(data)
            if config is None:
                config = cfg
                continue
            for name, mod in cfg["modalities"].items():
                have = config["modalities"].setdefault(name, mod)
                if have != mod:
                    raise ConfigError(
                        f"ensemble member_{k} reads modality {name!r} differently from the "
                        f"members before it ({mod} vs {have})"
                    )
        ds = Dataset.for_prediction(data, config, root=root, bad_files=bad_files)
        for m in self.members:
            m._check_dataset(ds)
        return ds

    # ------------------------------------------------------------------ inference
    def predict_outputs(self, ds) -> np.ndarray:
        """The ensemble's raw outputs for every row (see :func:`autofuse.ensemble.combine`):
        log-probabilities ``[N, C]`` (classification), logits ``[N, C]`` (multilabel) or values
        ``[N, 1]`` (regression); float64."""
        outputs = []
        for m in self.members:
            m.warnings = []
            outputs.append(m.predict_outputs(ds))
            for w in m.warnings:  # members reading the same column report the same thing
                if w not in self.warnings:
                    self.warnings.append(w)
        return combine(outputs, self.weights, self.task)


@torch.no_grad()
def frozen_features(encoder: torch.nn.Module, prepared, batch_size: int = FROZEN_BATCH):
    """Run a frozen encoder over the present rows exactly as the feature cache does."""
    return encoder_features(encoder, prepared, batch_size)


def _with_status(df: pd.DataFrame, ds, failed: np.ndarray) -> pd.DataFrame:
    """``df`` with the ``status`` column of ``bad_files="missing"``: ``ok``, ``missing: <what>``
    (what the row was predicted without), or ``failed: ...`` (no prediction, no probabilities)."""
    row_missing: dict[int, list[str]] = getattr(ds, "row_missing", {})
    status = [
        "missing: " + ", ".join(row_missing[i]) if i in row_missing else "ok"
        for i in range(len(df))
    ]
    df = df.copy()
    if failed.any():
        answer = [c for c in df.columns if c == "prediction" or c.startswith("proba_")]
        df[answer] = df[answer].astype(object)
        df.loc[failed, answer] = None
        for i in np.flatnonzero(failed):
            status[i] = "failed: the model's output is not finite" + (
                f" ({status[i]})" if status[i] != "ok" else ""
            )
    df[STATUS_COLUMN] = status
    return df


def write_predictions(df: pd.DataFrame, out: str | os.PathLike[str]) -> Path:
    """Write ``df`` as CSV atomically (a temporary file renamed into place)."""
    with atomic_write(out) as tmp:
        df.to_csv(tmp, index=False)
    return Path(out)


__all__ = [
    "BasePredictor",
    "EnsemblePredictor",
    "PredictionError",
    "Predictor",
    "check_compatible",
    "find_export_dir",
    "format_predictions",
    "frozen_features",
    "is_ensemble_dir",
    "load",
    "load_dir",
    "write_predictions",
]
