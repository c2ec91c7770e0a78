"""The HTML report (dpdiff/viz/report/): written by `dpdiff test` (evaluate_and_report), rebuilt by `dpdiff report`,
drawn without the model, and rendered by a real browser (headless Chromium, driven directly: no Python dependency)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpdiff.cli import main
from dpdiff.data.synthetic import generate_synthetic_dataset
from dpdiff.figure_data import REPORT_DATA_FILE, ReportData, token_labels, unpack_mask
from dpdiff.training.trainer import load_history
from dpdiff.viz.report import build_report
from dpdiff.workflows import reporting as evaluation
from dpdiff.workflows.reporting import evaluate_and_report, rebuild_report
from dpdiff.workflows.train import train

CATEGORIES = 2
PER_KIND = 2  # evaluate's default report_examples
# per category: PER_KIND false positives + PER_KIND false negatives + 2 prototype maps; then t-SNE + losses
EXPECTED_IMAGES = CATEGORIES * (2 * PER_KIND + 2) + 2
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" data-file="([^"]+)">')


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_config):
    """A tiny trained and evaluated run: (run folder, evaluate's result)."""
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(
        root,
        num_categories=CATEGORIES,
        train_per_category=6,
        test_good_per_category=3,
        test_defect_per_category=3,
        image_size=64,
        seed=0,
    )
    run = tmp_path_factory.mktemp("run") / "r"
    train(tiny_config(root), run)
    result = evaluate_and_report(run, output_dir=run / "eval", overlays_per_category=0)
    return run, result


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _images(text: str) -> list[tuple[bytes, str]]:
    return [(base64.b64decode(b64), f) for b64, f in IMG_RE.findall(text)]


@pytest.mark.integration
def test_evaluate_writes_a_self_contained_report(evaluated):
    run, result = evaluated
    out = run / "eval" / "report.html"
    assert result["report"] is not None and Path(result["report"]["html"]) == out
    text = out.read_text(encoding="utf-8")
    # the metrics table: one row per category in the body, the mean in the footer, values from results.json
    body = text.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == CATEGORIES
    for cat, m in result["per_category"].items():
        assert f'<td data-v="{cat}">{cat}</td>' in body
        assert f'data-v="{float(m["I-AUROC"])!r}"' in body
    assert text.split("<tfoot>")[1].count("<tr>") == 1
    # self-contained: no external scripts, styles or images
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:)', text)
    imgs = _images(text)
    assert len(imgs) == text.count("<img ") == EXPECTED_IMAGES
    for png, rel in imgs:  # each embedded image is a valid PNG and the same bytes as its file
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.width > 0 and im.height > 0
        im.verify()
        assert (out.parent / rel).read_bytes() == png, rel
    files = {p.name for p in (run / "eval" / "report_files").iterdir()}
    assert sum(n.startswith("fp_") for n in files) == sum(n.startswith("fn_") for n in files) == CATEGORIES * PER_KIND
    assert sum(n.startswith("proto_") for n in files) == 2 * CATEGORIES
    assert {"tsne_tokens.png", "tsne_tokens.csv", "loss_curves.png", "examples.csv", "report.json"} <= files
    rows = _csv_rows(run / "eval" / "report_files" / "examples.csv")
    assert len(rows) == 2 * CATEGORIES * PER_KIND and all((out.parent / r["png"]).is_file() for r in rows)
    # false positives are the highest-scoring normal images, false negatives the lowest-scoring defective ones
    scores = _csv_rows(run / "eval" / "image_scores.csv")
    for cat in result["per_category"]:
        good = sorted((float(r["score"]) for r in scores if r["category"] == cat and r["label"] == "0"), reverse=True)
        bad = sorted(float(r["score"]) for r in scores if r["category"] == cat and r["label"] == "1")
        fp = [float(r["score"]) for r in rows if r["category"] == cat and r["kind"] == "fp"]
        fn = [float(r["score"]) for r in rows if r["category"] == cat and r["kind"] == "fn"]
        assert fp == pytest.approx(good[:PER_KIND]) and fn == pytest.approx(bad[:PER_KIND])


