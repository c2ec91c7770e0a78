"""Paper Tables 2 (category scale + Delta) and 3 (datasets + Average): dpdiff.metrics.paper_tables, `dpdiff table`."""

import csv
import json
import math
import re

import pytest

from dpdiff.cli import main
from dpdiff.metrics.anomaly import METRIC_NAMES
from dpdiff.metrics.paper_tables import (
    datasets_table,
    load_results,
    mean_row_from_results,
    protocol_mismatch,
    scale_table,
    write_table,
)
from dpdiff.metrics.tables import TABLE_COLUMNS, write_results

COLUMNS = list(METRIC_NAMES) + ["mAD"]


def _row(seed: float) -> dict:
    """Seven metrics, distinct per column, mAD left to be computed."""
    return {k: round(0.3 + seed + 0.05 * i, 6) for i, k in enumerate(METRIC_NAMES)}


def _protocol(**inference) -> dict:
    return {
        "evaluation_resolution": 256,
        "aupro_fpr_limit": 0.3,
        "inference": {"noise_step": 100, "ddim_steps": 3, "batch_size": 16, **inference},
        "fps_end_to_end": 12.3,
        "device": "cpu",
    }


def _results(tmp_path, name: str, per_category: dict, protocol: dict | None = None):
    """A results folder written by the real `write_results` (as `dpdiff test` does)."""
    out = tmp_path / name / "eval"
    paths = write_results(per_category, out, stem="results", protocol=protocol)
    return out, paths["json"]


# ----------------------------------------------------------------------------- Table 2


def test_scale_table_delta_is_max_minus_min_and_order_kept():
    rows = {"S1": _row(0.10), "Full": _row(0.02), "S2": _row(0.31), "S3": _row(0.25)}
    rows["S2"]["I-AP"] = 0.01  # a column whose extremes come from other rows than the rest
    table = scale_table(rows)
    assert list(table) == ["S1", "Full", "S2", "S3", "Delta"]
    for c in METRIC_NAMES:
        values = [rows[n][c] for n in ("S1", "Full", "S2", "S3")]
        assert table["Delta"][c] == pytest.approx(max(values) - min(values), abs=1e-12)
    mads = [sum(rows[n][c] for c in METRIC_NAMES) / 7 for n in ("S1", "Full", "S2", "S3")]
    for n, mad in zip(("S1", "Full", "S2", "S3"), mads, strict=True):
        assert table[n]["mAD"] == pytest.approx(mad)
    assert table["Delta"]["mAD"] == pytest.approx(max(mads) - min(mads))
    assert set(table["Delta"]) == set(COLUMNS)


def test_scale_table_paper_dpdiff_rows():
    # Table 2, DPDiff-AD block (percent): the Delta row of the paper.
    paper = {
        "S1": [93.5, 98.7, 96.5, 93.9, 49.6, 50.5, 77.7],
        "S2": [93.2, 98.7, 96.2, 94.4, 50.1, 51.3, 79.0],
        "S3": [92.4, 98.4, 95.9, 94.6, 50.7, 51.3, 79.8],
        "Full": [92.4, 98.5, 95.8, 94.8, 50.1, 50.7, 80.1],
    }
    rows = {n: {k: v / 100 for k, v in zip(METRIC_NAMES, vals, strict=True)} for n, vals in paper.items()}
    delta = scale_table(rows)["Delta"]
    expected = [1.1, 0.3, 0.7, 0.9, 1.1, 0.8, 2.4]
    assert [round(100 * delta[k], 1) for k in METRIC_NAMES] == expected


