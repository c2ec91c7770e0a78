"""Image geometry (issue #24): wide images with small defects, scored at their own aspect ratio. Does keeping
the aspect ratio, or cutting tiles, find small defects that today's 256 px square misses?

    python benchmarks/geometry.py                          # every row, 1000 training steps each (resumable)
    python benchmarks/geometry.py --minutes 8              # equal training minutes per row instead of equal steps
    python benchmarks/geometry.py --rows square_256,tiles_384_px
    python benchmarks/geometry.py --quick --rows square_256   # smoke run: tiny data, 20 steps (a minute or two)
    python benchmarks/geometry.py --datasets synthetic,bsdata # also the real BSData ball screws (1130 x 460)

Data (``--datasets``, default ``synthetic``):

* ``synthetic``: ``dpdiff.data.synthetic`` at ``--image-hw`` (default 384 x 1024, height x width) with every defect
  under ``--max-defect-fraction`` (default 0.5 %) of the image, ``--categories`` (default 10) categories;
  results ``geometry.{json,md}``;
* ``bsdata``: BSData (ball screw drive surfaces, 1130 x 460 photographs with small pitting defects; CC BY-SA 4.0,
  Schlagenhauf et al., KIT), converted by ``benchmarks/real_datasets.py bsdata`` under ``--real-data`` (as
  ``benchmarks/accuracy.py`` finds real sets; never committed), category ``ball_screw``, rows ``square 256``,
  ``keep aspect [128, 320]`` and ``tiles 384 px``; results ``geometry_bsdata.{json,md}``. Its test images of the
  most common size only (460 x 1130: 140 good, 167 pitting; the 645 x 1540 ones, 2 good and 158 pitting, are
  another series and left out, recorded in the results). ``--quick`` uses a
  few images of it (symlinked into the output folder).

Rows (:data:`ROWS`, each a DPDiff-AD training of the shipped ``lite0_cpu`` preset plus a kNN bank on the same
tokens):

* ``square 256``: today's default, the whole image stretched to 256 x 256 (16 x 16 tokens);
* ``keep aspect [128, 320]``: ``backbone.image_size: [128, 320]`` (8 x 20 tokens, the camera's aspect within 6 %);
* ``tiles 384 px`` / ``tiles 192 px``: ``data.tiling: {tile: [s, s], overlap: 0.25}`` at ``image_size`` 256, run
  by the library: ``train()`` learns on the tiles of the normal images (read, cut and cached by the package,
  ``train.feature_cache`` under the row's folder), and the test images are scored by the library's tiled path
  (``Detector.iter_predict``: tiles cut by ``ImageGeometry.tile_plan``, scored in batches, stitched with the
  cosine window, the map at the image's size); the kNN bank scores the same tiles (cut by ``tile_plan``) and its
  maps are stitched the same way (``dpdiff.data.tiling.Stitcher`` on the plan's frame).

Training budget: ``--steps`` (default 1000) for every row, or ``--minutes``: each row's steps from its own
measured seconds per step (a 20-step probe training of that row), so rows with fewer tokens per input get more
steps. Steps are what the trainer counts; a tile row sees more distinct inputs per epoch, not more per step.

Every row is evaluated the same way, on the evaluation frame: the image at its own aspect ratio, long side
``--eval-long-side`` (default 512; masks resized nearest, > 0). The map of an input (the model's, or the stitched
tiles') is brought to the image's size (``ImageGeometry.map_to_image`` / the stitcher), then resized to that frame;
the image score is the config's rule (``inference.image_score``, pooled max) on that map, for every row alike.
Columns: I-AUROC, P-AUROC, P-AP, P-AUPRO (fractions in the JSON, percent in the table; mean over categories),
images/s and megapixels/s of the scoring pass in this process (decoding, cutting, backbone, scoring, stitching;
not the metrics), single process, ``torch.get_num_threads()`` threads.

kNN rows: a raw-space nearest-neighbour bank (``dpdiff.experiments.compare.build_knn``) on the row's own training
tokens, every ``--knn-every``-th training image (default 2) and at most ``--knn-tokens`` tokens (a seeded random
subset: the exact search over every tile token of the 192 px row would take hours on a CPU), post-processed and
stitched exactly as DPDiff-AD's maps.

Resumable: one folder per row under ``--output`` holds its features (fp16 ``.npy``, memory-mapped), its training
(``train(..., resume=True)``) and one JSON per scored row; a stored row made with other settings is recomputed.
Writes ``benchmarks/results/geometry.{json,md}`` atomically after every row (``--quick``: under the output folder).
The keys ``backbone.image_size: [H, W]``, ``data.resize`` and ``data.tiling`` are the row's config, read by
``ImageGeometry``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _accuracy_harness import PRESET, Bench
from _common import RESULTS, ROOT, inference_settings, pct, slug
from PIL import Image

from dpdiff.baselines.knn import KNNMemoryBank
from dpdiff.config import Config, load_config
from dpdiff.data.geometry import Box, ImageGeometry, resize_map
from dpdiff.data.images import resize_binarise_mask
from dpdiff.data.readers import load_samples
from dpdiff.data.synthetic import ensure_synthetic_dataset
from dpdiff.data.tiling import Stitcher
from dpdiff.experiments.compare import build_knn, dpdiff_score_features
from dpdiff.features import build_backbone_from_config, resolve_device
from dpdiff.features.store import FeatureStore, ShardWriter
from dpdiff.inference.detector import Detector
from dpdiff.inference.predictor import Skipped
from dpdiff.metrics import add_mean_row, compute_metrics
from dpdiff.model.checkpoint import config_differences, load_model, read_run_config
from dpdiff.model.postprocess import image_scores, top_percent_scores
from dpdiff.scoring.scorer import postprocess_maps
from dpdiff.training.inputs import train_features
from dpdiff.utils.io import atomic_write_json, atomic_write_text
from dpdiff.workflows.train import train

log = logging.getLogger("geometry")
#: Columns of the table (keys of compute_metrics' rows), then the two speeds.
METRICS = ("I-AUROC", "P-AUROC", "P-AP", "P-AUPRO")


@dataclass(frozen=True)
class Row:
    """One geometry: config overrides (on the preset) and an optional ``data.tiling`` value."""

    name: str
    overrides: dict = field(default_factory=dict)
    tiling: dict | None = None


ROWS = [
    Row("square 256"),
    Row("keep aspect [128, 320]", {"backbone.image_size": [128, 320]}),
    Row("tiles 384 px", tiling={"tile": [384, 384], "overlap": 0.25}),
    Row("tiles 192 px", tiling={"tile": [192, 192], "overlap": 0.25}),
]
#: The rows run on each data set (``--datasets``): BSData's 1130 x 460 images get one tile size (2 x 4 tiles).
DATASET_ROWS = {"synthetic": [r.name for r in ROWS], "bsdata": ["square 256", "keep aspect [128, 320]", "tiles 384 px"]}
#: The converted real sets this benchmark reads (benchmarks/real_datasets.py): name -> categories.
REAL_SETS = {"bsdata": ["ball_screw"]}


def _row_config(preset: Config, row: Row, root: Path, categories: list[str], steps: int) -> Config:
    overrides = {
        "data.root": str(root),
        "data.categories": categories,
        "data.format": "mvtec",
        "train.steps": steps,
        "train.calibration_fraction": 0.0,  # every row trains on all normal images (no thresholds needed here)
        "data.tiling": row.tiling,
        **row.overrides,
    }
    if row.tiling is not None:  # the image Gaussian scores whole images, not stitched tiles (a config error)
        overrides["inference.image_gaussian_weight"] = 0.0
    return preset.override(overrides)


class Inputs:
    """A row's model inputs: the tiles (``ImageGeometry.tile_plan``'s crops) of every image and their backbone
    features, written once to ``folder`` as fp16 ``.npy`` and read back memory-mapped (a 192 px tile row of 320
    training images holds ~7k inputs). Untiled: one input per image, the whole image (crop None)."""

    def __init__(self, cfg: Config, device: str):
        self.cfg, self.device = cfg, device
        self.geometry = ImageGeometry.from_config(cfg)
        self.tiled = self.geometry.tiling is not None
        self.backbone = build_backbone_from_config(cfg).to(device).eval()

    def boxes(self, image_hw: tuple[int, int]) -> list[Box | None]:
        if not self.tiled:
            return [None]
        return list(self.geometry.tile_plan((image_hw[1], image_hw[0])).crops)

    def _batches(self, samples: list, batch: int):
        """(image index, crop, model input (3, H, W)) in order, ``batch`` inputs at a time."""
        buf: list = []
        for i, s in enumerate(samples):
            with Image.open(s.image_path) as im:
                im.load()
                for box in self.boxes((im.height, im.width)):
                    buf.append((i, box, self.geometry.model_input(im, self.backbone.mean, self.backbone.std, box)))
                    if len(buf) == batch:
                        yield buf
                        buf = []
        if buf:
            yield buf

    def features(
        self, samples: list, path: Path, batch: int = 16
    ) -> tuple[FeatureStore, list[int], list[Box | None], float]:
        """(features of every input, image index of each, crop of each, seconds to make them) for ``samples``;
        from ``path`` (``.npy`` + ``.json``) when a complete earlier pass wrote them."""
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() and path.exists() else {}
        if "crops" in meta:  # (files of the version that cut (y0, x0, y1, x1) boxes itself are made again)
            owner, secs = meta["owner"], float(meta["seconds"])
            boxes: list[Box | None] = [None if b is None else tuple(b) for b in meta["crops"]]
        else:
            n = sum(len(self.boxes(_image_hw(s.image_path))) for s in samples)
            tmp = path.with_suffix(".npy.partial")
            writer = ShardWriter(tmp, n)
            owner, boxes, pos = [], [], 0
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    for buf in self._batches(samples, batch):
                        x = torch.from_numpy(np.stack([b[2] for b in buf])).to(self.device)
                        f = self.backbone(x).to(torch.float16).cpu()
                        writer[pos : pos + len(buf)] = f
                        pos += len(buf)
                        owner += [b[0] for b in buf]
                        boxes += [b[1] for b in buf]
                writer.close()
            except BaseException:
                writer.abort()
                raise
            secs = time.perf_counter() - t0
            tmp.replace(path)
            crops = [None if b is None else list(b) for b in boxes]
            atomic_write_json(meta_path, {"owner": owner, "crops": crops, "seconds": secs})
        arr = np.load(path, mmap_mode="r")
        store = FeatureStore([arr], np.zeros(len(arr), np.int32), np.arange(len(arr)))
        return store, owner, boxes, secs


def _image_hw(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.height, im.width


def _one_camera(samples: list) -> tuple[list, dict]:
    """The test images of the most common size (one camera: one evaluation frame), and how many of each other size
    are left out. BSData's test set mixes 460 x 1130 images (140 good, 167 pitting) with 645 x 1540 ones (2 good,
    158 pitting: another series, nearly all defective, so its size alone would predict the label)."""
    sizes = [_image_hw(s.image_path) for s in samples]
    counts: dict[tuple[int, int], int] = {}
    for hw in sizes:
        counts[hw] = counts.get(hw, 0) + 1
    keep = max(counts, key=lambda hw: counts[hw])
    left_out = {f"{h}x{w}": n for (h, w), n in sorted(counts.items()) if (h, w) != keep}
    if left_out:
        log.info("test images of %dx%d kept (%d); left out (other cameras): %s", *keep, counts[keep], left_out)
    return [s for s, hw in zip(samples, sizes, strict=True) if hw == keep], left_out


class Evaluation:
    """The test set on the evaluation frame: masks at the image's aspect (long side ``long_side``), labels,
    categories; :meth:`frame_maps` turns per-input pixel maps into one map per image on that frame."""

    def __init__(self, samples: list, long_side: int):
        self.samples = samples
        hw = {_image_hw(s.image_path) for s in samples}
        if len(hw) != 1:
            raise SystemExit(f"the test images have several sizes {sorted(hw)}: this benchmark expects one camera")
        self.image_hw = hw.pop()
        h, w = self.image_hw
        scale = long_side / max(h, w)
        self.hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        self.labels = np.array([s.label for s in samples])
        self.cats = np.array([s.category for s in samples])
        self.mask_known = np.array([s.mask_known for s in samples], dtype=bool)
        self.masks = np.stack([self._mask(s) for s in samples])

    def _mask(self, s) -> np.ndarray:
        if s.mask_path is None or not s.label:
            return np.zeros(self.hw, bool)
        values = np.asarray(Image.open(s.mask_path).convert("L"), np.float32) / 255.0
        return resize_binarise_mask(values, self.hw)

    def frame_maps(self, maps: np.ndarray, owner: list[int], geometry: ImageGeometry) -> np.ndarray:
        """(N_images, h, w) float32 on the evaluation frame from the per-input maps ``maps`` (N_inputs, Hm, Wm),
        the tiles of an image in ``tile_plan`` order, stitched as the library stitches them (its plan's frame,
        the cosine window, ``map_to_image``)."""
        out = np.zeros((len(self.samples), *self.hw), np.float32)
        owner_arr = np.asarray(owner)
        h, w = self.image_hw
        for i in range(len(self.samples)):
            idx = np.flatnonzero(owner_arr == i)
            if geometry.tiling is not None:
                plan = geometry.tile_plan((w, h))
                st = Stitcher(plan.frame_hw)
                st.add([geometry.tile_content(maps[j], plan) for j in idx], plan.frame_boxes)
                full = geometry.map_to_image(st.result(), self.image_hw)
            else:
                full = geometry.map_to_image(maps[idx[0]], self.image_hw)
            out[i] = resize_map(full, self.hw)
        return out

    def metrics(self, maps: np.ndarray, scores: np.ndarray) -> dict:
        per_cat = {}
        for c in sorted(set(self.cats)):
            sel = self.cats == c
            per_cat[c] = compute_metrics(
                scores[sel], self.labels[sel], maps[sel], self.masks[sel], mask_known=self.mask_known[sel]
            )
        return add_mean_row(per_cat)["mean"]


def _image_scores(maps: np.ndarray, cfg: Config) -> np.ndarray:
    """The config's image-score rule on the evaluation-frame maps (the same rule for every row)."""
    t = torch.from_numpy(maps)
    inf = cfg.inference
    if inf.image_score == "top_percent_mean":
        return top_percent_scores(t, inf.top_percent).numpy()
    return image_scores(t, inf.pool_size).numpy()


