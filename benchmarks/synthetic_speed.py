"""Generation speed of the synthetic many-category data (dpdiff.data.synthetic), issue #4.

Prints images per second, rendering alone and rendering + PNG writing in MVTec layout, at each size,
over the first N categories (normal and defective images in the dataset's proportions), and writes
benchmarks/results/synthetic_speed.json. ``--distinct N`` also checks that the first N categories are
visually distinct: nearest-centroid classification of held-out normal images on pooled
EfficientNet-Lite0 features at 64 px (3 images per category to fit the centroid, 2 held out).

    python benchmarks/synthetic_speed.py [--sizes 128 256] [--categories 40] [--distinct 200] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS

from dpdiff.data.synthetic import DEFECT_TYPES, category_specs, generate_synthetic_dataset, render_sample
from dpdiff.utils.io import atomic_write_json


def nearest_centroid_accuracy(n: int, size: int = 64, fit: int = 3, held_out: int = 2) -> dict:
    import torch

    from dpdiff.backbones import build_backbone

    specs = category_specs(n)
    backbone = build_backbone("tf_efficientnet_lite0", image_size=size).eval()
    imgs = np.stack(
        [
            render_sample(s, size, np.random.default_rng([99, s.index, k]))[0]
            for s in specs
            for k in range(fit + held_out)
        ]
    )
    labels = torch.arange(n).repeat_interleave(fit + held_out)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(backbone.mean).view(1, 3, 1, 1)) / torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        maps = torch.cat([backbone(x[i : i + 64]) for i in range(0, len(x), 64)])
    feats = torch.cat([maps.mean((2, 3)), maps.std((2, 3))], 1)
    feats = torch.nn.functional.normalize(feats - feats.mean(0), dim=1)
    is_fit = (torch.arange(len(labels)) % (fit + held_out)) < fit
    centroids = torch.stack([feats[is_fit & (labels == c)].mean(0) for c in range(n)])
    centroids = torch.nn.functional.normalize(centroids, dim=1)
    pred = (feats[~is_fit] @ centroids.T).argmax(1)
    acc = float((pred == labels[~is_fit]).float().mean())
    confused = sorted(
        {(specs[int(a)].name, specs[int(p)].name) for a, p in zip(labels[~is_fit], pred, strict=True) if a != p}
    )
    print(
        f"[synthetic] distinctness, {n} categories: nearest-centroid accuracy {acc:.3f} on {int((~is_fit).sum())} "
        f"held-out images (Lite0 pooled features, {size} px)" + (f"; confused: {confused[:10]}" if confused else "")
    )
    return {
        "categories": n,
        "accuracy": acc,
        "image_size": size,
        "fit_per_category": fit,
        "held_out_per_category": held_out,
        "confused": confused,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--categories", type=int, default=40, help="first N categories (default 40)")
    ap.add_argument("--train", type=int, default=6, help="normal images per category (default 6)")
    ap.add_argument("--defects", type=int, default=len(DEFECT_TYPES), help="defective images per category")
    ap.add_argument("--distinct", type=int, default=0, help="also run the distinctness check on this many categories")
    ap.add_argument("--out", default=str(RESULTS / "synthetic_speed.json"))
    args = ap.parse_args()

    specs = category_specs(args.categories)
    rows = {}
    for size in args.sizes:
        for s in specs[:3]:  # warm the noise banks and caches
            render_sample(s, size, 0, "scratch")
        t0 = time.perf_counter()
        n = 0
        for s in specs:
            for k in range(args.train):
                render_sample(s, size, np.random.default_rng([s.index, k]))
                n += 1
            for k in range(args.defects):
                render_sample(s, size, np.random.default_rng([s.index, 100 + k]), DEFECT_TYPES[k % len(DEFECT_TYPES)])
                n += 1
        render_rate = n / (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            generate_synthetic_dataset(
                Path(tmp) / "d",
                num_categories=args.categories,
                train_per_category=args.train,
                test_good_per_category=0,
                test_defect_per_category=args.defects,
                image_size=size,
            )
            m = args.categories * (args.train + args.defects)
            write_rate = m / (time.perf_counter() - t0)
        rows[size] = {
            "render_images_per_s": round(render_rate, 1),
            "render_and_write_images_per_s": round(write_rate, 1),
            "images": n,
        }
        print(
            f"[synthetic] {size} px, {args.categories} categories: rendering {render_rate:.0f} images/s, "
            f"rendering + PNG writing (MVTec layout, masks too) {write_rate:.0f} images/s"
        )
    distinct = nearest_centroid_accuracy(args.distinct) if args.distinct else None
    doc = {
        "sizes": rows,
        "distinct": distinct,
        "categories": args.categories,
        "train_per_category": args.train,
        "defects_per_category": args.defects,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    atomic_write_json(args.out, doc)
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
