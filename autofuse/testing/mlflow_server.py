"""Start a real local ``mlflow server`` for tests (SQLite backend, proxied artifacts).

    uri, proc = start_mlflow_server(tmp_dir)      # waits for /health
    ...
    stop_mlflow_server(proc)

Flags used (MLflow 3.17): ``--host 127.0.0.1 --port P --backend-store-uri sqlite:///<tmp>/mlflow.db
--serve-artifacts --artifacts-destination <tmp>/artifacts --workers 1``; with ``--serve-artifacts``
new experiments get ``mlflow-artifacts:/`` roots and clients upload through the server, as remote
workers would. The server's background job runner (GenAI jobs, 7 extra processes) is switched off
with ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``. The server runs in its own process group so
:func:`stop_mlflow_server` ends it and its uvicorn worker together.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("mlflow")
    return [found] if found else [sys.executable, "-m", "mlflow"]


def _healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as r:  # noqa: S310
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(
    tmpdir: str | Path,
    *,
    port: int | None = None,
    timeout: float = 60.0,
    workers: int = 1,
    host: str = "127.0.0.1",
) -> tuple[str, subprocess.Popen]:
    """Start ``mlflow server`` with its stores under ``tmpdir``; returns ``(uri, process)``.

    ``host`` is the address the server binds and the returned URI names (default ``127.0.0.1``);
    give a concrete address (a test's own veth address, say), not ``0.0.0.0``.

    Raises ``RuntimeError`` (with the end of the server log) when it exits or does not answer
    ``/health`` within ``timeout`` seconds."""
    tmp = Path(tmpdir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://{host}:{port}"
    cmd = [
        *_mlflow_cmd(),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{(tmp / 'mlflow.db').as_posix()}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--workers",
        str(workers),
    ]
    env = dict(
        os.environ,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp / "server.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
        if _healthy(uri):
            return uri, proc
        time.sleep(0.3)
    stop_mlflow_server(proc)
    raise RuntimeError(
        f"mlflow server did not answer {uri}/health within {timeout:.0f} s:\n{_tail(log_path)}"
    )


def stop_mlflow_server(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout``)."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    if pgid != proc.pid:  # not its own group (should not happen): end only the process
        proc.terminate()
    else:
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if pgid == proc.pid:
            os.killpg(pgid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=5)
    if pgid != proc.pid:
        return
    end = time.monotonic() + 5.0  # the uvicorn worker may outlive its parent for a moment
    try:
        while time.monotonic() < end:
            os.killpg(pgid, 0)
            time.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


__all__ = ["free_port", "start_mlflow_server", "stop_mlflow_server"]