def test_scale_table_nan_and_bad_input():
    rows = {"S1": _row(0.1), "S2": _row(0.2)}
    rows["S1"]["P-AP"] = float("nan")
    assert math.isnan(scale_table(rows)["Delta"]["P-AP"])
    rows = {"S2": _row(0.2), "S1": _row(0.1)}
    rows["S1"]["P-AP"] = float("nan")  # NaN last: Python's max/min would silently skip it
    assert math.isnan(scale_table(rows)["Delta"]["P-AP"])
    with pytest.raises(ValueError, match="two subsets"):
        scale_table({"S1": _row(0.1)})
    with pytest.raises(ValueError, match="reserved"):
        scale_table({"S1": _row(0.1), "Delta": _row(0.2)})
    with pytest.raises(KeyError, match="P-AUPRO"):
        scale_table({"S1": _row(0.1), "S2": {k: 0.5 for k in METRIC_NAMES[:-1]}})


# ----------------------------------------------------------------------------- Table 3


def test_datasets_table_average():
    rows = {"MVTec-AD": _row(0.4), "VisA": _row(0.2), "MPDD": _row(0.3)}
    rows["VisA"]["mAD"] = 0.5  # a recorded mAD is kept as is
    table = datasets_table(rows)
    assert list(table) == ["MVTec-AD", "VisA", "MPDD", "Average"]
    for c in COLUMNS:
        assert table["Average"][c] == pytest.approx(sum(table[n][c] for n in ("MVTec-AD", "VisA", "MPDD")) / 3)
    assert table["VisA"]["mAD"] == 0.5
    assert list(datasets_table(rows, average=False)) == ["MVTec-AD", "VisA", "MPDD"]
    with pytest.raises(ValueError, match="reserved"):
        datasets_table({"Average": _row(0.1)})
    with pytest.raises(ValueError):
        datasets_table({})


# ----------------------------------------------------------------------------- loading


def test_load_results_file_eval_folder_and_run_folder(tmp_path):
    per_cat = {"bottle": _row(0.1), "cable": _row(0.3)}
    out, json_path = _results(tmp_path, "run", per_cat, _protocol())
    expected = json.loads(json_path.read_text())["mean"]
    for given in (json_path, out, out.parent):  # results.json, eval folder, run folder
        loaded = load_results(given)
        assert loaded["path"] == str(json_path)
        assert loaded["row"] == pytest.approx(expected)
        assert loaded["categories"] == 2
        assert loaded["protocol"]["inference"]["noise_step"] == 100
    assert mean_row_from_results(out) == pytest.approx(expected)


def test_load_results_without_mean_row_or_protocol(tmp_path):
    per_cat = {"a": _row(0.1), "b": _row(0.3)}
    _, json_path = _results(tmp_path, "m", per_cat)
    data = json.loads(json_path.read_text())
    data["mean"] = None
    json_path.write_text(json.dumps(data))
    loaded = load_results(json_path)
    assert loaded["protocol"] is None
    for c in METRIC_NAMES:
        assert loaded["row"][c] == pytest.approx((per_cat["a"][c] + per_cat["b"][c]) / 2)


def test_load_results_errors_name_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "results.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_results(missing)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty / "results.json"))):
        mean_row_from_results(empty)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_results(bad)
    bad.write_text(json.dumps({"protocol": {}}))
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*neither"):
        load_results(bad)
    bad.write_text(json.dumps({"mean": {k: 0.5 for k in METRIC_NAMES[:-1]}}))
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*P-AUPRO"):
        load_results(bad)
    bad.write_text(json.dumps({"mean": {**_row(0.1), "I-AP": "high"}}))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_results(bad)


# ----------------------------------------------------------------------------- protocols


def test_protocol_mismatch():
    same = {"S1": _protocol(), "S2": _protocol() | {"fps_end_to_end": 99.0, "device": "cuda:0"}}
    same["S2"]["inference"] = dict(same["S2"]["inference"], batch_size=64)  # measurement settings only
    assert protocol_mismatch(same) is None
    assert protocol_mismatch({"S1": None, "S2": None}) is None
    assert protocol_mismatch({"S1": _protocol(smoothing_sigma=4), "S2": _protocol(smoothing_sigma=4.0)}) is None

    diff = {"S1": _protocol(), "S2": _protocol(noise_step=50), "S3": _protocol() | {"evaluation_resolution": 448}}
    w = protocol_mismatch(diff)
    assert w["differing_keys"] == ["evaluation_resolution", "inference.noise_step"]
    assert w["values"]["inference.noise_step"] == {"S1": 100, "S2": 50, "S3": 100}
    assert "inference.noise_step" in w["message"]

    extra = {"S1": _protocol(), "S2": _protocol() | {"mask_threshold": 0.5}}  # key only one source has
    assert protocol_mismatch(extra)["differing_keys"] == ["mask_threshold"]

    partial = protocol_mismatch({"S1": _protocol(), "S2": None})
    assert partial["differing_keys"] == [] and partial["sources_without_protocol"] == ["S2"]


