"""The report of a staged study: the stages section against the SQL history, and the leaderboard,
baselines, comparison and robustness sections reading the winner, not the top trial by value.

One staged study is searched once for the module (demo data, tests/spaces/staged.yaml: 3 unimodal
trials, 6 fusion-search trials, 2 finalist designs x 2 seeds), then its report is written.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from report_helpers import md_table

REPO = Path(__file__).resolve().parents[2]
STUDY = "staged_report"


@pytest.fixture(scope="module")
def staged(tmp_path_factory, demo_dataset):
    """A finished staged study and its report: ``(workdir, storage url, report paths, data)``."""
    import torch

    from autofuse.report import write_report
    from autofuse.study import search

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work = tmp_path_factory.mktemp("staged_report")
        search(
            demo_dataset,
            study=STUDY,
            space=REPO / "tests" / "spaces" / "staged.yaml",
            workdir=work,
            progress=False,
            device="cpu",
            mlflow_uri="off",
            report=False,
        )
        url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
        out = write_report(STUDY, workdir=work, device="cpu")
        yield work, url, out, json.loads(out["data"].read_text())
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def history(staged):
    """The SQL history (autofuse's tables) and each trial's Optuna user attributes."""
    import optuna

    from autofuse.storage.history import HistoryStore

    _, url, _, _ = staged
    recs = HistoryStore(url, create=False).trials(STUDY)
    st = optuna.load_study(study_name=STUDY, storage=url)
    attrs = {t.number: t.user_attrs for t in st.trials}
    return recs, attrs, st.user_attrs["winner"]


# ---- the stages section ----------------------------------------------------------------------


def test_stage_counts_match_sql_history(staged, history):
    _, _, _, data = staged
    recs, _, _ = history
    assert {r.stage for r in recs} == {"unimodal", "fusion", "finalist"}
    by_stage = {x["stage"]: x for x in data["stages"]["stages"]}
    assert list(by_stage) == ["unimodal", "fusion", "finalist"]  # search order
    for stage, x in by_stage.items():
        rs = [r for r in recs if r.stage == stage]
        assert x["trials"] == len(rs)
        assert x["completed"] == sum(r.status == "COMPLETE" for r in rs)
        assert x["pruned"] == sum(r.status == "PRUNED" for r in rs)
        assert x["failed"] == sum(r.status == "FAIL" for r in rs)
        assert x["low_fidelity"] == sum(bool(r.low_fidelity) for r in rs)
        wall = sum((r.finished_at - r.started_at).total_seconds() for r in rs)
        assert x["trial_time_s"] == pytest.approx(wall)
        assert x["train_time_s"] == pytest.approx(sum(r.train_time_s or 0 for r in rs))
        span = max(r.finished_at for r in rs) - min(r.started_at for r in rs)
        assert x["span_s"] == pytest.approx(span.total_seconds(), abs=1.0)  # seconds precision
    # staged.yaml: one stage-1 trial per modality, 2 finalist designs x 2 seeds
    assert by_stage["unimodal"]["trials"] == 3
    assert by_stage["finalist"]["trials"] == 4
    # the Markdown table shows the same counts
    md = staged[2]["markdown"].read_text()
    headers, rows = md_table(md, "stage")
    col = {h: i for i, h in enumerate(headers)}
    for row in rows:
        x = by_stage[row[0]]
        assert int(row[col["trials"]]) == x["trials"]
        assert int(row[col["completed"]]) == x["completed"]
        assert int(row[col["low fidelity"]]) == x["low_fidelity"]


def test_unimodal_versus_fused(staged, history):
    _, _, _, data = staged
    recs, attrs, winner = history
    s = data["stages"]
    uni = {u["modality"]: u for u in s["unimodal"]}
    assert set(uni) == {"image", "text", "tabular"}
    for m, u in uni.items():
        rs = [
            r
            for r in recs
            if r.stage == "unimodal"
            and r.status == "COMPLETE"
            and attrs[r.number]["unimodal"]["modality"] == m
        ]
        best = max(rs, key=lambda r: (r.value, -r.number))
        assert u["trial"] == best.number
        assert u["val"] == pytest.approx(best.value)
        assert u["test"] == pytest.approx(best.test_metrics["accuracy"])
    fusion = [r for r in recs if r.stage == "fusion" and r.status == "COMPLETE"]
    best_fusion = max(fusion, key=lambda r: (r.value, -r.number))
    assert s["best_fusion"]["trial"] == best_fusion.number
    assert s["best_fusion"]["val"] == pytest.approx(best_fusion.value)
    best_uni = max(u["val"] for u in uni.values())
    assert s["winner_vs_unimodal"] == pytest.approx(winner["val"] - best_uni)


def test_winner_kind_and_members(staged, history):
    _, _, out, data = staged
    recs, attrs, winner = history
    w = data["stages"]["winner"]
    assert w["kind"] == winner["kind"] and w["why"] == winner["why"]
    assert w["trials"] == winner["trials"]
    assert w["weights"] == pytest.approx(winner["weights"])
    assert w["val"] == pytest.approx(winner["val"])
    assert w["test_metrics"] == pytest.approx(winner["test"])
    by_number = {r.number: r for r in recs}
    for m in w["members"]:
        r = by_number[m["trial"]]
        assert r.stage == "finalist"
        assert m["design"] == attrs[r.number]["finalist_of"]
        assert m["seed"] == attrs[r.number]["seed"]
        assert m["value"] == pytest.approx(r.value)
    finals = [r for r in recs if r.stage == "finalist" and r.status == "COMPLETE"]
    assert w["best_single"]["val"] == pytest.approx(max(r.value for r in finals))
    # the report's best design is the winner, not the top trial by value
    best = data["best"]
    assert best["kind"] == winner["kind"] and best["trials"] == winner["trials"]
    assert best["value"] == pytest.approx(winner["val"])
    md = out["markdown"].read_text()
    assert f"Chosen: {'a greedy ensemble' if w['kind'] == 'ensemble' else 'a single model'}" in md
    assert winner["why"] in md
    headers, rows = md_table(md, "trial")  # the winner's members
    assert [int(r[0]) for r in rows] == winner["trials"]


def test_seed_values_per_design(staged, history):
    _, _, out, data = staged
    recs, attrs, winner = history
    designs: dict[int, list] = {}
    for r in sorted(recs, key=lambda r: (attrs[r.number].get("seed", 0), r.number)):
        if r.stage == "finalist" and r.status == "COMPLETE":
            designs.setdefault(attrs[r.number]["finalist_of"], []).append(r)
    seeds = {g["design"]: g for g in data["stages"]["seeds"]}
    assert set(seeds) == set(designs) and len(designs) == 2
    recorded = {g["design"]: g for g in winner["designs"]}
    for design, rs in designs.items():
        g = seeds[design]
        assert g["trials"] == [r.number for r in rs]
        assert g["seeds"] == [attrs[r.number]["seed"] for r in rs]
        assert g["values"] == pytest.approx([r.value for r in rs])
        assert g["mean"] == pytest.approx(statistics.fmean(r.value for r in rs))
        assert g["std"] == pytest.approx(statistics.pstdev(r.value for r in rs))
        # the same numbers the search chose its winner by
        assert g["mean"] == pytest.approx(recorded[design]["mean"])
        assert g["std"] == pytest.approx(recorded[design]["std"])
        assert g["chosen"] == (design == winner["design"])
        src = next(r for r in recs if r.number == design)
        assert src.stage == "fusion" and g["design_val"] == pytest.approx(src.value)
    headers, rows = md_table(out["markdown"].read_text(), "design")
    col = {h: i for i, h in enumerate(headers)}
    for row in rows:
        g = seeds[int(row[0])]
        assert row[col["mean +/- std"]] == f"{g['mean']:.4f} +/- {g['std']:.4f}"
        for v in g["values"]:
            assert f"{v:.4f}" in row[col["val accuracy per seed"]]


def test_html_and_markdown_have_the_stages_section(staged):
    from autofuse.report.sections import SECTIONS

    _, _, out, _ = staged
    html = out["html"].read_text()
    md = out["markdown"].read_text()
    for sid, title in SECTIONS.items():
        assert f'<section id="{sid}">' in html
        assert f"## {title}" in md
    sec = html.split('<section id="stages">', 1)[1].split("</section>", 1)[0]
    for h in (
        "Time and trials per stage",
        "Unimodal versus fused",
        "Single model versus ensemble",
        "Seed spread of the finalists",
    ):
        assert f"<h3>{h}</h3>" in sec and f"### {h}" in md
    for table in ("stages", "unimodal_vs_fused", "winner_members", "seeds"):
        assert f'id="table-{table}"' in sec
    assert '<figure id="fig-seeds"><img' in sec and '<figure id="fig-stage_models"><img' in sec
    for name in ("seeds", "stage_models"):
        assert f"(figures/{name}.png)" in md
        assert (out["figures"] / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "A single-stage search" not in md


# ---- the other sections read the stages ----------------------------------------------------


def test_leaderboard_starts_with_the_winner(staged, history):
    _, _, out, data = staged
    recs, _, winner = history
    assert data["leaderboard"][: len(winner["trials"])] == winner["trials"]
    headers, rows = md_table(out["markdown"].read_text(), "rank")
    col = {h: i for i, h in enumerate(headers)}
    assert "stage" in col and "winner" in col
    stage = {r.number: r.stage for r in recs}
    if winner["kind"] == "ensemble":
        first = rows.pop(0)
        assert first[col["trial"]] == "+".join(str(n) for n in winner["trials"])
        assert first[col["val accuracy"]] == f"{winner['val']:.4f}"
        assert first[col["test accuracy"]] == f"{winner['test']['accuracy']:.4f}"
    else:
        assert rows[0][col["winner"]] == "winner"
    assert [int(r[col["trial"]]) for r in rows[: len(winner["trials"])]] == winner["trials"]
    for row in rows:
        assert row[col["stage"]] == stage[int(row[col["trial"]])]


def test_baselines_and_comparison_are_stage_2(staged, history):
    _, _, _, data = staged
    recs, _, winner = history
    stage = {r.number: r.stage for r in recs}
    baselines = [r for r in recs if r.baseline]
    assert baselines and {b["trial"] for b in data["baselines"]} == {r.number for r in baselines}
    assert all(stage[b["trial"]] == "fusion" for b in data["baselines"])
    for b in data["baselines"]:
        if b["val"] is not None:  # against the winner
            assert math.isclose(b["val_diff"], winner["val"] - b["val"])
    fusion = [r for r in recs if r.stage == "fusion"]
    for groups in data["groups"].values():
        assert sum(g["trials"] for g in groups) >= len(fusion)
        for g in groups:
            assert g["best_trial"] is None or stage[g["best_trial"]] == "fusion"
    assert "unimodal" not in {g["name"] for g in data["groups"]["family"]}
    assert sum(g["trials"] for g in data["groups"]["family"]) == len(fusion)


def test_robustness_evaluates_the_winner(staged, history):
    _, _, _, data = staged
    _, _, winner = history
    rb = data["robustness"]
    assert rb is not None, data["robustness_note"]
    assert [f["trial"] for f in rb["finalists"]] == winner["trials"]
    for f in rb["finalists"]:
        assert len(f["conditions"]) == 2 * len(rb["modalities"])
        for k, v in f["recorded_test"].items():
            assert f["clean"][k] == pytest.approx(v, abs=1e-9)
    if winner["kind"] == "ensemble":
        e = rb["ensemble"]
        assert e["trials"] == winner["trials"]
        # the members' outputs combined with the winner's weights score what the search recorded
        assert e["clean"] == pytest.approx(winner["test"], abs=1e-9)
    else:
        assert rb["ensemble"] is None


# ---- selection versus test (issue 19.4) ------------------------------------------------------


def _stage2_pairs(recs) -> tuple[list[float], list[float]]:
    done = [
        r
        for r in recs
        if r.stage == "fusion"
        and r.status == "COMPLETE"
        and r.value is not None
        and (r.test_metrics or {}).get("accuracy") is not None
    ]
    return [r.value for r in done], [r.test_metrics["accuracy"] for r in done]


def test_selection_spearman_matches_scipy(staged, history):
    from scipy.stats import spearmanr

    work, _, _, data = staged
    recs, _, _ = history
    xs, ys = _stage2_pairs(recs)
    assert len(xs) >= 3
    rho = float(spearmanr(xs, ys).statistic)
    sel = data["selection"]
    assert sel["n_designs"] == len(xs)
    assert sel["kind"] == "cv" and sel["folds"] == 5  # stages.folds defaults to 5
    summary = json.loads((work / "trials" / STUDY / "summary.json").read_text())
    for got in (sel["spearman_selection_test"], summary["selection"]["spearman_selection_test"]):
        if math.isnan(rho):  # constant scores: no ranking to compare
            assert got is None
        else:
            assert got == pytest.approx(rho)
    assert summary["selection"]["n_designs"] == len(xs)
    assert summary["selection"]["kind"] == "cv"  # stages.folds defaults to 5
    assert summary["best_value_label"] in (
        "validation (single split)",  # the winner's finalist model on the validation split
        "validation (ensemble weights fitted out of fold, on other rows)",
    )
    assert summary["test_metrics_label"] == "test"
    assert all(
        b["value_label"] == "selection estimate (CV, 5 folds)"
        for b in summary["baselines"].values()
    )
    assert sorted(p["trial"] for p in sel["points"]) == sorted(
        r.number
        for r in recs
        if r.stage == "fusion"
        and r.status == "COMPLETE"
        and r.test_metrics.get("accuracy") is not None
    )


def test_selection_section_labels_and_scatter(staged, history):
    _, _, out, data = staged
    _, _, winner = history
    html = out["html"].read_text()
    md = out["markdown"].read_text()
    sec = html.split('<section id="selection">', 1)[1].split("</section>", 1)[0]
    assert '<figure id="fig-selection_vs_test"><img' in sec
    assert "(figures/selection_vs_test.png)" in md
    assert (out["figures"] / "selection_vs_test.png").read_bytes().startswith(b"\x89PNG")
    assert "The test split chose nothing" in sec and "Spearman" in sec
    assert "validation (single split)" in md and "validation (single split)" in sec
    assert "selection estimate (CV, 5 folds)" in md
    # the winner's figure: a finalist's validation metric, or an ensemble's on rows its weights
    # (fitted out of fold) never saw: validation either way, never in-sample
    assert data["best"]["value_kind"] == "validation"
    assert "in-sample (validation used to choose the ensemble)" not in md


def test_selection_table_winner_baseline_unimodal(staged, history):
    _, _, out, data = staged
    recs, attrs, winner = history
    headers, rows = md_table(out["markdown"].read_text(), "model")
    col = {h: i for i, h in enumerate(headers)}
    sel_col = "selection estimate (CV, 5 folds) / validation accuracy"
    assert sel_col in col and "test accuracy" in col
    by_role = {r[col["model"]]: r for r in rows}
    assert list(by_role) == ["winner", "best baseline", "best unimodal"]
    w = by_role["winner"]
    assert w[col["trial"]] == "+".join(str(n) for n in winner["trials"])
    assert w[col[sel_col]] == f"{winner['val']:.4f}"
    assert w[col["test accuracy"]] == f"{winner['test']['accuracy']:.4f}"
    done = [r for r in recs if r.status == "COMPLETE"]
    base = max((r for r in done if r.baseline), key=lambda r: (r.value, -r.number))
    b = by_role["best baseline"]
    assert int(b[col["trial"]]) == base.number
    assert b[col["figure"]].startswith("selection estimate (CV, 5 folds)")
    assert b[col[sel_col]] == f"{base.value:.4f} ± {base.selection['std']:.4f}"
    assert b[col["test accuracy"]] == f"{base.test_metrics['accuracy']:.4f}"
    uni = max((r for r in done if r.stage == "unimodal"), key=lambda r: (r.value, -r.number))
    u = by_role["best unimodal"]
    assert int(u[col["trial"]]) == uni.number
    assert u[col[sel_col]] == f"{uni.value:.4f}"
    assert u[col["test accuracy"]] == f"{uni.test_metrics['accuracy']:.4f}"
    assert [c["role"] for c in data["selection"]["compare"]] == list(by_role)
