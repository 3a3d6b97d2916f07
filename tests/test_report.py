"""The HTML report: self-contained, showing what the analyses compute, and rendering in a browser."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from PIL import Image

from shallowdeep.analysis import confusion_report, overthinking
from shallowdeep.cli import main
from shallowdeep.exits import MaxProb, curve, earliest_correct_exit, oracle
from shallowdeep.outputs import load_outputs
from shallowdeep.report import write_report
from shallowdeep.report.cells import pct
from shallowdeep.report.context import balanced_sample
from shallowdeep.report.plots import tradeoff_figure
from shallowdeep.report.sections import confusion_caveat
from shallowdeep.run import open_run
from test_analysis import shared_tiny_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
# Run in the page, it measures the layout and appends it as JSON: the window's width, the page's, each table box's
# (scrolled, shown) widths, and each cell where a number and its % sign fall on different lines.
MEASURE = """
const together = cell => [...cell.childNodes].filter(node => node.nodeType === 3).every(node =>
  [...node.data.matchAll(/\\d\\s%/g)].every(m => {
    const range = document.createRange();
    range.setStart(node, m.index);
    range.setEnd(node, m.index + 3);
    return new Set([...range.getClientRects()].map(box => Math.round(box.top))).size === 1; }));
const measured = {window: window.innerWidth, page: document.documentElement.scrollWidth,
  tables: [...document.querySelectorAll("div.table")].map(box => [box.scrollWidth, box.clientWidth]),
  split: [...document.querySelectorAll("td, th")].filter(cell => !together(cell)).map(cell => cell.textContent)};
