"""Bit rot in weight files (issue 18): every safetensors file autofuse writes records its sha256
(in its own header, :mod:`autofuse.weights`) and is checked when read.

safetensors checks its header, not its tensor data: one byte flipped in the data loads silently.
Each test flips one byte inside the tensor data of a real file (after the 8-byte length and the
JSON header, :func:`~autofuse.testing.faults.rot_weights`) of a real tiny search
(``tests/spaces/tiny.yaml`` on the demo dataset, with a ``file://`` artifact store, made once per
module; each test works on a copy) and checks that the flip is caught at load, with the same one
line as an unreadable file and the same way out:

- a finalist checkpoint: ``export`` names it and offers ``--retrain`` (which works), the report
  skips it; the best model in ``best/``: ``load_best`` and ``predict`` name it;
- an export (and an ensemble member): ``autofuse.load`` / ``predict`` name it (exit 2, one line);
- a file fetched from the artifact store (a finalist, ``best/``, a stage-1 encoder and its
  features): caught when the fetched copy is read;
- a feature cache entry: recomputed, with a warning.

Files without a recorded checksum (an older autofuse's) still load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import autofuse
from autofuse import checkpoints
from autofuse.checkpoints import CheckpointStore
from autofuse.cli import main
from autofuse.errors import ConfigError, DamagedFileError
from autofuse.export import export_trial, write_ensemble_export
from autofuse.storage.artifacts import open_artifacts
from autofuse.study import search
from autofuse.testing.faults import rot_weights
from autofuse.weights import (
    CHECKSUM_KEY,
    checksum_problem,
    read_weights,
    recorded_checksum,
    save_weights,
)

TESTS = Path(__file__).parent
TINY = TESTS / "spaces" / "tiny.yaml"
GOOD = TESTS / "data" / "good"
STUDY = "rot"
N_TRIALS = 2  # both keep a finalist checkpoint (KEEP_TOP_K = 3)
MISMATCH = "damaged weights (sha256 mismatch"


@pytest.fixture(scope="module")
def base(tmp_path_factory, demo_dataset) -> Path:
    """A finished tiny study ``rot`` in ``work/`` (finalists, ``best/``) whose files are also in
    the artifact store ``store/``."""
    root = tmp_path_factory.mktemp("rot")
    search(
        demo_dataset,
        study=STUDY,
        trials=N_TRIALS,
        space=TINY,
        workdir=root / "work",
        artifacts=str(root / "store"),
        progress=False,
        mlflow_uri="off",
        report=False,
        device="cpu",
    )
    for lock in (root / "work" / "trials").glob("*.lock"):
        lock.unlink()
    return root


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A copy of the finished study's work directory (its artifact store is the module's)."""
    shutil.copytree(base / "work", tmp_path / "work")
    return tmp_path / "work"


@contextmanager
def rotted(path: Path) -> Iterator[Path]:
    """``path`` with one byte of its tensor data flipped, restored afterwards (for the module's
    artifact store, which every copy of the work directory shares)."""
    original = path.read_bytes()
    rot_weights(path)
    try:
        yield path
    finally:
        path.write_bytes(original)


def _cli(*args: object) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r.exit_code, r.output


def _one_error_line(output: str) -> str:
    """The single ``error:`` line of a refused command (and no traceback)."""
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _study_dir(work: Path) -> Path:
    return work / "trials" / STUDY


def _finalist_weights(work: Path, n: int) -> Path:
    return CheckpointStore(_study_dir(work)).finalist_paths(n)[1]


def _best_trial(work: Path) -> int:
    return json.loads((_study_dir(work) / "summary.json").read_text())["best_trial"]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# ---- the helpers ----------------------------------------------------------------------------


def test_the_recorded_sha256_is_the_files_with_the_digest_zeroed(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = {"a.weight": torch.randn(64, 32), "b.bias": torch.arange(7, dtype=torch.float16)}
    digest = save_weights(tensors, path)
    assert recorded_checksum(path) == digest and checksum_problem(path) is None
    # the definition, checked independently: sha256 of the file with the digest read as zeros
    data = path.read_bytes()
    assert data.count(digest.encode()) == 1
    assert hashlib.sha256(data.replace(digest.encode(), b"0" * 64)).hexdigest() == digest
    got = read_weights(path)
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in got)


