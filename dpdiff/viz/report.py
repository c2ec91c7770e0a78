"""One self-contained HTML report per evaluation (``dpdiff report``; also written by ``evaluate``).

The report (``EVAL/report.html``; every figure also as a PNG in ``EVAL/report_files/``) holds

* the per-category metrics table from ``results.json`` (sortable: click a column header),
* the worst false positives (highest-scoring normal test images) and false negatives (lowest-scoring
  defective images) of every category: image, ground-truth contour, anomaly-map overlay,
* prototype similarity maps of the local and global prototypes on a few test images (paper Fig. 8),
* a t-SNE of backbone tokens before and after the diffusion reconstruction, normal vs anomalous
  tokens (paper Fig. 7),
* the training loss curves (the run's ``loss_history.csv``).

Rebuilding needs no second pass over the test set: ``evaluate`` keeps, per category, only the maps of
the few images the report shows and saves them to ``EVAL/report_data.npz`` (:class:`ReportCollector`;
memory stays bounded by ``examples_per_category`` maps per category). The prototype maps and the
t-SNE run the backbone and the model on a handful of "probe" test images (two defective, one normal
per category, chosen by score), which takes seconds.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from dpdiff.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["REPORT_FILE", "REPORT_DATA_FILE", "ReportCollector", "build_report", "collect_from_scores",
           "report_files_dir", "token_labels"]

REPORT_FILE = "report.html"
REPORT_DATA_FILE = "report_data.npz"
DATA_FORMAT_VERSION = 1
#: Largest side (px) of the images shown in the report (larger evaluation maps are downscaled for display).
DISPLAY_MAX = 256
#: A token is "anomalous" when the ground truth covers at least this fraction of its patch and "normal"
#: when it covers none of it; tokens in between (defect boundaries) are left out of the t-SNE.
ANOMALOUS_TOKEN_FRACTION = 0.25
#: Tokens in the t-SNE sample (anomalous tokens first, up to half of it); two t-SNE runs of 1000 tokens take
#: ~5-8 s on 2 CPU cores.
TSNE_MAX_TOKENS = 1000
#: Categories shown in the prototype-similarity section (one defective and one normal image each).
PROTO_CATEGORIES = 4
#: Probe images fed to the t-SNE at most (spread over the categories).
TSNE_MAX_IMAGES = 48


def report_files_dir(html_path: Path) -> Path:
    """``report.html`` -> ``report_files/`` next to it."""
    html_path = Path(html_path)
    return html_path.with_name(f"{html_path.stem}_files")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "x"


# ----------------------------------------------------------------------------------------------------
# what evaluate keeps: a few maps per category


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool).reshape(-1))


def _unpack(packed: np.ndarray, size: int) -> np.ndarray:
    return np.unpackbits(packed, count=size * size).astype(bool).reshape(size, size)


@dataclass
class ReportCollector:
    """Keeps, per category, what the report shows: the maps of the ``examples_per_category`` worst false
    positives and false negatives, the category's colour scale, and the probe images (paths, labels,
    masks) for the prototype maps and the t-SNE. Feed it each category's arrays as evaluate scores them."""

    map_size: int
    data_root: str = ""
    examples_per_category: int = 2
    probes_defective: int = 2
    probes_normal: int = 1
    examples: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    scales: dict = field(default_factory=dict)

    def select(self, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Indices of (the worst false positives, the worst false negatives, the probe images)."""
        good, bad = np.where(labels == 0)[0], np.where(labels == 1)[0]
        k = int(self.examples_per_category)
        fp = good[np.argsort(-scores[good], kind="stable")][:k]  # highest-scoring normal images
        fn = bad[np.argsort(scores[bad], kind="stable")][:k]     # lowest-scoring defective images
        # probes: the clearest defects (highest scores) and a typical normal image (median score)
        probe_idx = [int(i) for i in bad[np.argsort(-scores[bad], kind="stable")][:self.probes_defective]]
        if good.size and self.probes_normal > 0:
            order = good[np.argsort(scores[good], kind="stable")]
            mid = len(order) // 2
            probe_idx += [int(i) for i in order[max(0, mid - self.probes_normal // 2):][:self.probes_normal]]
        return fp, fn, probe_idx

    def add_category(self, category: str, samples, maps, scores: np.ndarray, masks,
                     scale: tuple[float, float] | None = None) -> None:
        """``maps`` (N, S, S) and ``masks`` (N, S, S) bool: the category's arrays (or anything indexable by
        the selected positions, with ``scale`` = (vmin, vmax) then given)."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.array([int(s.label) for s in samples])
        good, bad = np.where(labels == 0)[0], np.where(labels == 1)[0]
        if scale is None:  # the colour scale of eval/overlays: min .. 99.9th percentile of the category's maps
            finite = maps if np.isfinite(maps).all() else maps[np.isfinite(maps)]
            scale = ((float(np.min(finite)), float(np.percentile(finite, 99.9))) if finite.size else (0.0, 1.0))
        self.scales[category] = (float(scale[0]), float(scale[1]))
        fp, fn, probe_idx = self.select(labels, scores)
        for kind, picks in (("fp", fp), ("fn", fn)):
            for rank, i in enumerate(picks):
                other = scores[bad] if kind == "fp" else scores[good]
                # fp: share of defective images scoring below it; fn: share of normal images scoring above it
                frac = float(np.mean(other < scores[i]) if kind == "fp" else np.mean(other > scores[i])) \
                    if other.size else float("nan")
                self.examples.append({"category": category, "kind": kind, "rank": rank,
                                      "image": str(Path(samples[i].image_path).absolute()), "defect": samples[i].defect,
                                      "label": int(labels[i]), "score": float(scores[i]), "beyond": frac,
                                      "map": np.array(maps[i], dtype=np.float32), "mask": _pack(masks[i])})
        for i in probe_idx:
            self.probes.append({"category": category, "image": str(Path(samples[i].image_path).absolute()),
                                "defect": samples[i].defect, "label": int(labels[i]), "score": float(scores[i]),
                                "mask": _pack(masks[i])})

    # -------------------------------------------------------------------------------------------- npz
    def to_npz_bytes(self) -> bytes:
        s = self.map_size
        maps = np.stack([e["map"] for e in self.examples]) if self.examples else np.zeros((0, s, s), np.float32)
        finite = maps[np.isfinite(maps)]
        if not finite.size or float(np.abs(finite).max()) < 6e4:
            maps = maps.astype(np.float16)  # half the size; float32 kept for maps beyond float16's range
        nbytes = (s * s + 7) // 8

        def col(rows, key, dtype=None):
            a = np.array([r[key] for r in rows])
            return a.astype(dtype) if dtype is not None else (a if len(rows) else np.array([], dtype=str))

        def packed(rows):
            return np.stack([r["mask"] for r in rows]) if rows else np.zeros((0, nbytes), np.uint8)

        cats = sorted(self.scales)
        meta = {"format_version": DATA_FORMAT_VERSION, "map_size": s, "data_root": self.data_root,
                "examples_per_category": self.examples_per_category, "categories": cats}
        arrays = {
            "meta_json": np.array(json.dumps(meta)),
            "ex_category": col(self.examples, "category"), "ex_kind": col(self.examples, "kind"),
            "ex_image": col(self.examples, "image"), "ex_defect": col(self.examples, "defect"),
            "ex_rank": col(self.examples, "rank", np.int64), "ex_label": col(self.examples, "label", np.int64),
            "ex_score": col(self.examples, "score", np.float64), "ex_beyond": col(self.examples, "beyond", np.float64),
            "ex_map": maps, "ex_mask": packed(self.examples),
            "cat_name": np.array(cats) if cats else np.array([], dtype=str),
            "cat_vmin": np.array([self.scales[c][0] for c in cats], np.float64),
            "cat_vmax": np.array([self.scales[c][1] for c in cats], np.float64),
            "probe_category": col(self.probes, "category"), "probe_image": col(self.probes, "image"),
            "probe_defect": col(self.probes, "defect"), "probe_label": col(self.probes, "label", np.int64),
            "probe_score": col(self.probes, "score", np.float64), "probe_mask": packed(self.probes),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def save(self, path: Path) -> Path:
        """Write ``report_data.npz`` atomically."""
        return atomic_write_bytes(path, self.to_npz_bytes())

    @classmethod
    def load(cls, path: Path) -> "ReportCollector":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: it is written by `dpdiff test`; evaluate the run again "
                                    f"(dpdiff test RUN --overwrite) to rebuild the report")
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            meta = json.loads(str(d["meta_json"]))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: unreadable report data ({e}); evaluate the run again") from e
        if meta.get("format_version") != DATA_FORMAT_VERSION:
            raise ValueError(f"{path}: report data format {meta.get('format_version')}, this version reads "
                             f"{DATA_FORMAT_VERSION}; evaluate the run again")
        s = int(meta["map_size"])
        c = cls(map_size=s, data_root=meta.get("data_root", ""),
                examples_per_category=int(meta.get("examples_per_category", 2)))
        for i in range(len(d["ex_image"])):
            c.examples.append({"category": str(d["ex_category"][i]), "kind": str(d["ex_kind"][i]),
                               "rank": int(d["ex_rank"][i]), "image": str(d["ex_image"][i]),
                               "defect": str(d["ex_defect"][i]), "label": int(d["ex_label"][i]),
                               "score": float(d["ex_score"][i]), "beyond": float(d["ex_beyond"][i]),
                               "map": d["ex_map"][i].astype(np.float32), "mask": d["ex_mask"][i]})
        for i in range(len(d["probe_image"])):
            c.probes.append({"category": str(d["probe_category"][i]), "image": str(d["probe_image"][i]),
                             "defect": str(d["probe_defect"][i]), "label": int(d["probe_label"][i]),
                             "score": float(d["probe_score"][i]), "mask": d["probe_mask"][i]})
        c.scales = {str(n): (float(a), float(b)) for n, a, b in zip(d["cat_name"], d["cat_vmin"], d["cat_vmax"])}
        return c


