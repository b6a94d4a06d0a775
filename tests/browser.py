"""Headless Chromium for the browser tests (the report, the dashboard, the MLflow UI): ``.ci/run``
installs Debian's ``chromium``; elsewhere, without it, these tests skip (under CI they fail)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ci import need

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
]


def chromium(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium with ``args`` and a fresh profile under ``tmp``."""
    if CHROMIUM is None:
        need(False, "chromium is not installed (apt-get install chromium)")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def rendered_dom(url: str, tmp: Path, budget_ms: int = 10000) -> str:
    """The DOM of ``url`` after its scripts ran for ``budget_ms`` of virtual time."""
    res = chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], tmp, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout
