"""Reader equivalence on real data (issue #3): the shared Magnetic Tile data evaluated through the
MVTec-layout reader and through the generic folder reader must give the same metrics.

    python benchmarks/mtd_generic_vs_mvtec.py --run runs/bench_mtd     # a run trained on MTD

(``runs/bench_mtd`` is written by ``benchmarks/mtd_knn_vs_dpdiff.py``; any run trained on
``magnetic_tile`` works.) The generic reader is pointed at the same folders explicitly:
``normal_dir=magnetic_tile/test/good``, one ``abnormal_dir`` per defect folder and the matching
``ground_truth/<defect>`` mask folders. Writes ``benchmarks/results/mtd_generic_vs_mvtec.{json,md}``
with both rows and the largest absolute difference; exits 1 when they differ by more than 1e-9.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import RESULTS

from dpdiff.data import shared_data_dir
from dpdiff.metrics import METRIC_NAMES
from dpdiff.metrics.tables import format_table_markdown
from dpdiff.utils.io import atomic_write_json, atomic_write_text
from dpdiff.workflows.evaluate import evaluate

CATEGORY = "magnetic_tile"


def generic_options(root: Path) -> dict:
    defects = sorted(p.name for p in (root / CATEGORY / "test").iterdir() if p.is_dir() and p.name != "good")
    return {
        "normal_dir": f"{CATEGORY}/test/good",
        "abnormal_dir": [f"{CATEGORY}/test/{d}" for d in defects],
        "mask_dir": [f"{CATEGORY}/ground_truth/{d}" for d in defects],
        "train_normal_dir": f"{CATEGORY}/train/good",
        "category": CATEGORY,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder trained on magnetic_tile")
    p.add_argument("--data", default=None, help="MTD root (default: ../shared/data/mtd)")
    p.add_argument("--output", default=str(RESULTS / "mtd_generic_vs_mvtec"))
    args = p.parse_args(argv)
    root = Path(args.data) if args.data else shared_data_dir() / "mtd"
    if not (root / CATEGORY).is_dir():
        print(f"MTD data not found at {root}; pass --data", file=sys.stderr)
        return 2
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["MVTec reader"] = evaluate(
            Path(args.run), str(root), [CATEGORY], Path(tmp) / "mvtec", overlays_per_category=0, data_format="mvtec"
        )["mean"]
        rows["generic reader"] = evaluate(
            Path(args.run),
            str(root),
            [CATEGORY],
            Path(tmp) / "generic",
            overlays_per_category=0,
            data_format="generic",
            inference_overrides={"data.options": generic_options(root)},
        )["mean"]
    diff = max(abs(rows["MVTec reader"][k] - rows["generic reader"][k]) for k in list(METRIC_NAMES) + ["mAD"])
    table = format_table_markdown(rows)
    print(table)
    print(f"largest absolute difference over the seven metrics and mAD: {diff:.3g}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out.with_suffix(".json"),
        {
            "run": str(args.run),
            "data": str(root),
            "rows": rows,
            "max_abs_difference": diff,
            "generic_options": generic_options(root),
        },
    )
    atomic_write_text(out.with_suffix(".md"), table + f"\nlargest absolute difference: {diff:.3g}\n")
    return 0 if diff <= 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
