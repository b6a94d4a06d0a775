"""The artifact store contract, on each backend: a local folder (``file://``) and a real
``mlflow server`` proxying artifacts (``mlflow-artifacts://HOST:PORT/...``)."""

from __future__ import annotations

import pytest

from autofuse.errors import ConfigError
from autofuse.storage.artifacts import ArtifactStore, open_artifacts


@pytest.fixture(params=["file", "mlflow-artifacts"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "file":
        return open_artifacts(str(tmp_path / "store")).child("study")
    server = request.getfixturevalue("mlflow_server")
    host = server.split("//", 1)[1]
    return ArtifactStore(f"mlflow-artifacts://{host}/autofuse/{tmp_path.name}").child("study")


def test_put_then_fetch_a_file(store, tmp_path):
    src = tmp_path / "trial_3.pt"
    src.write_bytes(b"weights" * 100)
    assert store.put(src, "running/trial_3.pt")
    assert store.exists("running/trial_3.pt")
    dst = tmp_path / "elsewhere" / "running" / "trial_3.pt"
    assert store.fetch("running/trial_3.pt", dst)
    assert dst.read_bytes() == src.read_bytes()


def test_put_under_another_name(store, tmp_path):
    src = tmp_path / "tmp_upload.bin"
    src.write_bytes(b"abc")
    assert store.put(src, "best/model.safetensors")
    dst = tmp_path / "got" / "model.safetensors"
    assert store.fetch("best/model.safetensors", dst) and dst.read_bytes() == b"abc"
    assert not store.exists("best/tmp_upload.bin")


def test_missing_file_is_false_not_an_error(store, tmp_path):
    assert not store.exists("running/trial_9.pt")
    assert not store.fetch("running/trial_9.pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    assert not store.fetch_dir("cache/nokey", tmp_path / "nokey")


def test_folders_round_trip_and_replace(store, tmp_path):
    src = tmp_path / "key1"
    (src / "sub").mkdir(parents=True)
    (src / "stage1.json").write_text("{}")
    (src / "sub" / "pooled.npy").write_bytes(b"\x00" * 64)
    assert store.put_dir(src, "cache/key1")
    dst = tmp_path / "cache2" / "key1"
    dst.mkdir(parents=True)
    (dst / "partial").write_text("left over by a crashed download")
    assert store.fetch_dir("cache/key1", dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "stage1.json",
        "sub/pooled.npy",
    ]


def test_delete(store, tmp_path):
    src = tmp_path / "trial_1.pt"
    src.write_bytes(b"1")
    store.put(src, "running/trial_1.pt")
    store.delete("running/trial_1.pt")
    assert not store.exists("running/trial_1.pt")


def test_bad_uris_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not an artifact store URI"):
        ArtifactStore("ftp://host/x")
    with pytest.raises(ConfigError, match="cannot reach it"):
        ArtifactStore("mlflow-artifacts://127.0.0.1:9/autofuse").check()
