"""The broken-dataset corpus through the CLI: a clear message, non-zero exit, no traceback,
and no study (nothing written under the work directory)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from autofuse.cli import main

BROKEN = Path(__file__).parent / "data" / "broken"
_spec = importlib.util.spec_from_file_location(
    "broken_cases", Path(__file__).parent / "data" / "test_data_broken.py"
)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
EXPECTED = _mod.EXPECTED
CASES = sorted(p.name for p in BROKEN.iterdir() if p.is_dir())


def test_corpus_is_large_enough():
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES)
def test_validate_and_search_refuse_broken_dataset(case, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["data", "validate", str(BROKEN / case)])
    assert r.exit_code != 0, r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), (
        r.exception
    )
    assert "Traceback" not in r.output
    assert "problem:" in r.output or "error:" in r.output

    work = tmp_path / "work"
    r = runner.invoke(
        main,
        [
            "search",
            str(BROKEN / case),
            "--study",
            "s",
            "--trials",
            "1",
            "--workdir",
            str(work),
            "--no-progress",
        ],
    )
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # handled, no traceback
    out = r.output
    assert out.startswith("error:"), out
    for sub in EXPECTED.get(case, [])[:1]:
        assert sub in out, f"{case}: {sub!r} not in {out!r}"
    assert not work.exists(), "a study or output was written for a broken dataset"