# ----------------------------------------------------------------------------- writing


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_write_table_scale_parses_back(tmp_path):
    runs = {
        name: _results(tmp_path, name, {f"c{i}": _row(seed + 0.01 * i) for i in range(n)}, _protocol())
        for name, seed, n in (("S1", 0.2, 3), ("S2", 0.15, 4), ("Full", 0.1, 5))
    }
    sources = {name: load_results(out) for name, (out, _) in runs.items()}
    rows = {n: s["row"] for n, s in sources.items()}
    paths = write_table(rows, tmp_path / "tables", "table2", "scale", sources)
    assert {k: p.name for k, p in paths.items()} == {"json": "table2.json", "csv": "table2.csv", "md": "table2.md"}
    expected = scale_table(rows)

    doc = json.loads(paths["json"].read_text())
    assert doc["kind"] == "scale" and doc["columns"] == list(TABLE_COLUMNS) and doc["summary_row"] == "Delta"
    assert list(doc["rows"]) == ["S1", "S2", "Full", "Delta"]
    for n in expected:
        assert doc["rows"][n] == pytest.approx(expected[n])
    for name, (_, json_path) in runs.items():
        assert doc["sources"][name]["path"] == str(json_path)
        assert doc["sources"][name]["protocol"]["inference"]["noise_step"] == 100
    assert doc["sources"]["S2"]["categories"] == 4
    assert "warning" not in doc

    table = _read_csv(paths["csv"])
    assert [r["subset"] for r in table] == ["S1", "S2", "Full", "Delta"]
    assert [r["Classes"] for r in table] == ["3", "4", "5", ""]
    for r in table:
        for c in TABLE_COLUMNS:
            assert float(r[c]) == pytest.approx(expected[r["subset"]][c], abs=1e-15)

    md = paths["md"].read_text().splitlines()
    assert md[0] == "| Subset | Classes | " + " | ".join(TABLE_COLUMNS) + " |"
    body = [[c.strip() for c in line.strip("|").split("|")] for line in md[2:]]
    assert [b[0] for b in body] == ["S1", "S2", "Full", "**Delta**"]
    assert body[3][1] == "\u2014"
    for b, name in zip(body, expected, strict=True):
        assert [float(x) for x in b[2:]] == [round(100 * expected[name][c], 1) for c in TABLE_COLUMNS]
    assert not list((tmp_path / "tables").glob(".*tmp"))

    with pytest.raises(FileExistsError, match="table2"):
        write_table(rows, tmp_path / "tables", "table2", "scale", sources)
    write_table(rows, tmp_path / "tables", "table2", "scale", sources, overwrite=True)


