"""Score a folder of images with a trained run: scores CSV + overlay PNGs (no labels needed)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.dataset import ImageDataset, load_image_array
from ..data.mvtec import IMAGE_EXTENSIONS, Sample
from ..io import atomic_write_text
from .inference import load_detector, score_dataset


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"{folder}: no images found (extensions {sorted(IMAGE_EXTENSIONS)})")
    return paths


def predict(run_dir: Path, images: Path, output_dir: Path, device: str = "auto", overlays: bool = True,
            overwrite: bool = False) -> Path:
    detector = load_detector(Path(run_dir), device)
    cfg = detector.cfg
    paths = list_images(images)
    out = Path(output_dir)
    csv_path = out / "scores.csv"
    if csv_path.exists() and not overwrite:
        raise FileExistsError(f"{csv_path} exists; pass --overwrite or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    samples = [Sample(p, None, 0, "unknown", "unknown") for p in paths]
    ds = ImageDataset(samples, cfg.backbone.image_size, detector.backbone.mean, detector.backbone.std, load_masks=False)
    maps, scores, _, _, _ = score_dataset(detector, ds, cfg.inference.batch_size, "predict", seed=cfg.inference.seed)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "score", "max_pixel_score"])
    for p, s, m in zip(paths, scores, maps):
        w.writerow([str(p), f"{float(s):.6g}", f"{float(m.max()):.6g}"])
    atomic_write_text(csv_path, buf.getvalue())
    if overlays:
        from ..viz import save_overlay
        vmin, vmax = float(np.min(maps)), float(np.percentile(maps, 99.9))
        for i, p in enumerate(tqdm(paths, desc="overlays", leave=False)):
            rel = Path(p).relative_to(Path(images)).with_suffix(".png")
            save_overlay(load_image_array(p, detector.map_size), maps[i], out / "overlays" / rel,
                         vmin=vmin, vmax=vmax, title=f"score={scores[i]:.3g}")
    return csv_path


__all__ = ["predict", "list_images"]