def _trained(cfg: Config, run_dir: Path, feats: FeatureStore | None, samples: list | None) -> Path:
    """``train`` into ``run_dir`` (resumed when interrupted; refused when the stored config differs); ``feats``
    None (tile rows): ``train()`` reads, cuts and caches the training tiles itself."""
    if (run_dir / "config.json").exists():
        stored, payload = read_run_config(run_dir)
        changed = config_differences(stored.to_dict(), cfg.to_dict())
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
            raise SystemExit(
                f"{run_dir} was trained with other settings ({diff}); move it away or pass another --output"
            )
        if int(payload.get("step", -1)) >= cfg.train.steps:
            return run_dir
    resume = (run_dir / "train_state.pt").exists()
    n = "library tiles" if feats is None else f"{len(feats)} inputs"
    log.info("training %s (%d steps, %s)%s", run_dir.name, cfg.train.steps, n, " resumed" if resume else "")
    train(cfg, run_dir, overwrite=not resume, resume=resume, features=feats, samples=samples)
    return run_dir


def _steps_for(cfg: Config, folder: Path, feats: FeatureStore | None, samples: list | None, minutes: float) -> int:
    """Steps that fit ``minutes`` at this row's measured speed: a 20-step probe training (memoised)."""
    memo = folder / "step_time.json"
    if memo.exists():
        s_per_step = float(json.loads(memo.read_text())["s_per_step"])
    else:
        probe_dir = folder / "probe"
        probe_cfg = cfg.override({"train.steps": 20, "train.warmup_steps": 0})
        t0 = time.perf_counter()
        train(probe_cfg, probe_dir, overwrite=True, features=feats, samples=samples)
        wall = time.perf_counter() - t0
        _, payload = read_run_config(probe_dir)
        s_per_step = float(payload.get("train_s") or wall) / 20
        shutil.rmtree(probe_dir, ignore_errors=True)
        atomic_write_json(memo, {"s_per_step": s_per_step, "probe_steps": 20})
    return max(20, int(minutes * 60 / s_per_step))


