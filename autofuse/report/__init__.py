"""The comparison report: which fusion design to use, and why.

``write_report(study)`` reads the study's trial history (SQL), re-evaluates the top-3 finalists
from their checkpoints for robustness, and writes ``reports/<study>/report.html`` (one
self-contained file), ``report.md`` with its PNG figures in ``figures/``, and ``report.json``
(the numbers behind both).
"""

from __future__ import annotations

from pathlib import Path

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
    from autofuse.paths import Paths
    from autofuse.report.collect import collect
    from autofuse.report.render import render

    paths = Paths.resolve(workdir)
    url = storage or paths.default_storage
    data = collect(
        study,
        storage=url,
        study_dir=paths.study_dir(study),
        dataset=dataset,
        workdir=paths.root,
        robustness=robustness,
        device=device,
    )
    return render(data, paths.reports / study)