@pytest.mark.integration
def test_report_data_round_trip(evaluated):
    run, result = evaluated
    data = ReportData.load(run / "eval" / REPORT_DATA_FILE)
    assert len(data.examples) == 2 * CATEGORIES * PER_KIND and len(data.probes) == 3 * CATEGORIES
    assert data.map_size == 64 and set(data.scales) == {e["category"] for e in data.examples}
    fn = [e for e in data.examples if e["kind"] == "fn"]
    assert all(e["map"].shape == (64, 64) and np.isfinite(e["map"]).all() for e in data.examples)
    assert all(unpack_mask(e["mask"], 64).any() for e in fn)  # defective images carry their ground truth
    # the model's outputs on the probe images are saved too, so `dpdiff report` only draws
    po, kept = data.probe_outputs, result["report_data"].probe_outputs
    assert po.index == kept.index and len(po.index) == 3 * CATEGORIES
    assert po.sim_local.shape == (3 * CATEGORIES, 4, 4) and np.array_equal(po.sim_local, kept.sim_local)
    assert np.array_equal(po.sim_global, kept.sim_global) and np.abs(po.sim_global).max() <= 1 + 1e-6
    t = po.tokens
    assert t.before.shape == t.after.shape == (len(t.labels), 152) and set(np.unique(t.labels)) <= {0, 1}
    assert np.array_equal(t.before, kept.tokens.before) and np.array_equal(t.after, kept.tokens.after)
    assert list(t.categories) == list(kept.tokens.categories) and t.images == len(po.index)


@pytest.mark.integration
def test_cli_report_refuses_to_overwrite(evaluated, tmp_path, capsys):
    run, _ = evaluated
    out = tmp_path / "rep" / "mine.html"
    assert main(["report", str(run), "--output", str(out), "--device", "cpu"]) == 0
    assert (tmp_path / "rep" / "mine_files" / "tsne_tokens.png").is_file()
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["report", str(run), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    stale = tmp_path / "rep" / "mine_files" / "fp_stale_0_x.png"
    stale.write_bytes(b"old")
    assert main(["report", str(run), "--output", str(out), "--overwrite"]) == 0
    assert not stale.exists() and len(_images(out.read_text(encoding="utf-8"))) == EXPECTED_IMAGES
    # `dpdiff test` refuses to replace an existing report too (even without results next to it), before scoring
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "report.html").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate_and_report(run, output_dir=tmp_path / "x")
    assert (tmp_path / "x" / "report.html").read_text() == "mine" and not (tmp_path / "x" / "results.json").exists()


@pytest.mark.integration
def test_no_report_keeps_its_data_for_dpdiff_report(evaluated, tmp_path):
    run, _ = evaluated
    out = tmp_path / "e"
    result = evaluate_and_report(run, output_dir=out, overlays_per_category=0, report=False)
    assert "report" not in result and not (out / "report.html").exists() and (out / REPORT_DATA_FILE).is_file()
    assert ReportData.load(out / REPORT_DATA_FILE).probe_outputs is None  # the probes did not run
    assert main(["report", str(run), "--eval", str(out)]) == 0  # runs them, then draws
    assert len(_images((out / "report.html").read_text(encoding="utf-8"))) == EXPECTED_IMAGES
    # the same settings, so the same probe outputs as an evaluation that ran them at once
    assert (out / "report_files" / "tsne_tokens.csv").read_text() == (
        run / "eval" / "report_files" / "tsne_tokens.csv"
    ).read_text()


@pytest.mark.integration
def test_report_follows_moved_data(evaluated, tmp_path):
    run, _ = evaluated
    data = ReportData.load(run / "eval" / REPORT_DATA_FILE)
    moved = tmp_path / "moved"
    shutil.copytree(data.data_root, moved)
    gone = tmp_path / "gone"  # as if the test images had been under a root that no longer exists
    for item in data.examples + data.probes:
        item["image"] = str(gone / Path(item["image"]).relative_to(data.data_root))
    data.data_root = str(gone)
    with pytest.raises(FileNotFoundError, match="--data"):
        build_report(run, run / "eval", tmp_path / "a.html", data=data)
    summary = build_report(
        run, run / "eval", tmp_path / "b.html", data=data, data_root=str(moved), history=load_history(run)
    )
    assert len(summary["figures"]) == EXPECTED_IMAGES


@pytest.mark.integration
def test_report_without_saved_data_recomputes_the_shown_maps(evaluated, tmp_path):
    run, _ = evaluated
    old = tmp_path / "old_eval"  # an evaluation made before report_data.npz existed
    old.mkdir()
    for name in ("results.json", "image_scores.csv"):
        shutil.copy(run / "eval" / name, old / name)
    summary = rebuild_report(run, old)
    text = (old / "report.html").read_text(encoding="utf-8")
    assert len(_images(text)) == EXPECTED_IMAGES and "recomputed" in text
    assert "prepare_s" in summary["timings_s"] and "recomputed" in summary["notes"]["data"]
    chosen = [r["image"] for r in _csv_rows(old / "report_files" / "examples.csv")]
    assert chosen == [r["image"] for r in _csv_rows(run / "eval" / "report_files" / "examples.csv")]


