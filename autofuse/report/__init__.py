"""The comparison report: which fusion design to use, and why.

``write_report(study)`` reads the study's trial history (SQL), re-evaluates the top-3 finalists
(of a staged study: the winner's model or its ensemble's members) from their checkpoints for
robustness, and writes ``reports/<study>/report.html`` (one self-contained file), ``report.md``
with its PNG figures in ``figures/``, and ``report.json`` (the numbers behind both).

The package, in the order the data flows:

- :mod:`~autofuse.report.collect`: the trial history -> :class:`~autofuse.report.collect.ReportData`
  (plain, JSON-able numbers);
- :mod:`~autofuse.report.staged`: a staged study read as data (stages, unimodal models, the
  winner, the finalists' seeds): its best design is the winner, its stages section the numbers;
- :mod:`~autofuse.report.labels`: what each figure is (a K-fold CV selection estimate,
  validation, in-sample or test) and the selection-versus-test numbers (Spearman's rho);
- :mod:`~autofuse.report.robustness`: the finalists re-evaluated from their checkpoints (torch);
- :mod:`~autofuse.report.figures`: the matplotlib figures, as PNG bytes;
- :mod:`~autofuse.report.blocks` and :mod:`~autofuse.report.sections`: the layout, sections of
  paragraphs, tables and figures (:mod:`~autofuse.report.selection`: the "Selection versus test"
  section and its scatter);
- :mod:`~autofuse.report.printers`: the layout printed as HTML (with ``static/report.css`` and
  ``static/report.js`` inlined) and as Markdown, and the files written.
"""

from __future__ import annotations

from pathlib import Path

from autofuse.paths import Paths
from autofuse.report.collect import collect as collect_data
from autofuse.report.printers import render

__all__ = ["write_report"]


def write_report(
    study: str,
    workdir: str | Path | None = None,
    storage: str | None = None,
    dataset: str | Path | None = None,
    *,
    robustness: bool = True,
    device: str | None = None,
) -> dict[str, Path]:
    """Write the comparison report of ``study``.

    Args:
        study: study name.
        workdir: root of ``trials/`` and ``reports/`` (default ``AUTOFUSE_HOME`` or the cwd).
        storage: SQLAlchemy URL (default SQLite at ``trials/autofuse.db``).
        dataset: dataset folder for the robustness evaluation (default: the one the study recorded).
        robustness: evaluate the finalists' checkpoints with modalities removed / noised.
        device: where to evaluate them (default CUDA when available).

    Returns:
        ``{"html", "markdown", "data", "figures"}`` -> paths under ``reports/<study>/``.
    """
    paths = Paths.resolve(workdir)
    url = storage or paths.default_storage
    data = collect_data(
        study,
        storage=url,
        study_dir=paths.study_dir(study),
        dataset=dataset,
        workdir=paths.root,
        robustness=robustness,
        device=device,
    )
    return render(data, paths.reports / study)
