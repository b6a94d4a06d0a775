"""The comparison report of a small finished study: files, Chromium rendering, numbers.

One study is searched once for the module (demo data, fast fusion methods, a frozen text encoder
so the feature cache is exercised, a median pruner so some trials are pruned), then the report is
written and checked: every section present and every figure loaded in headless Chromium without
console errors (a screenshot is kept as an artifact), the Markdown figures on disk, the
leaderboard equal to the SQL history, and the robustness numbers equal to a hand evaluation of
the finalists' checkpoints.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import pytest
from browser import chromium
from report_helpers import md_table

REPO = Path(__file__).resolve().parents[2]
STUDY = "report_demo"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _space():
    from autofuse.space import EncoderChoice, PrunerConfig, Range, load_space

    sp = load_space(REPO / "tests" / "spaces" / "tiny_all.yaml")
    f = sp.fusion
    fusion = {
        "encoder_decoder": {k: f["encoder_decoder"][k] for k in ("early", "decision")},
        "constraint": {k: f["constraint"][k] for k in ("tensor", "low_rank_tensor")},
        "graph": {"modality_graph": f["graph"]["modality_graph"]},
    }
    training = sp.training.model_copy(
        update={
            "epochs": 6,
            "patience": 6,
            "batch_size": [16],
            "lr": Range(low=0.005, high=0.02, log=True),
        }
    )
    encoders = dict(sp.encoders)
    # the bundled MiniLM, frozen: the finalists' text features come from the feature cache
    encoders["text"] = [
        EncoderChoice(name="text.sentence_transformer", modes=["frozen"], params={"dim": [32]})
    ] + list(encoders["text"])
    return sp.model_copy(
        update={
            "name": "report_test",
            "fusion": fusion,
            "training": training,
            "encoders": encoders,
            "baselines": ["late_fusion", "tensor_fusion"],
            # never prunes before 3 trials completed: the top 3 finalists always exist
            "pruner": PrunerConfig(name="median", n_startup_trials=3, n_warmup_steps=1),
        }
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory, demo_dataset):
    """A finished 6-trial study and its report: ``(workdir, storage url, report paths)``."""
    import torch

    from autofuse.report import write_report
    from autofuse.study import search

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, intra-op threads cost several times their gain
    try:
        work = tmp_path_factory.mktemp("report_work")
        search(
            demo_dataset,
            study=STUDY,
            trials=6,
            space=_space(),
            workdir=work,
            progress=False,
            device="cpu",
            mlflow_uri="off",
            report=False,
        )
        url = f"sqlite:///{work / 'trials' / 'autofuse.db'}"
        out = write_report(STUDY, workdir=work, device="cpu")
        yield work, url, out
    finally:
        torch.set_num_threads(threads)


def _history(url: str) -> list[dict]:
    """The trial history straight from SQL (autofuse's tables, else Optuna's trial attributes)."""
    from autofuse.storage.history import HistoryStore

    recs = HistoryStore(url, create=False).trials(STUDY)
    if recs:
        return [
            {
                "number": r.number,
                "status": r.status,
                "value": r.value,
                "val": r.val_metrics or {},
                "test": r.test_metrics or {},
            }
            for r in recs
        ]
    import optuna

    st = optuna.load_study(study_name=STUDY, storage=url)
    return [
        {
            "number": t.number,
            "status": t.state.name,
            "value": t.value,
            "val": t.user_attrs.get("val_metrics") or {},
            "test": t.user_attrs.get("test_metrics") or {},
        }
        for t in st.trials
    ]


# ---- files -----------------------------------------------------------------------------------


def test_report_files_and_sections(study):
    from autofuse.report.sections import SECTIONS

    work, _, out = study
    assert out["html"] == work / "reports" / STUDY / "report.html"
    html = out["html"].read_text()
    md = out["markdown"].read_text()
    for sid, title in SECTIONS.items():
        assert f'<section id="{sid}">' in html
        assert f'<a id="{sid}"></a>' in md and f"## {title}" in md
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", html)
    assert "<link" not in html and "<script src" not in html


def test_every_figure_is_an_inlined_png(study):
    from PIL import Image

    _, _, out = study
    html = out["html"].read_text()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert (
        len(srcs) >= 10
    )  # diagram, 4 comparisons, baselines, history, importances, pareto, robustness, cost
    assert len(srcs) == html.count("<img")
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()


def test_markdown_figures_exist(study):
    _, _, out = study
    md = out["markdown"].read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(x).stem for x in links} >= {
        "architecture",
        "by_family",
        "by_method",
        "by_point",
        "by_encoder",
        "baselines",
        "history",
        "pareto",
        "robustness",
        "cost",
    }
    for link in links:
        p = out["markdown"].parent / link
        assert p.is_file() and p.read_bytes().startswith(PNG_MAGIC), link


def test_markdown_leaderboard_matches_sql_history(study):
    from autofuse.report.collect import LEADERBOARD_ROWS

    _, url, out = study
    history = _history(url)
    done = [t for t in history if t["status"] == "COMPLETE"]
    assert len(done) >= 3
    expected = sorted(done, key=lambda t: (-t["value"], t["number"]))[:LEADERBOARD_ROWS]
    headers, rows = md_table(out["markdown"].read_text(), "rank")
    assert len(rows) == len(expected)
    col = {h: i for i, h in enumerate(headers)}
    assert "stage" not in col and "winner" not in col  # a single-stage study
    for rank, (row, t) in enumerate(zip(rows, expected, strict=True), start=1):
        assert int(row[col["rank"]]) == rank
        assert int(row[col["trial"]]) == t["number"]
        for k, v in t["val"].items():
            if f"val {k}" in col:
                assert row[col[f"val {k}"]] == f"{v:.4f}"
        for k, v in t["test"].items():
            assert row[col[f"test {k}"]] == f"{v:.4f}"
    assert f"{expected[0]['value']:.4f}" == rows[0][col["val accuracy"]]
    # the summary counts match the history too
    summary = out["data"].read_text()
    counts = json.loads(summary)["counts"]
    assert counts["completed"] == len(done)
    assert counts["pruned"] == sum(t["status"] == "PRUNED" for t in history)


def test_baselines_section_shows_difference(study):
    _, _, out = study
    data = json.loads(out["data"].read_text())
    assert {b["baseline"] for b in data["baselines"]} == {"late_fusion", "tensor_fusion"}
    best = data["best"]
    for b in data["baselines"]:
        if b["val"] is not None:
            assert math.isclose(b["val_diff"], best["value"] - b["val"])
    headers, rows = md_table(out["markdown"].read_text(), "design")
    assert rows[-1][0] == "best found" and int(rows[-1][1]) == best["trial"]


# ---- robustness: evaluated from the checkpoints ----------------------------------------------


def test_robustness_is_evaluated_from_checkpoints(study, demo_dataset):
    import torch

    from autofuse.checkpoints import CheckpointStore
    from autofuse.data import Dataset
    from autofuse.paths import Paths
    from autofuse.report.robustness import load_finalist, relative
    from autofuse.runner import CandidateRunner
    from autofuse.train import ablate, evaluate

    work, _, out = study
    data = json.loads(out["data"].read_text())
    rb = data["robustness"]
    assert rb is not None, data["robustness_note"]
    board = data["leaderboard"]
    fins = rb["finalists"]
    assert [f["trial"] for f in fins] == board[:3]  # the top 3, all with checkpoints
    assert set(rb["modalities"]) == {"image", "text", "tabular"}
    for f in fins:
        assert len(f["conditions"]) == 6  # 3 modalities x (removed, noise)
        # the rebuilt checkpoint scores what the search recorded
        for k, v in f["recorded_test"].items():
            assert f["clean"][k] == pytest.approx(v, abs=1e-9)
    changed = [
        (f["trial"], c["modality"])
        for f in fins
        for c in f["conditions"]
        if c["how"] == "remove" and c["metrics"] != f["clean"]
    ]
    assert changed, "removing a modality changed no finalist's metrics: not a real evaluation"

    # recompute one value by hand
    f = fins[0]
    cond = next(c for c in f["conditions"] if c["how"] == "remove" and c["modality"] == "text")
    dev = torch.device("cpu")
    paths = Paths.resolve(work)
    runner = CandidateRunner(Dataset.load(demo_dataset), paths.cache, dev)
    model, tdata = load_finalist(CheckpointStore(paths.study_dir(STUDY)), f["trial"], runner, dev)
    clean = evaluate(model, tdata, "test", dev)
    ablated = evaluate(model, ablate(tdata, "text", "remove"), "test", dev)
    assert clean == pytest.approx(f["clean"])
    assert ablated == pytest.approx(cond["metrics"])
    assert relative(clean["accuracy"], ablated["accuracy"], "maximize") == pytest.approx(
        cond["relative"]
    )


# ---- Chromium ------------------------------------------------------------------------------

_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); }, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var p = document.createElement("div");
  p.id = "probe";
  p.setAttribute("data-images", imgs.length);
  p.setAttribute("data-loaded", imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
  p.setAttribute("data-errors", window.__errors.join(" | "));
  p.setAttribute("data-sortable", document.querySelectorAll("table.sortable th[title]").length);
  document.body.appendChild(p);
});
</script>"""