def test_one_flipped_byte_of_tensor_data_loads_silently_in_safetensors_but_not_here(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights({"w": torch.randn(256)}, path)
    header_end = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    assert rot_weights(path) >= header_end  # the data, not the header
    load_file(str(path))  # safetensors itself notices nothing
    with pytest.raises(DamagedFileError) as e:
        read_weights(path)
    assert e.value.path == str(path) and e.value.problem.startswith(MISMATCH)
    assert str(e.value).startswith(f"{path}: {MISMATCH}") and "\n" not in str(e.value)
    with pytest.raises(DamagedFileError, match=r"sha256 mismatch"):
        checkpoints.read_weights(path)


def test_a_file_without_a_checksum_still_loads(tmp_path):
    """Files an older autofuse wrote carry no checksum: no check, they load as before."""
    path = tmp_path / "old.safetensors"
    save_file({"w": torch.ones(3)}, str(path))
    assert recorded_checksum(path) is None and checksum_problem(path) is None
    assert torch.equal(read_weights(path)["w"], torch.ones(3))
    assert torch.equal(checkpoints.read_weights(path)["w"], torch.ones(3))


def test_an_unreadable_file_is_still_named_as_before(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights({"w": torch.randn(64)}, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(DamagedFileError, match="unreadable weights") as e:
        read_weights(path)
    assert e.value.path == str(path)
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "absent.safetensors")
    with pytest.raises(DamagedFileError, match="unreadable weights"):
        checkpoints.read_weights(tmp_path / "absent.safetensors")


def test_every_weight_file_a_search_writes_records_its_sha256(base):
    files = [*(base / "work").rglob("*.safetensors"), *(base / "store").rglob("*.safetensors")]
    names = {p.relative_to(base).as_posix() for p in files}
    for n in range(N_TRIALS):
        assert f"work/trials/{STUDY}/checkpoints/trial_{n}.safetensors" in names
        assert f"store/{STUDY}/checkpoints/trial_{n}.safetensors" in names
    assert f"work/trials/{STUDY}/best/model.safetensors" in names
    assert f"store/{STUDY}/best/model.safetensors" in names
    unsigned = [p for p in files if recorded_checksum(p) is None or checksum_problem(p)]
    assert not unsigned, unsigned
    header = json.loads(_header_text(base / "store" / STUDY / "best" / "model.safetensors"))
    assert set(header["__metadata__"]) == {CHECKSUM_KEY}


def _header_text(path: Path) -> str:
    data = path.read_bytes()
    return data[8 : 8 + int.from_bytes(data[:8], "little")].decode()


# ---- a checkpoint: a finalist, the best model ----------------------------------------------------


def test_a_flipped_finalist_is_caught_by_export_which_offers_retrain(work, tmp_path, demo_dataset):
    n = _best_trial(work)
    damaged = _finalist_weights(work, n)
    rot_weights(damaged)
    stored = _digests(_study_dir(work))
    out = tmp_path / "export"

    code, output = _cli("export", "--study", STUDY, "--out", out, "--workdir", work)

    assert code == 2, output
    line = _one_error_line(output)
    assert line.startswith(f"error: {damaged}: {MISMATCH}"), line
    assert f"add --retrain to refit trial {n}" in line
    assert not out.exists() and _digests(_study_dir(work)) == stored

    # the way out: refit from the spec
    code, output = _cli(
        "export", "--study", STUDY, "--out", out, "--workdir", work, "--retrain", "--device", "cpu"
    )
    assert code == 0, output
    assert json.loads((out / "architecture.json").read_text())["export"]["retrained"] is True
    assert checksum_problem(out / "model.safetensors") is None
    assert recorded_checksum(out / "model.safetensors") is not None
    assert len(autofuse.load(out, device="cpu").predict(demo_dataset)) == 240


def test_a_flipped_finalist_is_skipped_by_the_report(work, caplog):
    damaged = _finalist_weights(work, 1)
    rot_weights(damaged)

    code, out = _cli("report", "--study", STUDY, "--workdir", work, "--device", "cpu")

    assert code == 0, out
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(damaged) in w and "sha256 mismatch" in w for w in warned), warned
    md = (work / "reports" / STUDY / "report.md").read_text()
    assert f"Trial 1 not evaluated: {damaged}: {MISMATCH}" in md


def test_a_flipped_best_model_is_caught_at_load(work, tmp_path, demo_dataset):
    best = _study_dir(work) / "best"
    rot_weights(best / "model.safetensors")
    with pytest.raises(DamagedFileError) as e:
        CheckpointStore(_study_dir(work)).load_best()
    assert e.value.path == str(best / "model.safetensors")
    assert e.value.problem.startswith(MISMATCH)

    code, output = _cli("predict", best, demo_dataset, "--out", tmp_path / "p.csv")

    assert code == 2, output
    line = _one_error_line(output)
    assert line.startswith(f"error: {best / 'model.safetensors'}: {MISMATCH}"), line
    assert line.endswith("re-export the model")
    assert not (tmp_path / "p.csv").exists()


# ---- an export ---------------------------------------------------------------------------------


def test_a_flipped_export_is_caught_at_load(work, tmp_path, demo_dataset):
    out = export_trial(STUDY, tmp_path / "export", workdir=work).out
    weights = out / "model.safetensors"
    assert recorded_checksum(weights) is not None
    rot_weights(weights)

    with pytest.raises(ConfigError) as e:
        autofuse.load(out, device="cpu")
    assert str(e.value).startswith(f"{weights}: {MISMATCH}") and "\n" not in str(e.value)

    code, output = _cli("predict", out, demo_dataset, "--out", tmp_path / "p.csv")
    assert code == 2, output
    assert _one_error_line(output).startswith(f"error: {weights}: {MISMATCH}")
    assert not (tmp_path / "p.csv").exists()


def test_a_flipped_ensemble_member_is_caught(work, tmp_path):
    members = [export_trial(STUDY, tmp_path / f"m{n}", trial=n, workdir=work).out for n in (0, 1)]
    ens = write_ensemble_export(tmp_path / "ens", members, [0.5, 0.5], {"study": STUDY})
    damaged = ens / "member_1" / "model.safetensors"
    assert recorded_checksum(damaged) == recorded_checksum(members[1] / "model.safetensors")
    rot_weights(damaged)
    with pytest.raises(ConfigError, match="sha256 mismatch") as e:
        autofuse.load(ens, device="cpu")
    assert str(damaged) in str(e.value)
    # an ensemble is not written from a flipped member: the member's file is named
    rot_weights(members[0] / "model.safetensors")
    with pytest.raises(DamagedFileError) as e:
        write_ensemble_export(tmp_path / "ens2", members, [0.5, 0.5], {"study": STUDY})
    assert e.value.path == str(members[0] / "model.safetensors")
    assert not (tmp_path / "ens2").exists()


# ---- a file fetched from the artifact store ------------------------------------------------------


def test_a_finalist_fetched_from_the_store_is_checked(work, base, tmp_path):
    n = _best_trial(work)
    local = _finalist_weights(work, n)
    local.unlink()  # this host lacks it: the store's copy is fetched
    remote = base / "store" / STUDY / "checkpoints" / local.name
    out = tmp_path / "export"

    with rotted(remote):
        code, output = _cli("export", "--study", STUDY, "--out", out, "--workdir", work)
        assert local.read_bytes() == remote.read_bytes()  # fetched as it is in the store

    assert code == 2, output
    line = _one_error_line(output)
    assert line.startswith(f"error: {local}: {MISMATCH}"), line
    assert f"add --retrain to refit trial {n}" in line
    assert not out.exists()


def test_the_best_model_fetched_from_the_store_is_checked(work, base):
    shutil.rmtree(_study_dir(work) / "best")
    store = CheckpointStore(_study_dir(work), open_artifacts(str(base / "store")))
    with rotted(base / "store" / STUDY / "best" / "model.safetensors"):
        with pytest.raises(DamagedFileError) as e:
            store.load_best()
    assert e.value.path == str(_study_dir(work) / "best" / "model.safetensors")
    assert e.value.problem.startswith(MISMATCH)
    # the store's good copy, fetched again, loads
    shutil.rmtree(_study_dir(work) / "best")
    assert store.load_best() is not None


def _spec(ds):
    """A small two-modality spec on the demo dataset (tabular + text, trained from scratch)."""
    from autofuse.spec import ArchitectureSpec, EncoderSpec, FusionSpec, HeadSpec, TrainingSpec

    kinds = {ds.modality_type(m): m for m in ds.modality_names}
    return ArchitectureSpec(
        encoders={
            kinds["tabular"]: EncoderSpec(
                name="tabular.mlp", mode="scratch", dim=16, params={"hidden": 32}
            ),
            kinds["text"]: EncoderSpec(
                name="text.small", mode="scratch", dim=16, params={"arch": "conv", "depth": 1}
            ),
        },
        fusion=FusionSpec(
            family="encoder_decoder", method="decision", point="late", params={"hidden": 32}
        ),
        head=HeadSpec(fused_dim=16),
        training=TrainingSpec(lr=1e-3, batch_size=16, epochs=1),
    )


@pytest.mark.parametrize("name", ["encoder.safetensors", "features.safetensors"])
def test_a_stage1_file_fetched_from_the_store_is_checked(tmp_path, demo_dataset, name):
    """A stage-1 encoder (weights and features) written on host A, flipped in the store, read on
    host B: the fetched copy is refused, naming it."""
    from autofuse.data import Dataset
    from autofuse.model import build_model
    from autofuse.runner import CandidateRunner

    ds = Dataset.load(demo_dataset)
    spec = _spec(ds)
    m, espec = next(iter(spec.encoders.items()))
    store = open_artifacts(str(tmp_path / "store"))
    cpu = torch.device("cpu")
    a = CandidateRunner(ds, tmp_path / "A" / "trials" / "cache", cpu, artifacts=store)
    _, info = a.prepare(spec)
    encoder = build_model(spec, info, skip_frozen=True).encoders[m]
    a.store_stage1("k1", m, espec, encoder, {"trial": 0, "val": 0.5})
    for f in ("encoder.safetensors", "features.safetensors"):
        assert recorded_checksum(tmp_path / "store" / "cache" / "k1" / f) is not None
    rot_weights(tmp_path / "store" / "cache" / "k1" / name)

    b = CandidateRunner(ds, tmp_path / "B" / "trials" / "cache", cpu, artifacts=store)
    fetched = tmp_path / "B" / "trials" / "cache" / "k1" / name
    frozen = spec.model_copy(
        update={"encoders": {m: espec.model_copy(update={"mode": "frozen", "source": "k1"})}}
    )
    with pytest.raises(DamagedFileError) as e:
        if name == "features.safetensors":
            b.stage1_features("k1")
        else:
            b.source_state(frozen)
    assert e.value.path == str(fetched) and e.value.problem.startswith(MISMATCH)
    # host A's own copy is intact and loads
    assert a.source_state(frozen) and len(a.stage1_features("k1")) > 0


# ---- the feature cache ---------------------------------------------------------------------------


def test_a_flipped_feature_cache_entry_is_recomputed(tmp_path, caplog):
    from autofuse.data import Dataset
    from autofuse.encoders import EncoderSpec, FeatureCache, prepare_modality

    ds = Dataset.load(GOOD)
    spec = EncoderSpec(name="image.timm", mode="frozen", params={"model_name": "resnet18"})
    prepared = prepare_modality(ds, "picture", spec)
    first = FeatureCache(tmp_path).features(ds, "picture", spec, prepared)
    entry = tmp_path / first.key / "features.safetensors"
    assert recorded_checksum(entry) is not None
    rot_weights(entry)

    cache = FeatureCache(tmp_path)
    with caplog.at_level("WARNING", logger="autofuse.encoders.cache"):
        again = cache.features(ds, "picture", spec, prepared)
    assert (cache.hits, cache.misses) == (0, 1)
    assert "sha256 mismatch" in caplog.text and "recomputing" in caplog.text
    assert torch.equal(again.pooled, first.pooled)
    assert checksum_problem(entry) is None  # the entry was written again