const out = document.createElement("pre");
out.id = "measured";
out.textContent = JSON.stringify(measured);
document.body.append(out);
"""


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory) -> tuple[Path, Path]:
    run = shared_tiny_run(tmp_path_factory)
    return run, write_report(run, gradcam_samples=3, examples_per_exit=3)


@pytest.fixture(scope="module")
def results_report(reported_run, tmp_path_factory) -> Path:
    """The report of a copy of the run holding four early-exit results (two policies, a budget, one calibrated on a
    test half): the report's widest tables."""
    source, _ = reported_run
    run = tmp_path_factory.mktemp("results") / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("report"))
    for options in ([], ["--budget", "0.5"], ["--policy", "entropy"], ["--calibrate-on", "test-half"]):
        assert main(["early-exit", str(run), "--device", "cpu", *options]) == 0
    return write_report(run, gradcam_samples=1, examples_per_exit=2)


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def tables(page: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table of the page as (headers, rows of cells), unescaped; a header under a group title is named
    "title header" (e.g. "calibration cost")."""
    found = []
    for head, body in re.findall(r"<table><thead>(.*?)</thead><tbody>(.*?)</tbody></table>", page):
        cells = lambda row: [html.unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]  # noqa: E731
        top, *low = re.findall(r"<tr>(.*?)</tr>", head)
        lower = iter(cells(low[0]) if low else [])
        headers = []
        for span, title in re.findall(r'<th(?: colspan="(\d+)")?[^>]*>(.*?)</th>', top):
            title = html.unescape(title)
            headers += [f"{title} {next(lower)}" for _ in range(int(span))] if span else [title]
        found.append((headers, [cells(row) for row in re.findall(r"<tr>(.*?)</tr>", body)]))
    return found


def table_with(page: str, first_header: str) -> list[list[str]]:
    """The rows of the one table whose first column is ``first_header``."""
    (rows,) = [rows for headers, rows in tables(page) if headers[0] == first_header]
    return rows


def assert_costs_are_percentages(page: str) -> None:
    """Every cost in every table reads as a percentage of the backbone with one decimal."""
    costs = [row[i] for headers, rows in tables(page) for row in rows for i, h in enumerate(headers) if "cost" in h]
    costs += [row[-1] for _, rows in tables(page) for row in rows if "cost" in row[0]]
    assert costs and all(re.fullmatch(r"\d+\.\d\u00a0%|–", c) for c in costs), costs


def test_report_is_one_self_contained_page(reported_run):
    run, index = reported_run
    assert index == run / "report" / "index.html"
    page = index.read_text()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "//" not in text and "url(" not in text and "@import" not in text, "the page must fetch nothing"
    assert "<script" not in page and "<link" not in page
    assert len(re.findall(r"<img ", page)) == len(embedded_images(page)), "every image is a data URI"
    for png in embedded_images(page):
        assert Image.open(io.BytesIO(png)).format == "PNG"
    for anchor in ("exits", "early-exit", "overthinking", "confusion", "gradcam"):
        assert f'id="{anchor}"' in page
    assert 'id="backdoor"' not in page
    assert "run `shallowdeep early-exit RUN`" in page
    written = {p.name for p in (run / "report").glob("*.png")}
    assert written == {"accuracy.png", "tradeoff.png", "earliest_exit.png", "destructive.png", "confusion.png",
                       "gradcam.png"}
    on_page = set(embedded_images(page))
    assert all((run / "report" / name).read_bytes() in on_page for name in written)


def test_report_json_holds_the_analyses_figures(reported_run):
    run, _ = reported_run
    summary = json.loads((run / "report" / "report.json").read_text())
    r = open_run(run)
    test = load_outputs(r, "test")
    expected = overthinking(test, ["IC 1", "IC 2", "IC 3", "final"])
    assert summary["overthinking"] == json.loads(json.dumps(expected))
    assert summary["exits"]["labels"] == ["IC 1", "IC 2", "IC 3", "final"]
    swept = curve(test, MaxProb, np.linspace(0, 1, 201))  # no early-exit.json: the paper's q swept on test
    assert summary["early_exit"]["source"] == "max-probability sweep on test"
    assert summary["early_exit"]["curves"] == [{"label": "max-probability policy, q in [0, 1]",
                                                "flops_fraction": swept.flops_fraction.tolist(),
                                                "accuracy": swept.accuracy.tolist()}]
    assert summary["early_exit"]["results"] == []
    best = oracle(test)
    assert summary["early_exit"]["oracle"] == [best.flops_fraction, best.accuracy]
    assert summary["confusion"]["auroc"] == pytest.approx(confusion_report(load_outputs(r, "train"), test)["auroc"])
    assert summary["exits"]["accuracy"]["test"] == pytest.approx(test.correct.mean(1).tolist())
    assert summary["exits"]["layers"] == ["1", "4", "6", "final head"]
    shown = summary["gradcam"]["shown"]
    assert len(shown) == min(3, summary["gradcam"]["disagreements"]) > 0
    assert all(test.correct[0, i] and not test.correct[-1, i] for i in shown)


def test_report_shows_every_early_exit_result_and_the_backdoor(reported_run, tmp_path):
    source, _ = reported_run
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("report"))
    assert main(["early-exit", str(run), "--budget", "0.5", "--device", "cpu"]) == 0
    earlier = json.loads((run / "early-exit.json").read_text())
    earlier.pop("key")  # what the earlier version wrote: one result, no key, nothing in early-exit/
    shutil.rmtree(run / "early-exit")
    (run / "early-exit.json").write_text(json.dumps(earlier))
    write_report(run, gradcam_samples=0, examples_per_exit=0)
    summary = json.loads((run / "report" / "report.json").read_text())
    point = lambda entry: [entry["flops_fraction"], entry["accuracy"]]  # noqa: E731
    assert summary["early_exit"]["results"] == [{"number": 1, "key": "budget=0.5 maxprob holdout",
                                                 "chosen": point(earlier["test"]["early_exit"])}]

    for options in ([], ["--policy", "entropy"]):  # the earlier result is kept as the new ones are written
        assert main(["early-exit", str(run), "--device", "cpu", *options]) == 0
    stored = {r["key"]: r for r in map(json.loads, map(Path.read_text, (run / "early-exit").glob("*.json")))}
    (run / "backdoor.json").write_text(json.dumps({"attack": {"success_rate": 0.9731, "trigger": "patch"},
                                                   "detection": {"auroc": 0.8125}}))
    marker = Image.new("RGB", (8, 8), (255, 0, 0))
    buf = io.BytesIO()
    marker.save(buf, format="PNG")
    (run / "backdoor-detection.png").write_bytes(buf.getvalue())

    page = write_report(run, gradcam_samples=0, examples_per_exit=0).read_text()
    summary = json.loads((run / "report" / "report.json").read_text())
    keys = ["budget=0.5 maxprob holdout", "max-drop=0.01 entropy holdout", "max-drop=0.01 maxprob holdout"]
    assert summary["early_exit"]["source"] == "early-exit results"
    assert summary["early_exit"]["results"] == [{"number": n, "key": k, "chosen": point(stored[k]["test"]["early_exit"])}
                                                for n, k in enumerate(keys, 1)]
    curves = {c["label"]: c["accuracy"] for c in summary["early_exit"]["curves"]}
    assert curves == {"maxprob policy": stored[keys[0]]["curve"]["test"]["accuracy"],
                      "entropy policy": stored[keys[1]]["curve"]["test"]["accuracy"]}
    rows = table_with(page, "#")
    assert [row[:3] for row in rows] == [["1", f"cost at most {pct(0.5)}", "maxprob"],
                                         ["2", "accuracy drop at most 1.0 points", "entropy"],
                                         ["3", "accuracy drop at most 1.0 points", "maxprob"]]
    for row, key in zip(rows, keys):
        result = stored[key]
        assert row[3] == f"{result['threshold']:.4g}" and row[4] == "holdout split of digits (144 images)"
        assert row[5:] == [pct(result["calibration"]["early_exit"]["accuracy"]),
                           pct(result["calibration"]["early_exit"]["flops_fraction"]),
                           f"test ({result['test']['samples']} images)",
                           pct(result["test"]["early_exit"]["accuracy"]), pct(result["test"]["early_exit"]["flops_fraction"])]
    assert_costs_are_percentages(page)
    assert "run `shallowdeep early-exit RUN`" not in page
    assert 'id="backdoor"' in page and "attack.success_rate" in page and "0.9731" in page and "detection.auroc" in page
    assert buf.getvalue() in embedded_images(page)
    assert not (run / "report" / "gradcam.png").exists() and 'class="gallery"' not in page


def test_examples_are_a_seeded_sample_balanced_over_classes(reported_run):
    run, index = reported_run
    summary = json.loads((run / "report" / "report.json").read_text())
    assert summary["settings"]["seed"] == summary["examples"]["seed"] == summary["gradcam"]["seed"] == 0
    test = load_outputs(open_run(run), "test")
    earliest = earliest_correct_exit(test.correct)
    shown = summary["examples"]["shown"]
    assert list(shown) == ["IC 1", "IC 2", "IC 3", "final", "none"]
    for exit_index, picked in zip([0, 1, 2, 3, -1], shown.values()):
        candidates = np.flatnonzero(earliest == exit_index)
        assert set(picked) <= set(candidates.tolist()) and len(picked) == min(3, candidates.size)
        assert len(set(test.labels[picked].tolist())) == min(len(picked), np.unique(test.labels[candidates]).size)
    assert any(picked != np.flatnonzero(earliest == i)[:3].tolist() for i, picked in zip([0, 1, 2, 3, -1],
                                                                                         shown.values()))


def test_balanced_sample_goes_round_robin_over_classes_of_a_seeded_shuffle():
    labels = np.repeat(np.arange(5), 20)  # a split in folder order: one class after another
    candidates = np.arange(100)
    picked = balanced_sample(candidates, labels, 7, np.random.default_rng(0))
    assert sorted(np.bincount(labels[picked], minlength=5)) == [1, 1, 1, 2, 2]
    assert len(set(picked.tolist())) == 7 and not np.array_equal(picked, candidates[:7])
    assert np.array_equal(picked, balanced_sample(candidates, labels, 7, np.random.default_rng(0)))
    assert not np.array_equal(picked, balanced_sample(candidates, labels, 7, np.random.default_rng(1)))
    assert balanced_sample(candidates[:3], labels, 7, np.random.default_rng(0)).tolist() in (
        [0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])


def test_each_example_caption_is_in_the_figure_of_its_image_under_its_row_title(reported_run):
    _, index = reported_run
    page = index.read_text()
    section = page[page.index('id="overthinking"'):page.index('id="confusion"')]
    rows = re.findall(r'<div class="gallery"><h3>(.*?)</h3>(.*?)</div>', section)
    assert [title.split(":")[0] for title, _ in rows] == ["IC 1", "IC 2", "IC 3", "final", "none"]
    for title, row in rows:
        figures = re.findall(r'<figure class="thumb">(.*?)</figure>', row)
        assert figures or "no sample" in row
        assert "".join(f'<figure class="thumb">{f}</figure>' for f in figures) == row or "no sample" in row
        for figure in figures:
            caption = r"true: [^<]+<br>final: [^<]+" if title.startswith("none") else r"true: [^<]+"
            assert re.fullmatch(rf'<img src="data:image/png;base64,[^"]+" alt="[^"]+"><figcaption>{caption}'
                                r"</figcaption>", figure), figure


def test_costs_are_percentages_and_confusion_is_set_against_plain_confidence(reported_run):
    run, index = reported_run
    page = index.read_text()
    assert_costs_are_percentages(page)
    summary = json.loads((run / "report" / "report.json").read_text())
    auroc = summary["confusion"]["auroc"]
    assert table_with(page, "error indicator (test split)") == [
        ["confusion score", f"{auroc['confusion']:.4g}"],
        ["final head's max probability (scored as 1 - max softmax)", f"{auroc['confidence']:.4g}"]]
    caveat = summary["confusion"]["caveat"]
    assert caveat == confusion_caveat(auroc)
    assert (caveat is None) == (auroc["confusion"] >= auroc["confidence"])
    assert caveat is None or html.escape(caveat) in page
    worse = confusion_caveat({"confusion": 0.65, "confidence": 0.81})
    assert "worse" in worse and "0.65" in worse and "0.81" in worse
    assert confusion_caveat({"confusion": 0.9, "confidence": 0.81}) is None
    assert confusion_caveat({"confusion": None, "confidence": 0.81}) is None


def test_report_command(reported_run, tmp_path, capsys):
    run, _ = reported_run
    assert main(["report", str(run), "--device", "cpu", "--gradcam", "1", "--examples", "2"]) == 0
    assert str(run / "report" / "index.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit) as exc:  # refused by the parser, before any work
        main(["report", str(run), "--gradcam", "-1"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_the_test_half_note_is_attached_to_its_results_only(results_report):
    run = results_report.parents[1]
    page = results_report.read_text()
    rows = table_with(page, "#")
    assert [row[2] for row in rows] == ["maxprob", "entropy", "maxprob", "maxprob"]
    assert [row[7] for row in rows] == ["test (359 images)"] * 3 + ["other half of test (180 images)\u00a0*"]
    half = json.loads(next((run / "early-exit").glob("*test-half*.json")).read_text())["calibrated_on"]
    section = page[page.index('id="early-exit"'):page.index('id="overthinking"')]
    notes = [html.unescape(note) for note in re.findall(r'<p class="note">(.*?)</p>', section)]
    assert notes == [f"* Results marked *: {half['note']} (seed {half['seed']})."]


def test_budgets_with_the_same_best_threshold_share_a_row(results_report):
    run = results_report.parents[1]
    rows = table_with(results_report.read_text(), "policy")
    shown: dict[tuple[str, int], list[list[str]]] = {}  # (policy, images): rows of budget, accuracy, cost, threshold
    for policy, data, *cells in rows:
        shown.setdefault((policy, int(re.search(r"\((\d+) images\)", data)[1])), []).append(cells)
    for result in map(json.loads, map(Path.read_text, (run / "early-exit").glob("*.json"))):
        for split in ("calibration", "test"):
            entries = result[split]["best_at_budget"]
            group = shown[(result["policy"], result[split]["samples"])]
            assert all(a[1:] != b[1:] for a, b in zip(group, group[1:])), f"a row repeats the one above: {group}"
            budgets = [e["budget"] for e in entries]
            expanded = [(pct(budget), *figures) for span, *figures in group for budget in spanned(span, budgets)]
            assert expanded == [(pct(e["budget"]), pct(e["accuracy"]), pct(e["flops_fraction"]),
                                 f"{e['threshold']:.4g}" if e["accuracy"] is not None else e["reason"])
                                for e in entries]
    assert any("–" in cells[0] for group in shown.values() for cells in group), "no budgets merged: nothing tested"


def spanned(span: str, budgets: list[float]) -> list[float]:
    """The budgets a budget cell covers: one ("50.0 %") or a range ("50.0–100.0 %")."""
    low, _, high = span.removesuffix("\u00a0%").partition("–")
    return [b for b in budgets if float(low) <= round(100 * b, 1) <= float(high or low)]


def test_numbers_of_chosen_points_close_together_cover_neither_each_other_nor_a_point():
    pile = [(0.16, 0.8), (0.162, 0.801), (0.16, 0.8), (0.165, 0.799), (0.17, 0.8)]  # within 1 %, two the same
    chosen = [(f"result {i}", point) for i, point in enumerate(pile)] + [("far", (0.6, 0.9))]
    figure = tradeoff_figure([("maxprob policy", [0.05, 0.2, 0.6, 1.0], [0.6, 0.8, 0.9, 0.91])], (0.3, 0.97),
                             (1.0, 0.91), chosen)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    axes = figure.axes[0]
    labels = sorted(axes.texts, key=lambda text: int(text.get_text()))
    assert [(text.get_text(), text.xy) for text in labels] == [(str(n), (100 * x, 100 * y))
                                                               for n, (_, (x, y)) in enumerate(chosen, 1)]
    boxes = [Text.get_window_extent(text, renderer) for text in labels]  # the number's own (not its line's)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), "two numbers overlap"
    points = axes.transData.transform([(100 * x, 100 * y) for _, (x, y) in chosen])
    assert not any(box.contains(*point) for box in boxes for point in points), "a number covers a point"


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("width", [800, 1280])
def test_report_fits_the_window_in_headless_chromium(results_report, tmp_path, width):
    page = results_report.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", f"<script>{MEASURE}</script></body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},2000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    measured = json.loads(html.unescape(re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)[1]))
    assert measured["window"] == width and measured["page"] <= width
    assert len(measured["tables"]) == len(tables(page)) and all(shown >= scrolled > 0
                                                                for scrolled, shown in measured["tables"]), measured
    assert measured["split"] == []
    shot = tmp_path / "shot.png"
    done = subprocess.run(["bash", str(SCRIPT), str(results_report), str(shot), "3000", str(width)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (3000, width) and (image < 200).mean() > 0.02
    assert (image[:, -20:] > 250).all(), "something is drawn in the page's right margin"


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    run, _ = reported_run
    shot = tmp_path / "shot.png"
    done = subprocess.run(["bash", str(SCRIPT), str(run), str(shot), "2400"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (2400, 1280)
    drawn_rows = (image < 200).any(axis=1)
    assert drawn_rows[:300].any() and drawn_rows[1000:2400].any(), "the title and the figures must be drawn"
    assert (image < 200).mean() > 0.02