def collect_from_scores(run_dir: Path, eval_dir: Path, detector, data_root: str | None = None,
                        examples_per_category: int = 2) -> ReportCollector:
    """Report data for an evaluation without ``report_data.npz`` (made before it existed, or deleted): the
    images are chosen from ``image_scores.csv`` as evaluate chooses them and only their maps are
    recomputed (other noise draws than in the evaluation, so a map can differ slightly from the one
    behind the recorded score; the colour scale comes from the recomputed maps)."""
    import torch
    from torch.utils.data import Subset

    from ..data.dataset import ImageDataset
    from ..data.formats import detect_format, load_samples
    from ..engine.inference import score_dataset
    path = Path(eval_dir) / "image_scores.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate the run first (dpdiff test {run_dir})")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    results_path = Path(eval_dir) / "results.json"
    protocol = json.loads(results_path.read_text(encoding="utf-8")).get("protocol") or {} \
        if results_path.is_file() else {}
    known = detector.cfg.to_dict()
    overrides = {f"{sec}.{k}": v for sec in ("inference", "evaluation") for k, v in (protocol.get(sec) or {}).items()
                 if k in known.get(sec, {})}
    if overrides:  # the settings the evaluation ran with (test-time --set included)
        from ..engine.evaluate import apply_test_overrides
        detector.cfg = apply_test_overrides(detector.cfg, overrides)
    cfg = detector.cfg
    root = Path(data_root or cfg.data.root or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError(f"test data root {root!s} not found; pass --data PATH")
    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(root)
    old_root = Path(cfg.data.root) if cfg.data.root else None
    col = ReportCollector(detector.map_size, str(root.absolute()), examples_per_category=examples_per_category)
    cats = list(dict.fromkeys(r["category"] for r in rows))

    def key(p) -> str:
        p = Path(p)
        for base in (root, old_root):
            if base is not None:
                try:
                    return p.relative_to(base).as_posix()
                except ValueError:
                    pass
        return p.as_posix()

    for cat in tqdm(cats, desc="report: recompute shown maps", leave=False):
        scores_by = {key(r["image"]): float(r["score"]) for r in rows if r["category"] == cat}
        samples = [s for s in sorted(load_samples(fmt, root, [cat], "test", **cfg.data.options),
                                     key=lambda s: str(s.image_path)) if key(s.image_path) in scores_by]
        if not samples:
            raise FileNotFoundError(f"{path}: no test image of category {cat!r} found under {root}; pass --data PATH")
        scores = np.array([scores_by[key(s.image_path)] for s in samples])
        labels = np.array([int(s.label) for s in samples])
        fp, fn, probes = col.select(labels, scores)
        picked = sorted({int(i) for i in (*fp, *fn, *probes)})
        ds = ImageDataset(samples, cfg.backbone.image_size, detector.backbone.mean, detector.backbone.std,
                          mask_size=detector.map_size, mask_threshold=cfg.evaluation.mask_threshold,
                          mask_resize=cfg.evaluation.mask_resize)
        with torch.inference_mode():
            maps, _, _, masks, _ = score_dataset(detector, Subset(ds, picked), cfg.inference.batch_size,
                                                 f"report {cat}", seed=cfg.inference.seed)
        shown = maps[np.isfinite(maps)]
        scale = (float(shown.min()), float(np.percentile(shown, 99.9))) if shown.size else (0.0, 1.0)
        col.add_category(cat, samples, dict(zip(picked, maps)), scores, dict(zip(picked, masks)), scale=scale)
    return col


# ----------------------------------------------------------------------------------------------------
# image helpers


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _resize_map(m: np.ndarray, size: int) -> np.ndarray:
    if m.shape == (size, size):
        return m
    return np.asarray(Image.fromarray(np.asarray(m, np.float32), mode="F").resize((size, size),
                                                                                   Image.Resampling.BILINEAR))


def _resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    if m.shape == (size, size):
        return m
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def _labelled_panels(panels: list[np.ndarray], labels: list[str], title: str | None = None, gap: int = 4,
                     band: int = 18) -> np.ndarray:
    """Panels side by side, each with a label band on top, and an optional title band over all."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    top = (band if title else 0) + band
    canvas = Image.new("RGB", (w, top + h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if title:
        draw.text((3, 2), title, fill=(0, 0, 0), font=font)
    x = 0
    for p, lab in zip(panels, labels):
        canvas.paste(Image.fromarray(p), (x, top))
        draw.text((x + 3, top - band + 2), lab, fill=(0, 0, 0), font=font)
        x += p.shape[1] + gap
    return np.asarray(canvas)


def _heat_blend(img: np.ndarray, m: np.ndarray, vmin: float, vmax: float, edge: np.ndarray | None) -> np.ndarray:
    from .overlay import CONTOUR_RGB, HEAT_ALPHA, heat_colors
    heat = heat_colors(m, vmin, vmax).astype(np.float32)
    out = np.clip(img.astype(np.float32) * (1 - HEAT_ALPHA) + heat * HEAT_ALPHA + 0.5, 0, 255).astype(np.uint8)
    if edge is not None:
        out[edge] = CONTOUR_RGB
    return out


def token_labels(masks: np.ndarray, grid: tuple[int, int], threshold: float = ANOMALOUS_TOKEN_FRACTION) -> np.ndarray:
    """(B, S, S) bool masks -> (B, h*w) token labels: 1 anomalous (the mask covers >= ``threshold`` of the
    token's patch), 0 normal (covers none of it), -1 boundary (in between; left out of the t-SNE)."""
    import torch
    import torch.nn.functional as F
    m = torch.from_numpy(np.asarray(masks, np.float32))[:, None]
    frac = F.adaptive_avg_pool2d(m, grid)[:, 0].flatten(1).numpy()
    out = np.full(frac.shape, -1, np.int64)
    out[frac <= 0.0] = 0
    out[frac >= threshold] = 1
    return out


# ----------------------------------------------------------------------------------------------------
# sections


@dataclass
class _Figure:
    file: str           # path relative to the HTML file's folder
    png: bytes
    caption: str
    alt: str


class _Paths:
    def __init__(self, data_root: str, new_root: str | None):
        self.old = Path(data_root) if data_root else None
        self.new = Path(new_root) if new_root else None

    def __call__(self, path: str) -> Path:
        p = Path(path)
        if self.new is not None and self.old is not None:
            try:
                return self.new / p.relative_to(self.old)
            except ValueError:
                pass
        return p


def _example_figures(data: ReportCollector, rel: str, paths: _Paths, size: int) -> list[_Figure]:
    from ..data.dataset import load_image_array
    from .overlay import compose_overlay
    figs = []
    for e in tqdm(data.examples, desc="report: false positives/negatives", leave=False):
        path = paths(e["image"])
        if not path.is_file():
            raise FileNotFoundError(f"test image {path} not found (the data moved? pass --data NEW_ROOT)")
        img = load_image_array(path, size)
        amap = _resize_map(e["map"], size)
        mask = _resize_mask(_unpack(e["mask"], data.map_size), size) if e["kind"] == "fn" else None
        vmin, vmax = data.scales.get(e["category"], (None, None))
        what = "false positive" if e["kind"] == "fp" else "false negative"
        canvas = compose_overlay(img, amap, mask=mask, vmin=vmin, vmax=vmax,
                                 title=f"{e['category']}/{e['defect']} score={e['score']:.4g}")
        name = f"{e['kind']}_{_safe(e['category'])}_{e['rank']}_{_safe(e['defect'])}_{_safe(Path(e['image']).stem)}.png"
        if math.isfinite(e["beyond"]):
            if e["kind"] == "fp":
                note = f"scores above {100 * e['beyond']:.0f}% of the category's defective images"
            else:
                note = f"scores below {100 * e['beyond']:.0f}% of the category's normal images"
        else:
            note = ""
        cap = (f"{what} #{e['rank'] + 1}: {e['category']} / {e['defect']} / {Path(e['image']).name}, "
               f"score {e['score']:.4g}" + (f" ({note})" if note else ""))
        figs.append(_Figure(f"{rel}/{name}", _png_bytes(canvas), cap, f"{what} {e['category']} {Path(e['image']).name}"))
        e["png"] = f"{rel}/{name}"
    return figs


def _select_probes(data: ReportCollector) -> tuple[list[int], list[int]]:
    """(probes shown with prototype maps: one defective + one normal image of each of the first
    ``PROTO_CATEGORIES`` categories, probes run through the model: those, then the others round-robin over
    the categories, ``TSNE_MAX_IMAGES`` at most)."""
    cats: dict[str, list[int]] = {}
    for i, p in enumerate(data.probes):
        cats.setdefault(p["category"], []).append(i)
    proto = []
    for idx in list(cats.values())[:PROTO_CATEGORIES]:
        proto += [i for i in idx if data.probes[i]["label"] == 1][:1] + [i for i in idx if data.probes[i]["label"] == 0][:1]
    rest = []
    for j in range(max((len(v) for v in cats.values()), default=0)):  # round-robin over the categories
        rest += [v[j] for v in cats.values() if j < len(v) and v[j] not in proto]
    use = (proto + rest)[:max(TSNE_MAX_IMAGES, len(proto))]
    return proto, use


def _probe_forward(detector, probes: list[dict], paths: _Paths, batch_size: int):
    """Backbone, prototypes and one DDIM reconstruction (the config's noise_step/ddim_steps, seeded) of the
    given probe images: ``{"x0", "x0_hat"}`` (B, N, C) standardised tokens and ``{"sim_local",
    "sim_global"}`` (B, h, w) max cosine similarity of each token to the prototypes (None without them)."""
    import torch

    from ..data.dataset import ImageDataset, load_image_rgb
    from ..engine.features import tokens_from_maps
    from ..model.prototypes import prototype_similarity_maps
    cfg, model, dev = detector.cfg, detector.model, detector.device
    ds = ImageDataset([], cfg.backbone.image_size, detector.backbone.mean, detector.backbone.std)
    inf = cfg.inference
    gen = torch.Generator(dev).manual_seed(int(inf.seed))
    x0s, xhats, sims_l, sims_g = [], [], [], []
    for lo in tqdm(range(0, len(probes), batch_size), desc="report: probe images", leave=False):
        chunk = probes[lo:lo + batch_size]
        images = []
        for p in chunk:
            path = paths(p["image"])
            if not path.is_file():
                raise FileNotFoundError(f"test image {path} not found (the data moved? pass --data NEW_ROOT)")
            images.append(ds.to_tensor(load_image_rgb(path)))
        with torch.inference_mode():
            feats = detector.backbone(torch.stack(images).to(dev))
            tokens = tokens_from_maps(feats.float())
            x0 = model.standardize(tokens)
            p_local, p_global = model.prototypes(x0)
            h, w = model.grid_size
            if p_local is not None:
                sims_l.append(prototype_similarity_maps(x0, p_local).amax(1).view(-1, h, w).float().cpu())
            if p_global is not None:
                sims_g.append(prototype_similarity_maps(x0, p_global).amax(1).view(-1, h, w).float().cpu())
            x0_, x0_hat = model.reconstruct(tokens, inf.noise_step, inf.ddim_steps, gen)
        x0s.append(x0_.float().cpu())
        xhats.append(x0_hat.float().cpu())
    return {"x0": torch.cat(x0s).numpy(), "x0_hat": torch.cat(xhats).numpy(),
            "sim_local": torch.cat(sims_l).numpy() if sims_l else None,
            "sim_global": torch.cat(sims_g).numpy() if sims_g else None}


def _proto_figures(data: ReportCollector, fwd: dict, proto: list[int], use: list[int], rel: str, paths: _Paths,
                   size: int) -> list[_Figure]:
    from ..data.dataset import load_image_array
    from .overlay import CONTOUR_RGB, mask_boundary
    figs = []
    for k in tqdm(proto, desc="report: prototype maps", leave=False):
        p, i = data.probes[k], use.index(k)
        cat = p["category"]
        img = load_image_array(paths(p["image"]), size)
        mask = _resize_mask(_unpack(p["mask"], data.map_size), size)
        edge = mask_boundary(mask) if mask.any() else None
        first = img.copy()
        if edge is not None:
            first[edge] = CONTOUR_RGB
        panels, labels = [first], ["image" + (" + ground truth" if edge is not None else "")]
        for key, lab in (("sim_local", "L-Proto"), ("sim_global", "G-Proto")):
            if fwd[key] is None:
                continue
            sm = _upsample(fwd[key][i], size)
            lo, hi = float(sm.min()), float(sm.max())
            panels.append(_heat_blend(img, sm, lo, hi, edge))
            labels.append(f"{lab} cos {lo:.2f}..{hi:.2f}")
        state = "anomalous" if p["label"] else "normal"
        canvas = _labelled_panels(panels, labels, title=f"{cat}/{p['defect']} ({state})")
        name = f"proto_{_safe(cat)}_{state}_{_safe(p['defect'])}_{_safe(Path(p['image']).stem)}.png"
        cap = (f"{cat}: {state} image {Path(p['image']).name} (score {p['score']:.4g}); max cosine similarity "
               f"of each token to the local (L-Proto) and global (G-Proto) prototypes, colour scale per map")
        figs.append(_Figure(f"{rel}/{name}", _png_bytes(canvas), cap, f"prototype similarity {cat} {state}"))
    return figs


def _upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    t = torch.from_numpy(np.asarray(grid_map, np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _single_thread():
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _tsne_figure(data: ReportCollector, fwd: dict, use: list[int], grid, rel: str, files_dir: Path,
                 max_tokens: int, seed: int) -> tuple[list[_Figure], str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE
    s = data.map_size
    probes = [data.probes[k] for k in use]
    masks = np.stack([_unpack(p["mask"], s) for p in probes])
    labels = token_labels(masks, tuple(grid))                          # (B, N)
    cats = np.repeat(np.array([p["category"] for p in probes]), labels.shape[1])
    labels = labels.reshape(-1)
    x0 = fwd["x0"].reshape(-1, fwd["x0"].shape[-1])
    xh = fwd["x0_hat"].reshape(-1, fwd["x0_hat"].shape[-1])
    rng = np.random.default_rng(seed)
    anom = np.where(labels == 1)[0]
    norm = np.where(labels == 0)[0]
    n_anom = min(len(anom), max_tokens // 2)
    pick = np.concatenate([rng.choice(anom, n_anom, replace=False) if n_anom else np.zeros(0, np.int64),
                           rng.choice(norm, min(len(norm), max_tokens - n_anom), replace=False)])
    pick.sort()
    if len(pick) < 10:
        return [], f"t-SNE left out: only {len(pick)} tokens in the probe images"
    lab = labels[pick]
    err = ((xh[pick] - x0[pick]) ** 2).sum(-1)
    perplexity = float(min(30.0, max(2.0, (len(pick) - 1) / 3.0)))
    emb = {}
    # one OpenMP thread: sklearn's libgomp next to torch's (two OpenMP runtimes in one process) makes the
    # Barnes-Hut gradient spin-wait; measured 33 s instead of 0.3 s for 96 tokens on a busy 2-core machine
    with _single_thread():
        for key, x in (("before", x0[pick]), ("after", xh[pick])):
            emb[key] = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                            max_iter=500).fit_transform(x.astype(np.float32))
    fig = Figure(figsize=(10, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    for j, (key, title) in enumerate((("before", "encoder tokens (before reconstruction)"),
                                      ("after", "reconstructed tokens (after)"))):
        ax = fig.add_subplot(1, 2, j + 1)
        e = emb[key]
        ax.scatter(e[lab == 0, 0], e[lab == 0, 1], s=6, c="#3b6fb6", alpha=0.5, marker="o", linewidths=0,
                   label=f"normal ({int((lab == 0).sum())})")
        if (lab == 1).any():
            ax.scatter(e[lab == 1, 0], e[lab == 1, 1], s=40, c="#d62728", alpha=0.85, marker="*", linewidths=0,
                       label=f"anomalous ({int((lab == 1).sum())})")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    # the coordinates, also as a table
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["category", "token_label", "reconstruction_error", "before_x", "before_y", "after_x", "after_y"])
    for k in range(len(pick)):
        w.writerow([cats[pick[k]], "anomalous" if lab[k] else "normal", f"{err[k]:.6g}",
                    *(f"{v:.5g}" for v in (*emb["before"][k], *emb["after"][k]))])
    atomic_write_text(files_dir / "tsne_tokens.csv", out.getvalue())
    if (lab == 1).any():
        stats = (f"mean squared reconstruction error per token: normal {err[lab == 0].mean():.4g}, "
                 f"anomalous {err[lab == 1].mean():.4g}")
    else:
        stats = "no anomalous tokens in the sample"
    cap = (f"t-SNE (perplexity {perplexity:.0f}, PCA init, seed {seed}) of {len(pick)} standardised tokens of "
           f"{len(probes)} test images, before and after one DDIM reconstruction (paper Fig. 7). A token is "
           f"anomalous when the ground truth covers at least {ANOMALOUS_TOKEN_FRACTION:.0%} of its patch; "
           f"defect-boundary tokens are left out. {stats}.")
    return [_Figure(f"{rel}/tsne_tokens.png", buf.getvalue(), cap, "t-SNE of tokens before and after reconstruction")], ""


# ----------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table.metrics{border-collapse:collapse;font-size:.9em}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics thead th{cursor:pointer;background:#f2f2f2;user-select:none}
table.metrics thead th[data-order=asc]::after{content:" \\25B2"}
table.metrics thead th[data-order=desc]::after{content:" \\25BC"}
table.metrics tfoot td{font-weight:bold;background:#fafafa}
figure{display:inline-block;margin:.4em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.8em;color:#444;width:0;min-width:100%}
.note{color:#8a5300;font-size:.9em}.meta{font-size:.85em;color:#555}
"""

# click a header to sort the category rows by that column (numbers by value, names alphabetically)
_JS = """
document.querySelectorAll('table.metrics').forEach(function(t){
  t.querySelectorAll('thead th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=th.getAttribute('data-order')!=='asc', tb=t.tBodies[0], rows=Array.prototype.slice.call(tb.rows);
      rows.sort(function(a,b){var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
        var nx=parseFloat(x),ny=parseFloat(y),c=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(String(y)):nx-ny;
        return asc?c:-c;});
      t.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('data-order');});
      th.setAttribute('data-order',asc?'asc':'desc');
      rows.forEach(function(r){tb.appendChild(r);});
    });
  });
});
"""


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _metrics_table(results: dict) -> str:
    cols = list(results.get("columns") or [])
    per = results.get("per_category") or {}
    if not cols and per:
        cols = list(next(iter(per.values())))

    def cells(row: dict) -> str:
        out = []
        for c in cols:
            v = row.get(c)
            try:
                f = float(v)
            except (TypeError, ValueError):
                out.append('<td data-v="">-</td>')
                continue
            out.append(f'<td data-v="{f!r}">{"nan" if math.isnan(f) else f"{100 * f:.1f}"}</td>')
        return "".join(out)

    head = "".join(f"<th>{_esc(c)}</th>" for c in ["category", *cols])
    body = "\n".join(f'<tr><td data-v="{_esc(n)}">{_esc(n)}</td>{cells(r)}</tr>' for n, r in per.items())
    foot = ""
    if results.get("mean"):
        foot = f'<tfoot><tr><td>mean</td>{cells(results["mean"])}</tr></tfoot>'
    return (f'<table class="metrics" id="metrics"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>'
            f'{foot}</table>')


def _figure_html(f: _Figure) -> str:
    b64 = base64.b64encode(f.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(f.alt)}" data-file="{_esc(f.file)}">'
            f'<figcaption>{_esc(f.caption)} <a href="{_esc(f.file)}">PNG</a></figcaption></figure>')


def _protocol_line(results: dict) -> str:
    p = results.get("protocol") or {}
    inf = p.get("inference") or {}
    parts = []
    for k in ("noise_step", "ddim_steps", "ensemble", "smoothing_sigma", "pool_size", "image_score"):
        if k in inf:
            parts.append(f"{k}={inf[k]}")
    for k in ("evaluation_resolution", "device", "fps_end_to_end"):
        if k in p:
            parts.append(f"{k}={p[k]}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# entry point


def build_report(run_dir: Path, eval_dir: Path | None = None, output: Path | None = None, overwrite: bool = False,
                 detector=None, data: ReportCollector | None = None, data_root: str | None = None,
                 device: str = "auto", tsne_tokens: int = TSNE_MAX_TOKENS, seed: int = 0) -> dict:
    """Write the HTML report of an evaluated run; returns ``{"html", "files_dir", "figures", "seconds", ...}``.

    ``eval_dir`` (default ``RUN/eval``) must hold ``results.json`` and ``report_data.npz`` (written by
    ``evaluate``; or pass the in-memory ``data``; without it the shown maps are recomputed, see
    :func:`collect_from_scores`); ``output`` defaults to ``EVAL/report.html`` and its PNGs go
    to ``<output stem>_files/``. An existing report is kept unless ``overwrite``. ``detector`` (an
    ``evaluate.Detector``) is loaded from the run when not given; ``data_root`` re-roots the test image
    paths when the dataset moved.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir else run_dir / "eval"
    out = Path(output) if output else eval_dir / REPORT_FILE
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--output {out}: give a FILE.html path")
    files_dir = report_files_dir(out)
    if not overwrite:
        if out.exists():
            raise FileExistsError(f"{out} exists; pass --overwrite or choose another --output")
        if files_dir.is_dir() and any(files_dir.iterdir()):
            raise FileExistsError(f"{files_dir} is not empty; pass --overwrite or choose another --output")
    res_path = eval_dir / "results.json"
    if not res_path.is_file():
        raise FileNotFoundError(f"{res_path} not found: evaluate the run first (dpdiff test {run_dir})")
    results = json.loads(res_path.read_text(encoding="utf-8"))
    notes: dict[str, str] = {}
    timings: dict[str, float] = {}
    if data is None and not (eval_dir / REPORT_DATA_FILE).is_file():
        t = time.perf_counter()
        if detector is None:
            from ..engine.inference import load_detector
            detector = load_detector(run_dir, device)
        data = collect_from_scores(run_dir, eval_dir, detector, data_root)
        data_root = None  # the collected paths are already under the given root
        notes["data"] = (f"{REPORT_DATA_FILE} absent: the maps shown were recomputed for this report (other noise "
                         f"draws than the evaluation's; colour scale from the shown maps)")
        timings["recompute_s"] = time.perf_counter() - t
    elif data is None:
        data = ReportCollector.load(eval_dir / REPORT_DATA_FILE)
    paths = _Paths(data.data_root, data_root)
    rel = files_dir.name
    size = min(int(data.map_size), DISPLAY_MAX)

    files_dir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    example_figs = _example_figures(data, rel, paths, size)
    timings["examples_s"] = time.perf_counter() - t

    proto_figs, tsne_figs = [], []
    if data.probes:
        t = time.perf_counter()
        if detector is None:
            from ..engine.inference import load_detector
            detector = load_detector(run_dir, device)
        grid = tuple(detector.model.grid_size)
        proto, use = _select_probes(data)
        fwd = _probe_forward(detector, [data.probes[k] for k in use], paths,
                             max(1, int(detector.cfg.inference.batch_size)))
        timings["probe_forward_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if fwd["sim_local"] is None and fwd["sim_global"] is None:
            notes["proto"] = "this model has no prototypes (ablation): no similarity maps"
        else:
            proto_figs = _proto_figures(data, fwd, proto, use, rel, paths, size)
        timings["proto_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tsne_figs, note = _tsne_figure(data, fwd, use, grid, rel, files_dir, int(tsne_tokens), seed)
        if note:
            notes["tsne"] = note
        timings["tsne_s"] = time.perf_counter() - t
    else:
        notes["proto"] = notes["tsne"] = "no probe images in the report data"

    t = time.perf_counter()
    loss_figs: list[_Figure] = []
    from ..engine.train import load_history
    history = load_history(run_dir) if (run_dir / "loss_history.csv").is_file() else []
    if history:
        from .curves import plot_curves
        keys = [k for k in history[0] if k != "step"]
        every = int(history[0]["step"])
        p = plot_curves({k: [r[k] for r in history] for k in keys}, files_dir / "loss_curves.png",
                        xlabel=f"log interval (x{every} steps)", ylabel="loss", title="training losses")
        loss_figs.append(_Figure(f"{rel}/loss_curves.png", p.read_bytes(),
                                 f"training losses (mean over every {every} steps, {int(history[-1]['step'])} steps; "
                                 f"total = diffusion + local + global prototype terms, Eq. 19)",
                                 "training loss curves"))
    else:
        notes["loss"] = f"no {run_dir / 'loss_history.csv'}: training curves left out"
    timings["loss_s"] = time.perf_counter() - t

    for f in example_figs + proto_figs + tsne_figs:  # (the loss PNG is already written)
        atomic_write_bytes(out.parent / f.file, f.png)

    # the false positive / negative list, also as CSV
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "category", "rank", "image", "defect", "score", "beyond_fraction", "png"])
    for e in data.examples:
        w.writerow([e["kind"], e["category"], e["rank"] + 1, e["image"], e["defect"], repr(e["score"]),
                    repr(e["beyond"]), e.get("png", "")])
    atomic_write_text(files_dir / "examples.csv", buf.getvalue())

    # --- HTML
    def section(title: str, figs: list[_Figure], intro: str = "", note_key: str = "") -> str:
        parts = [f"<h2>{_esc(title)}</h2>"]
        if intro:
            parts.append(f"<p>{intro}</p>")
        if note_key in notes:
            parts.append(f'<p class="note">{_esc(notes[note_key])}</p>')
        parts += [_figure_html(f) for f in figs]
        return "\n".join(parts)

    fps = [f for f, e in zip(example_figs, data.examples) if e["kind"] == "fp"]
    fns = [f for f, e in zip(example_figs, data.examples) if e["kind"] == "fn"]
    k = data.examples_per_category
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>DPDiff-AD report: {_esc(run_dir.name)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>DPDiff-AD report: {_esc(run_dir)}</h1>",
        f'<p class="meta">evaluation {_esc(eval_dir)}; created {created}; {_esc(_protocol_line(results))}</p>',
        f'<p class="note">{_esc(notes["data"])}</p>' if "data" in notes else "",
        "<h2>Metrics per category</h2>",
        "<p>Percent; click a column header to sort. Also in "
        f"<code>{_esc(res_path.name)}</code> / <code>results.csv</code> / <code>results.md</code>.</p>",
        _metrics_table(results),
        section("Worst false positives", fps,
                f"The {k} highest-scoring <em>normal</em> test images of each category: image, anomaly map "
                f"(colour scale per category, as in <code>overlays/</code>)."),
        section("Worst false negatives", fns,
                f"The {k} lowest-scoring <em>defective</em> test images of each category: image, ground-truth "
                f"contour (red), anomaly map with the contour."),
        section("Prototype similarity maps (Fig. 8)", proto_figs,
                "Local (L-Proto) and global (G-Proto) prototypes: per token, the highest cosine similarity "
                "to any prototype of the image.", "proto"),
        section("Tokens before and after reconstruction (t-SNE, Fig. 7)", tsne_figs, "", "tsne"),
        section("Training losses", loss_figs, "", "loss"),
        f"<script>{_JS}</script>", "</body></html>",
    ]
    atomic_write_text(out, "\n".join(doc) + "\n")
    figures = [f.file for f in example_figs + proto_figs + tsne_figs + loss_figs]
    seconds = time.perf_counter() - t0
    summary = {"html": str(out), "files_dir": str(files_dir), "figures": figures,
               "categories": list((results.get("per_category") or {}).keys()), "notes": notes,
               "timings_s": {k: round(v, 3) for k, v in timings.items()}, "seconds": round(seconds, 3)}
    atomic_write_json(files_dir / "report.json", summary)
    # the folder belongs to this report: figures of an earlier one (other categories ...) go, once the new
    # report is complete
    keep = {Path(f).name for f in figures} | {"examples.csv", "report.json"} | ({"tsne_tokens.csv"} if tsne_figs else set())
    for old in sorted(files_dir.iterdir()):
        if old.is_file() and old.suffix in (".png", ".csv", ".json") and old.name not in keep:
            old.unlink()
    return summary


def report_from_evaluate(run_dir: Path, out_dir: Path, collector: ReportCollector, detector) -> dict | None:
    """The hook at the end of ``evaluate``: save the report data, then build ``out_dir/report.html``
    (replacing it: evaluate has already checked it may write ``out_dir``). A failure is reported on
    stderr and does not lose the evaluation, whose results are already written."""
    collector.save(out_dir / REPORT_DATA_FILE)
    try:
        return build_report(run_dir, out_dir, out_dir / REPORT_FILE, overwrite=True, detector=detector,
                            data=collector)
    except Exception as e:  # noqa: BLE001 - the metrics are written; the report can be rebuilt later
        print(f"dpdiff: warning: the HTML report failed ({type(e).__name__}: {e}); results are written, "
              f"rebuild it with `dpdiff report {run_dir} --eval {out_dir} --overwrite`", file=sys.stderr)
        return None