@pytest.mark.integration
def test_report_is_drawn_without_the_model(evaluated, tmp_path):
    """viz only draws: a report is built from the saved arrays with no run folder (no checkpoint) at all."""
    run, _ = evaluated
    eval_copy = tmp_path / "eval"
    shutil.copytree(run / "eval", eval_copy)
    summary = build_report(tmp_path / "no_run_here", eval_copy, tmp_path / "r.html", history=load_history(run))
    assert len(summary["figures"]) == EXPECTED_IMAGES
    again = build_report(tmp_path / "no_run_here", eval_copy, tmp_path / "s.html")
    assert len(again["figures"]) == EXPECTED_IMAGES - 1 and "loss" in again["notes"]  # no history given
    for f in again["figures"]:  # the same arrays, the same pictures
        assert (tmp_path / f).read_bytes() == (tmp_path / f.replace("s_files", "r_files")).read_bytes(), f


@pytest.mark.integration
def test_a_failing_report_is_an_error(evaluated, tmp_path, monkeypatch):
    run, _ = evaluated

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(evaluation, "build_report", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        evaluate_and_report(run, output_dir=tmp_path / "e", overlays_per_category=0)
    assert (tmp_path / "e" / "results.json").is_file()  # the metrics written before the report are kept


def test_token_labels():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, :4, :4] = True  # token (0,0): fully covered -> anomalous
    masks[0, 0, 4:6] = True  # token (0,1): 2/16 covered -> boundary
    masks[0, 4:6, 4:6] = True  # token (1,1): 4/16 = 25 % -> anomalous
    assert token_labels(masks, (2, 2)).tolist() == [[1, -1, 0, 1]]


# ------------------------------------------------------------------------------------------- browser

CHECK_JS = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var t = document.getElementById('metrics');
  function col(i) {
    return Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[i].getAttribute('data-v'); });
  }
  var heads = t.tHead.rows[0].cells, iauroc = -1;
  for (var i = 0; i < heads.length; i++) { if (heads[i].textContent === 'I-AUROC') iauroc = i; }
  heads[iauroc].click();
  var asc = col(iauroc);
  heads[iauroc].click();
  var desc = col(iauroc);
  var res = {images: imgs.length,
             broken: imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); })
                         .map(function (im) { return im.alt; }),
             widths: imgs.map(function (im) { return im.naturalWidth; }),
             rows: t.tBodies[0].rows.length, foot: t.tFoot ? t.tFoot.rows.length : 0,
             asc: asc, desc: desc};
  var pre = document.createElement('pre');
  pre.id = 'dpdiff-check';
  pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
});
</script>
"""


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.mark.integration
def test_report_renders_in_headless_chromium(evaluated, tmp_path, headless_chromium):
    run, _ = evaluated
    report = run / "eval" / "report.html"
    # the same page plus a script that checks the rendered DOM and writes the result into it
    probe = report.with_name("report_check.html")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", CHECK_JS + "</body>"), encoding="utf-8")
    try:
        proc = _run(
            headless_chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
        )
    finally:
        probe.unlink()
    found = re.search(r'<pre id="dpdiff-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no check output from chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    res = json.loads(html.unescape(found.group(1)))
    assert res["images"] == EXPECTED_IMAGES and res["broken"] == [], res
    assert min(res["widths"]) > 0
    assert res["rows"] == CATEGORIES and res["foot"] == 1
    asc, desc = [float(v) for v in res["asc"]], [float(v) for v in res["desc"]]
    assert asc == sorted(asc) and desc == sorted(desc, reverse=True)  # the table sorts on a header click

    shot = tmp_path / "report_screenshot.png"
    proc = _run(
        headless_chromium(
            tmp_path / "profile2",
            "--hide-scrollbars",
            "--window-size=1280,1800",
            f"--screenshot={shot}",
            report.as_uri(),
        )
    )
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    arr = np.asarray(Image.open(shot).convert("RGB"))
    assert arr.shape[:2] == (1800, 1280) and arr.std() > 10  # drawn, not a blank page
    if os.environ.get("DPDIFF_TEST_ARTIFACTS"):
        dest = Path(os.environ["DPDIFF_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)
