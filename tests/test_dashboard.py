"""``autofuse dashboard``: optuna-dashboard on a study's storage, bound to 127.0.0.1 by default,
opened in headless Chromium where it shows the study's trials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import rendered_dom
from click.testing import CliRunner

from autofuse.cli import main
from autofuse.study import search

TINY = str(Path(__file__).parent / "spaces" / "tiny.yaml")


@pytest.fixture(scope="module")
def finished(demo_dataset, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dash")
    search(
        demo_dataset, study="dash", workdir=work, trials=3, space=TINY, mlflow_uri="off",
        report=False, progress=False,
    )  # fmt: skip
    return work


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp: no extra tool needed)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # 0A: LISTEN
            out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_unknown_study_is_one_line(finished):
    r = CliRunner().invoke(main, ["dashboard", "--study", "nope", "--workdir", str(finished)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: no study 'nope'"), r.output


def test_dashboard_shows_the_study_in_chromium(finished, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "autofuse.cli", "dashboard", "--study", "dash",
           "--workdir", str(finished), "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "dashboard of study dash: http://127.0.0.1:" in line, line
        page = line.split(": ", 1)[1].split()[0]
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.2)
        assert _listening(port) == ["127.0.0.1"]  # local only by default
        assert "val_accuracy" in rendered_dom(
            page, tmp_path
        )  # the objective's name, not "Objective 0"
        dom = rendered_dom(page + "/trials", tmp_path)
        assert "dash" in dom
        for n in range(3):
            assert f"Trial {n}" in dom, f"trial {n} not on the dashboard"
        assert "Trial 3" not in dom  # the study has three trials
    finally:
        proc.terminate()
        proc.wait(timeout=30)
