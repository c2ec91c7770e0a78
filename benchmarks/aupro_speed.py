"""AUPRO speed and accuracy (issue #3): dpdiff's exact one-sort AUPRO against the plain reference.

    python benchmarks/aupro_speed.py                 # 100 maps of 256x256 (about 2 minutes on 2 cores)
    python benchmarks/aupro_speed.py --images 40 --size 128   # quicker

The reference is the classic implementation found in most anomaly-detection repositories: 200
evenly spaced thresholds between the smallest and largest score; at every threshold each image
is binarised and the connected components (8-connectivity) of its ground-truth mask are labelled
again (``scipy.ndimage.label``), the overlap of each region with the prediction and the FPR over
all normal pixels are recorded; the curve is integrated up to FPR 0.3 and divided by 0.3 (the same
normalisation as dpdiff: area / 0.3, NOT a rescaling of the FPR axis to [0, 1]). dpdiff's
:func:`dpdiff.metrics.aupro` evaluates the curve at every distinct score from one global sort and
cumulative sums over labelled regions (exact, no threshold loop).

Maps are synthetic but realistic: smoothed noise plus smoothed bumps over the defect regions of
random blob masks (several regions per defective image, some images without defects), so the
score distribution has ties-free float32 values as real maps do. Both methods see the same arrays.
Prints the speed ratio (reference seconds / dpdiff seconds, goal >= 20) and |difference| (goal
<= 1e-3), and writes benchmarks/results/aupro_speed.{json,csv} atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from pathlib import Path

import numpy as np
from _common import RESULTS
from scipy import ndimage

from dpdiff.metrics import aupro, integrate_pro  # the same integration rule for both
from dpdiff.utils.io import atomic_write_json, atomic_write_text

GOAL_RATIO = 20.0
GOAL_DIFF = 1e-3
FPR_LIMIT = 0.3


def synthetic_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (n,size,size), masks bool): 2/3 of the images carry 1-3 random blob defects."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 64)
        bump = np.zeros((size, size))
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, size, 2)
                ry, rx = rng.uniform(size / 40, size / 10, 2)
                blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
                masks[i] |= blob
                bump += blob * rng.uniform(0.5, 2.0)
        maps[i] = (noise + ndimage.gaussian_filter(bump, sigma=size / 64) * 0.3).astype(np.float32)
    return maps, masks


def aupro_threshold_loop(
    maps: np.ndarray, masks: np.ndarray, num_thresholds: int = 200, fpr_limit: float = FPR_LIMIT
) -> float:
    """The plain reference: a Python loop over thresholds, components labelled per threshold and image."""
    normal = ~masks
    n_neg = int(normal.sum())
    fprs, pros = [0.0], [0.0]
    for t in np.linspace(float(maps.min()), float(maps.max()), num_thresholds).astype(np.float32):
        overlaps, false_pos = [], 0
        for m, gt, nrm in zip(maps, masks, normal, strict=True):
            pred = m >= t
            false_pos += int(np.count_nonzero(pred & nrm))
            labels, num = ndimage.label(gt, structure=np.ones((3, 3), bool))
            if num:
                hits = np.bincount(labels[pred], minlength=num + 1)[1:]
                sizes = np.bincount(labels.ravel(), minlength=num + 1)[1:]
                overlaps.extend((hits / sizes).tolist())
        pros.append(float(np.mean(overlaps)))
        fprs.append(false_pos / n_neg)
    fprs.append(1.0)
    pros.append(1.0)
    fpr, pro = np.asarray(fprs), np.asarray(pros)
    order = np.lexsort((pro, fpr))
    return integrate_pro(fpr[order], pro[order], fpr_limit)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--thresholds", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of dpdiff's aupro (median)")
    p.add_argument(
        "--output",
        default=str(RESULTS / "aupro_speed"),
        help="output stem (.json and .csv are added)",
    )
    return p.parse_args(argv)


def time_both(maps: np.ndarray, masks: np.ndarray, rounds: int, thresholds: int) -> list[dict]:
    """Rows (method, seconds, aupro) of dpdiff's :func:`aupro` (median of ``rounds``) and of the reference."""
    aupro(maps[:4], masks[:4])  # warm-up (imports, allocator)
    fast_times, fast_value = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        fast_value = aupro(maps, masks, FPR_LIMIT)
        fast_times.append(time.perf_counter() - t0)
    fast_s = statistics.median(fast_times)
    t0 = time.perf_counter()
    ref_value = aupro_threshold_loop(maps, masks, thresholds)
    ref_s = time.perf_counter() - t0
    return [
        {"method": "dpdiff aupro (exact, one sort)", "seconds": fast_s, "aupro": fast_value},
        {
            "method": f"reference ({thresholds} thresholds, components per threshold)",
            "seconds": ref_s,
            "aupro": ref_value,
        },
    ]


def write_outputs(stem: Path, result: dict, rows: list[dict]) -> None:
    """``stem``.json (``result``) and ``stem``.csv (``rows``), atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stem.with_suffix(".json"), result)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "seconds", "aupro"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    maps, masks = synthetic_maps(args.images, args.size)
    print(
        f"{args.images} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f} M pixels), "
        f"{int(masks.sum())} defect pixels"
    )
    rows = time_both(maps, masks, args.rounds, args.thresholds)
    (fast_s, fast_value), (ref_s, ref_value) = ((r["seconds"], r["aupro"]) for r in rows)
    ratio = ref_s / fast_s
    diff = abs(fast_value - ref_value)
    print("| method | seconds | AUPRO@0.3 |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']:.3f} | {r['aupro']:.6f} |")
    print(
        f"speed ratio (reference / dpdiff): {ratio:.1f}x (goal >= {GOAL_RATIO:.0f}x) "
        f"{'OK' if ratio >= GOAL_RATIO else 'BELOW GOAL'}"
    )
    print(f"|difference|: {diff:.2e} (goal <= {GOAL_DIFF:.0e}) {'OK' if diff <= GOAL_DIFF else 'ABOVE GOAL'}")
    stem = Path(args.output)
    result = {
        "images": args.images,
        "size": args.size,
        "thresholds": args.thresholds,
        "rows": rows,
        "ratio": ratio,
        "abs_difference": diff,
        "goal_ratio": GOAL_RATIO,
        "goal_difference": GOAL_DIFF,
    }
    write_outputs(stem, result, rows)
    print(f"written {stem.with_suffix('.json')} and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
