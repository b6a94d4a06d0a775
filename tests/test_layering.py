"""The package's layering is checked, not hoped for: import-linter's layer contract (pyproject),
no import cycles between modules, and function-local imports only where a reason is given."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".ci"))

from local_imports import local_imports  # noqa: E402


def test_layer_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e .[dev]")
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _cycles(adj: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in adj:
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(adj[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_between_modules():
    if importlib.util.find_spec("grimp") is None:
        pytest.fail("grimp (import-linter's graph) is not installed: pip install -e .[dev]")
    import grimp

    g = grimp.build_graph("autofuse")
    adj = {m: sorted(g.find_modules_directly_imported_by(m)) for m in sorted(g.modules)}
    assert _cycles(adj) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_function_local_imports_say_why():
    # cli.py imports inside its commands so that `autofuse --help` starts fast (module docstring)
    found = [f for f in local_imports() if f[0] != "autofuse/cli.py"]
    unexplained = [f"{f}:{n} {mod}" for f, n, mod, why in found if not why]
    assert unexplained == []
    assert len(found) <= 20, f"{len(found)} function-local imports outside the CLI"
