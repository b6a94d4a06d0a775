"""Storage fixtures: a real local ``mlflow server`` process, started once per test session."""

from __future__ import annotations

import os
import time

import pytest
from ci import IN_CI

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URI of a running ``mlflow server`` (SQLite backend, proxied artifacts under a temp folder).

    Skips when the server cannot start (fails instead under ``CI=true``)."""
    from autofuse.testing.mlflow_server import start_mlflow_server, stop_mlflow_server

    t0 = time.monotonic()
    try:
        uri, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), timeout=60)
    except Exception as e:  # missing binary, port clash, start-up crash, no /health in time
        reason = f"cannot start mlflow server: {type(e).__name__}: {e}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    print(f"mlflow server {uri} up in {time.monotonic() - t0:.1f} s")
    try:
        yield uri
    finally:
        stop_mlflow_server(proc)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request, tmp_path):
    """A fresh, empty database on each backend: a SQLite file, the real PostgreSQL server, the real
    MariaDB server (the server ones skip when unreachable, fail under CI=true)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    from tests_storage_db import fresh_database

    u, drop = fresh_database(request.param)
    yield u
    drop()