def test_write_table_datasets_and_protocol_warning(tmp_path):
    rows = {"MVTec-AD": _row(0.4), "VisA": _row(0.2)}
    sources = {
        "MVTec-AD": {"path": "a/results.json", "protocol": _protocol()},
        "VisA": {"path": "b/results.json", "protocol": _protocol(noise_step=50)},
    }
    paths = write_table(rows, tmp_path, None, "datasets", sources)
    assert paths["md"].name == "datasets_table.md"
    doc = json.loads(paths["json"].read_text())
    assert list(doc["rows"]) == ["MVTec-AD", "VisA", "Average"] and doc["summary_row"] == "Average"
    assert doc["rows"]["Average"]["I-AUROC"] == pytest.approx(
        (rows["MVTec-AD"]["I-AUROC"] + rows["VisA"]["I-AUROC"]) / 2
    )
    assert doc["warning"]["differing_keys"] == ["inference.noise_step"]
    assert doc["sources"]["VisA"] == {"path": "b/results.json", "protocol": _protocol(noise_step=50)}
    md = paths["md"].read_text()
    assert md.splitlines()[0].startswith("| Dataset | I-AUROC |")  # no category counts: no Classes column
    assert "Warning" in md and "inference.noise_step" in md

    noavg = write_table(rows, tmp_path, "t3", "datasets", {"MVTec-AD": "a.json", "VisA": "b.json"}, average=False)
    doc = json.loads(noavg["json"].read_text())
    assert list(doc["rows"]) == ["MVTec-AD", "VisA"] and doc["summary_row"] is None
    assert doc["sources"]["VisA"] == {"path": "b.json"}
    with pytest.raises(ValueError, match="missing"):
        write_table(rows, tmp_path, "t4", "datasets", {"VisA": "b.json"})
    with pytest.raises(ValueError, match="kind"):
        write_table(rows, tmp_path, "t5", "methods")


# ----------------------------------------------------------------------------- CLI


def test_cli_table_end_to_end(tmp_path, capsys):
    a_out, a_json = _results(tmp_path, "s1", {"x": _row(0.2), "y": _row(0.25)}, _protocol())
    b_out, b_json = _results(tmp_path, "full", {"x": _row(0.1), "y": _row(0.12), "z": _row(0.14)}, _protocol())
    out = tmp_path / "tables"
    argv = ["table", "--kind", "scale", "--output", str(out), "--stem", "t2", f"S1={a_json}", f"Full={b_out}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Subset | Classes |" in printed and "**Delta**" in printed
    for ext in ("md", "csv", "json"):
        assert str(out / f"t2.{ext}") in printed
    doc = json.loads((out / "t2.json").read_text())
    rows = {"S1": load_results(a_json)["row"], "Full": load_results(b_json)["row"]}
    for c in TABLE_COLUMNS:
        assert doc["rows"]["Delta"][c] == pytest.approx(abs(rows["S1"][c] - rows["Full"][c]))
    assert [doc["sources"][n]["path"] for n in ("S1", "Full")] == [str(a_json), str(b_json)]

    # existing outputs are refused without --overwrite, replaced with it
    assert main(argv) == 2
    assert "already exist" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()

    # datasets table, differing protocols: warning on stderr and in the JSON
    c_out, _ = _results(tmp_path, "visa", {"x": _row(0.3)}, _protocol(noise_step=50))
    assert main(["table", "--kind", "datasets", "-o", str(out), f"MVTec={a_out}", f"VisA={c_out}"]) == 0
    captured = capsys.readouterr()
    assert "**Average**" in captured.out and "inference.noise_step" in captured.err
    assert json.loads((out / "datasets_table.json").read_text())["warning"]["differing_keys"] == [
        "inference.noise_step"
    ]

    # a missing results file: error naming it
    gone = tmp_path / "gone" / "results.json"
    assert main(["table", "--kind", "datasets", "-o", str(out), "--stem", "x", f"A={a_json}", f"B={gone}"]) == 2
    assert str(gone) in capsys.readouterr().err
    assert not (out / "x.md").exists()
    assert main(["table", "--kind", "scale", "-o", str(out), "--stem", "y", str(a_json), f"B={b_json}"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_table1_formatting_unchanged_by_refactor(tmp_path):
    # the Table 1 writer shares the formatters: its default layout must stay as before
    paths = write_results({"bottle": _row(0.1)}, tmp_path)
    md = paths["md"].read_text().splitlines()
    assert md[0] == "| Category | " + " | ".join(TABLE_COLUMNS) + " |"
    assert md[1] == "|---|" + "---:|" * len(TABLE_COLUMNS)
    assert md[-1].startswith("| **mean** | 40.0 | 45.0 |")
    assert paths["csv"].read_text().splitlines()[0] == "category," + ",".join(TABLE_COLUMNS)