def _cached(path: Path, settings: dict, compute) -> dict:
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            return stored["metrics"]
        log.info("%s: stored with other settings, scoring again", path.name)
    metrics = compute()
    atomic_write_json(path, {"metrics": metrics, "settings": settings})
    return metrics


def run_row(row: Row, args, preset: Config, root: Path, categories: list[str], ev: Evaluation, out: Path) -> dict:
    folder = out / slug(row.name)
    folder.mkdir(parents=True, exist_ok=True)
    device = resolve_device("cpu")
    cfg = _row_config(preset, row, root, categories, args.steps)
    inputs = Inputs(cfg, device)
    tiled = inputs.tiled
    if tiled:  # the library reads, cuts and caches the training tiles (its feature cache, under this folder)
        cfg = cfg.override({"train.feature_cache": True, "train.cache_dir": str(folder / "feature_cache")})
    train_samples = load_samples("mvtec", root, categories, "train")
    if tiled:
        given: tuple = (None, None)
    else:
        train_feats, train_owner, _, _ = inputs.features(train_samples, folder / "train_features.npy")
        given = (train_feats, [train_samples[i] for i in train_owner])
    if args.minutes:
        cfg = cfg.override({"train.steps": _steps_for(cfg, folder, *given, args.minutes)})
    run = _trained(cfg, folder / "run", *given)
    if tiled:  # the kNN bank's tokens: the very tiles train() learned on, read back from the library's cache
        train_feats, tiles = train_features(cfg, inputs.backbone, device)
        index = {str(s.image_path): i for i, s in enumerate(train_samples)}
        train_owner = [index[str(t.image_path)] for t in tiles]
    test_feats, owner, _, feat_s = inputs.features(ev.samples, folder / "test_features.npy")
    n_img, mp = len(ev.samples), ev.image_hw[0] * ev.image_hw[1] / 1e6
    protocol = {
        "config_overrides": row.overrides,
        "tiling": row.tiling,
        "geometry": inputs.geometry.describe(),
        "inputs_per_image": len(owner) / n_img,
        "train_inputs": len(train_feats),
        "train_steps": cfg.train.steps,
    }
    weights = Bench.weights_digest(run)
    settings = inference_settings(cfg) | {"weights": weights, "eval_hw": list(ev.hw)}

    def dpdiff_row() -> dict:
        model, run_cfg, payload = load_model(run, device)
        detector = Detector(inputs.backbone, model, run_cfg, device)
        detector.run_dir = run  # the token bank and image Gaussian train() built, when the preset uses them
        if tiled:  # the library's tiled path end to end: decode, cut, backbone, score, stitch, map at image size
            t0 = time.perf_counter()
            frame = np.stack(
                [
                    resize_map(p.anomaly_map, ev.hw)
                    for p in detector.iter_predict([s.image_path for s in ev.samples])
                    if not isinstance(p, Skipped)
                ]
            )
            secs = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            maps = dpdiff_score_features(detector, test_feats)[0].numpy()
            frame = ev.frame_maps(maps, owner, inputs.geometry)
            secs = time.perf_counter() - t0 + feat_s
        m = ev.metrics(frame, _image_scores(frame, run_cfg))
        m.update(images_per_s=n_img / secs, megapixels_per_s=n_img * mp / secs, train_s=payload.get("train_s"))
        return m | {"protocol": protocol}

    def knn_row() -> dict:
        rows = np.flatnonzero(np.isin(np.asarray(train_owner), np.arange(0, len(train_samples), args.knn_every)))
        tokens = build_knn(train_feats[rows], 1.0, standardize=False).bank  # every token of those inputs
        if tokens.shape[0] > args.knn_tokens:  # a seeded random subset: exact search over all is too slow
            keep = np.random.default_rng(0).choice(tokens.shape[0], args.knn_tokens, replace=False)
            tokens = tokens[torch.from_numpy(np.sort(keep))]
        bank = KNNMemoryBank(tokens, 1.0, standardize=False)
        t0 = time.perf_counter()
        parts = []
        for i in range(0, len(test_feats), 64):
            with torch.no_grad():
                parts.append(postprocess_maps(bank.score_maps(test_feats[i : i + 64]), cfg)[0].numpy())
        frame = ev.frame_maps(np.concatenate(parts), owner, inputs.geometry)
        secs = time.perf_counter() - t0 + feat_s
        m = ev.metrics(frame, _image_scores(frame, cfg))
        m.update(images_per_s=n_img / secs, megapixels_per_s=n_img * mp / secs, bank_tokens=int(bank.bank.shape[0]))
        return m | {"protocol": protocol | {"knn_every": args.knn_every}}

    dp = _cached(folder / "dpdiff.json", settings, dpdiff_row)
    log.info("%s dpdiff: %s", row.name, " ".join(f"{k} {pct(dp.get(k))}" for k in METRICS))
    kn = _cached(folder / "knn.json", settings | {"knn_every": args.knn_every, "knn_tokens": args.knn_tokens}, knn_row)
    log.info("%s knn: %s", row.name, " ".join(f"{k} {pct(kn.get(k))}" for k in METRICS))
    return {"dpdiff": dp, "knn": kn}


