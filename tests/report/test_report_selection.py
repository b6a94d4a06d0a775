"""Selection labels on records that carry a K-fold ``selection`` record (issue 19.4), built
directly (no search): the CV label, the ± std over folds, Spearman's rho and a missing record
read as validation."""

from __future__ import annotations

import statistics

import pytest
from report_helpers import md_table

from autofuse.report.collect import ReportData
from autofuse.report.labels import collect_selection, read_selection, row_label
from autofuse.report.printers import to_html, to_markdown
from autofuse.report.rows import Row
from autofuse.report.selection import section_selection

K = 5


def _row(number: int, value: float, test: float, *, stage: str, cv: bool, **kw) -> Row:
    scores = [value + d for d in (-0.02, -0.01, 0.0, 0.01, 0.02)]
    sel = {
        "kind": "cv",
        "folds": K,
        "metric": "accuracy",
        "scores": scores,
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "loss": None,
    }
    base = dict.fromkeys(
        ("reason", "baseline", "n_params", "latency_ms", "train_time_s", "duration_s"), None
    ) | dict.fromkeys(("epochs_run", "worker", "device", "started_at", "finished_at"), None)
    base |= {"cache_hits": None, "cache_misses": None}
    return Row(
        **(base | kw),
        number=number,
        status="COMPLETE",
        family="encoder_decoder",
        method="decision",
        point="late",
        encoders={"a": "mlp"},
        value=value,
        val_metrics={"accuracy": value},
        test_metrics={"accuracy": test},
        stage=stage,
        selection=read_selection(sel) if cv else None,
    )


def _data(rows: list[Row], best: dict) -> ReportData:
    d = ReportData(
        study="s",
        source="autofuse history",
        generated_at="now",
        metric="accuracy",
        direction="maximize",
        dataset={"name": "d"},
        dataset_path=None,
        space_name=None,
        budget_trials=None,
        wall_time_s=None,
        span_s=None,
        counts={},
        pruned_reasons={},
        failed=[],
        trials=rows,
        leaderboard=[],
        best=best,
        groups={},
        baselines=[],
        importances={},
        importances_note=None,
        pareto={},
        robustness=None,
        robustness_note=None,
        stages={"stages": []},
    )
    d.selection = collect_selection(rows, best, True, "accuracy", "maximize")
    return d


@pytest.fixture
def cv_study() -> ReportData:
    rows = [
        _row(0, 0.70, 0.69, stage="unimodal", cv=False, unimodal="a"),
        _row(1, 0.80, 0.78, stage="fusion", cv=True, baseline="late_fusion"),
        _row(2, 0.85, 0.80, stage="fusion", cv=True),
        _row(3, 0.90, 0.79, stage="fusion", cv=True),
        _row(4, 0.75, 0.74, stage="fusion", cv=True),
    ]
    best = {  # the best stage-2 design (a study without a winner)
        "kind": "trial",
        "trial": 3,
        "value": 0.90,
        "test_metrics": {"accuracy": 0.79},
        "fusion": "encoder_decoder.decision",
        "point": "late",
        "stage": "fusion",
        "value_kind": "cv",
        "folds": K,
        "value_std": rows[3].selection["std"],
    }
    return _data(rows, best)


def test_cv_label_and_std(cv_study):
    d = cv_study
    r = d.trial(2)
    assert row_label(r) == f"selection estimate (CV, {K} folds)"
    assert row_label(d.trial(0)) == "validation (single split)"  # no record: validation
    s = d.selection
    assert s["kind"] == "cv" and s["folds"] == K and s["n_designs"] == 4
    from scipy.stats import spearmanr

    xs = [0.80, 0.85, 0.90, 0.75]
    ys = [0.78, 0.80, 0.79, 0.74]
    assert s["spearman_selection_test"] == pytest.approx(float(spearmanr(xs, ys).statistic))
    assert s["oracle"]["trial"] == 2 and s["winner_designs"] == [3]
    sec = section_selection(d)
    md = to_markdown(d, [sec])
    html = to_html(d, [sec])
    std = statistics.pstdev([0.88, 0.89, 0.90, 0.91, 0.92])
    headers, rows = md_table(md, "model")
    col = {h: i for i, h in enumerate(headers)}
    sel_col = f"selection estimate (CV, {K} folds) / validation accuracy"
    by_role = {x[col["model"]]: x for x in rows}
    assert list(by_role) == ["winner", "best baseline", "best unimodal"]
    assert by_role["winner"][col[sel_col]] == f"0.9000 ± {std:.4f}"
    assert by_role["winner"][col["figure"]] == f"selection estimate (CV, {K} folds)"
    assert by_role["best baseline"][col[sel_col]].startswith("0.8000 ± ")
    assert by_role["best unimodal"][col[sel_col]] == "0.7000"  # stage 1: no folds, no ±
    assert by_role["best unimodal"][col["figure"]] == "validation (single split)"
    assert by_role["winner"][col["test accuracy"]] == "0.7900"
    assert "± is the standard deviation of the metric over the folds" in md
    assert '<figure id="fig-selection_vs_test"><img' in html
    assert "The test split chose nothing" in html


def test_missing_or_holdout_record_is_validation():
    assert read_selection(None) is None
    assert read_selection({"kind": "holdout", "folds": 1, "scores": [0.5]})["kind"] == "holdout"
    r = _row(1, 0.8, 0.7, stage="fusion", cv=False)
    r.selection = read_selection({"kind": "holdout", "folds": 1, "scores": [0.8]})
    assert row_label(r) == "validation (single split)"