def _page_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "Uncaught" in line or ":CONSOLE" in line and "ERROR" in line
    ]


def test_html_in_headless_chromium(study, tmp_path):
    _, _, out = study
    html = out["html"].read_text()
    # the probe goes first in <head>, so it sees every error of the report's own script
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + _PROBE, 1))
    res = chromium(
        [
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.as_uri(),
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    from autofuse.report.sections import SECTIONS

    for sid in SECTIONS:
        assert f'<section id="{sid}">' in dom, sid
    m = re.search(
        r'<div id="probe" data-images="(\d+)" data-loaded="(\d+)" data-errors="([^"]*)" '
        r'data-sortable="(\d+)"',
        dom,
    )
    assert m, "the load probe did not run"
    images, loaded, errors, sortable = int(m[1]), int(m[2]), m[3], int(m[4])
    assert images >= 10 and loaded == images, f"{loaded}/{images} figures loaded"
    assert errors == "", errors
    assert sortable > 0  # the report's own script ran
    assert not _page_errors(res.stderr), _page_errors(res.stderr)

    # the unmodified report: console clean, and a screenshot kept as the test artifact
    shot = out["html"].parent / "screenshot.png"
    res = chromium(
        [
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=1400,4000",
            f"--screenshot={shot}",
            out["html"].as_uri(),
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert not _page_errors(res.stderr), _page_errors(res.stderr)
    assert shot.read_bytes().startswith(PNG_MAGIC)
    print(f"report screenshot: {shot}")


def test_console_error_detection_works(tmp_path):
    """The console check above would see an error: a page that throws is reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>"
    )
    res = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()], tmp_path)
    assert _page_errors(res.stderr), res.stderr[-2000:]


# ---- small studies and the command line ----------------------------------------------------


def test_report_of_a_one_trial_study(study, demo_dataset):
    """Too few trials for importances or baselines: the report says so instead of failing."""
    from autofuse.report import write_report
    from autofuse.study import search

    work = study[0]  # same work directory: the prepared inputs are cached already
    search(
        demo_dataset,
        study="one",
        trials=1,
        space=REPO / "tests" / "spaces" / "tiny.yaml",
        workdir=work,
        progress=False,
        device="cpu",
        mlflow_uri="off",
        report=False,
        baselines=False,
    )
    out = write_report("one", workdir=work, robustness=False)
    md = out["markdown"].read_text()
    assert "Parameter importances are not available: needs at least 3 completed trials" in md
    assert "No hand-designed baselines were enqueued" in md
    assert "robustness evaluation skipped" in md
    # a single-stage study: the stages section is one short note, report.json has no stages
    stages = md.split('<a id="stages"></a>', 1)[1].split("<a id=", 1)[0]
    assert "A single-stage search" in stages and "|" not in stages
    assert json.loads(out["data"].read_text())["stages"] is None
    headers, rows = md_table(md, "rank")
    assert len(rows) == 1


def test_cli_report(study, tmp_path):
    from click.testing import CliRunner

    from autofuse.cli import main

    work, url, _ = study
    # another work directory (the study's database passed with --storage): the fixture's report stays
    res = CliRunner().invoke(
        main,
        [
            "report",
            "--study",
            STUDY,
            "--workdir",
            str(tmp_path),
            "--storage",
            url,
            "--no-robustness",
        ],
    )
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "reports" / STUDY / "report.html") in res.output
    assert (tmp_path / "reports" / STUDY / "figures" / "history.png").is_file()
    res = CliRunner().invoke(main, ["report", "--study", "no_such_study", "--workdir", str(work)])
    assert res.exit_code != 0
    assert "no_such_study" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["report", "--study", "x", "--workdir", str(tmp_path)])
    assert res.exit_code != 0 and "no study database" in res.output