def write_results(summary: dict, folder: Path, stem: str = "geometry") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{stem}.json", summary)
    p = summary["protocol"]
    h, w = p["image_hw"]
    what = (
        f"defects under {100 * p['max_defect_fraction']:g} % of the image"
        if p.get("max_defect_fraction") is not None
        else f"{p.get('source', 'real data')}"
    )
    lines = [
        f"# Geometry: {w}x{h} (width x height) images, {what}, {p['categories']} categories",
        "",
        f"Evaluated at the images' own aspect ratio ({p['eval_hw'][1]}x{p['eval_hw'][0]}); training "
        f"{p['budget']}; {p['torch_threads']} torch thread(s). images/s and MP/s: the scoring pass (decoding, "
        "tiles, backbone, scoring, stitching)."
        + (
            f" Test images of other sizes left out (another camera): {p['test_images_left_out']}."
            if p.get("test_images_left_out")
            else ""
        ),
        "",
        "| row | method | steps | inputs/image | " + " | ".join(METRICS) + " | img/s | MP/s |",
        "|---|---|---:|---:|" + "---:|" * (len(METRICS) + 2),
    ]
    order = {r.name: i for i, r in enumerate(ROWS)}
    for name, r in sorted(summary["rows"].items(), key=lambda kv: order.get(kv[0], len(order))):
        for method in ("dpdiff", "knn"):
            m = r[method]
            pr = m.get("protocol", {})
            steps = pr.get("train_steps", "") if method == "dpdiff" else "\u2014"
            lines.append(
                f"| {name} | {method} | {steps} | {pr.get('inputs_per_image', float('nan')):.0f} | "
                + " | ".join(pct(m.get(k)) for k in METRICS)
                + f" | {m['images_per_s']:.2f} | {m['megapixels_per_s']:.2f} |"
            )
    atomic_write_text(folder / f"{stem}.md", "\n".join(lines) + "\n")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(ROOT / "runs" / "geometry"))
    ap.add_argument("--results", default=None, help="folder of geometry.{json,md} (default benchmarks/results)")
    ap.add_argument(
        "--rows", default="all", help="comma-separated row slugs (" + ", ".join(slug(r.name) for r in ROWS) + ") or all"
    )
    ap.add_argument("--image-hw", default="384,1024", help="height,width of the synthetic images")
    ap.add_argument("--max-defect-fraction", type=float, default=0.005)
    ap.add_argument("--categories", type=int, default=10)
    ap.add_argument("--train", type=int, default=32, help="normal training images per category")
    ap.add_argument("--test-good", type=int, default=8)
    ap.add_argument("--test-defect", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of every row (ignored with --minutes)")
    ap.add_argument("--minutes", type=float, default=None, help="equal training minutes per row instead of steps")
    ap.add_argument("--eval-long-side", type=int, default=512)
    ap.add_argument("--knn-every", type=int, default=2, help="kNN bank: every k-th training image")
    ap.add_argument("--knn-tokens", type=int, default=50_000, help="kNN bank: at most this many tokens")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 categories, 192x512 images, 20 steps")
    ap.add_argument(
        "--datasets", default="synthetic", help="comma-separated: synthetic, bsdata (the converted real set)"
    )
    ap.add_argument(
        "--real-data",
        default=str(ROOT / "runs" / "real_data"),
        help="folder of the converted public sets (benchmarks/real_datasets.py), one sub-folder each",
    )
    return ap.parse_args()


def _real_dataset(name: str, args, out: Path) -> tuple[Path, list[str]]:
    """(root, categories) of a converted real set (as ``benchmarks/accuracy.py`` finds them); ``--quick``: a few
    of its images symlinked into ``out`` (``--train`` normal training images, ``--test-good`` /
    ``--test-defect`` test images per category), so the smoke run stays small."""
    root = Path(args.real_data) / name
    if not (root / "done.json").is_file():
        raise SystemExit(
            f"{name} not converted at {root}: run `python benchmarks/real_datasets.py {name} --output {root}`"
        )
    cats = REAL_SETS[name]
    if not args.quick:
        return root, cats
    sub = out / "data"
    for cat in cats:
        for split_dir in sorted((root / cat).glob("*/*")):
            if not split_dir.is_dir() or split_dir.parent.name not in ("train", "test"):
                continue
            n = (
                args.train
                if split_dir.parent.name == "train"
                else (args.test_good if split_dir.name == "good" else args.test_defect)
            )
            dest = sub / cat / split_dir.parent.name / split_dir.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in sorted(p for p in split_dir.iterdir() if p.is_file())[:n]:
                if not (dest / f.name).exists():
                    (dest / f.name).symlink_to(f.resolve())
        gt = sub / cat / "ground_truth"
        if not gt.exists():
            gt.symlink_to((root / cat / "ground_truth").resolve())
    return sub, cats


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.categories, args.train, args.test_good, args.test_defect = 2, 4, 2, 4
        args.image_hw, args.minutes, args.steps = "192,512", None, 20
        args.knn_tokens = min(args.knn_tokens, 5000)
    by_slug = {slug(r.name): r for r in ROWS}
    chosen = list(by_slug) if args.rows == "all" else [s.strip() for s in args.rows.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in by_slug]
    if unknown:
        raise SystemExit(f"--rows: unknown rows {unknown}; choose from {', '.join(by_slug)}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d != "synthetic" and d not in REAL_SETS]
    if bad:
        raise SystemExit(f"--datasets: unknown {bad}; choose from synthetic, {', '.join(REAL_SETS)}")
    out = Path(args.output)
    results = Path(args.results) if args.results else (out / "summary" if args.quick else RESULTS)
    for name in datasets:
        rows = [s for s in chosen if by_slug[s].name in DATASET_ROWS[name]]
        if rows:
            run_dataset(name, rows, by_slug, args, out, results)
    return 0


def run_dataset(name: str, chosen: list[str], by_slug: dict, args, out: Path, results: Path) -> None:
    """Every chosen row on one data set; results ``geometry.{json,md}`` (synthetic) or ``geometry_<name>``."""
    stem = "geometry" if name == "synthetic" else f"geometry_{name}"
    if name != "synthetic":
        out = out / name
        data, categories = _real_dataset(name, args, out)
    else:
        data = out / "data"
        h, w = (int(v) for v in args.image_hw.split(","))
        categories = ensure_synthetic_dataset(
            data,
            args.categories,
            train_per_category=args.train,
            test_good_per_category=args.test_good,
            test_defect_per_category=args.test_defect,
            image_size=(h, w),
            max_defect_fraction=args.max_defect_fraction,
            seed=0,
        )
    preset = load_config(PRESET)
    test_samples = sorted(load_samples("mvtec", data, categories, "test"), key=lambda s: str(s.image_path))
    test_samples, left_out = _one_camera(test_samples)
    ev = Evaluation(test_samples, args.eval_long_side)
    torch.manual_seed(0)
    previous = results / f"{stem}.json"
    summary = json.loads(previous.read_text()) if previous.exists() and not args.quick else {"rows": {}}
    summary["protocol"] = {
        "data": str(data),
        "dataset": name,
        "image_hw": list(ev.image_hw),
        "max_defect_fraction": args.max_defect_fraction if name == "synthetic" else None,
        "source": None if name == "synthetic" else "BSData ball screws (CC BY-SA 4.0), pitting",
        "categories": len(categories),
        "train_images": len(load_samples("mvtec", data, categories, "train")),
        "test_images": len(test_samples),
        "test_images_left_out": left_out,
        "eval_hw": list(ev.hw),
        "budget": f"{args.minutes:g} min per row" if args.minutes else f"{args.steps} steps per row",
        "preset": PRESET,
        "torch_threads": torch.get_num_threads(),
    }
    for s in chosen:
        row = by_slug[s]
        summary["rows"][row.name] = run_row(row, args, preset, data, categories, ev, out)
        write_results(summary, results, stem)  # after every row: a stopped run keeps what it finished
        log.info("wrote %s", results / f"{stem}.md")
    print((results / f"{stem}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
