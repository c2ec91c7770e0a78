"""The accuracy harness shared by ``accuracy.py`` and ``token_grid.py``: :class:`Bench` is one dataset (features
from the feature cache, one training per model variant, one JSON per scored row, so an interrupted run continues
where it stopped); :data:`PRESET` is the shipped preset it trains, :data:`COLUMNS` the metric columns of its tables.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from _common import INFERENCE_KEYS, pct, slug

from dpdiff.config import Config
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.readers import load_samples
from dpdiff.experiments.compare import build_knn, dpdiff_score_features, knn_score_features, masks_and_labels
from dpdiff.features import (
    build_backbone_from_config,
    feature_cache_key,
    resolve_device,
    tokens_from_maps,
)
from dpdiff.features.cache import FeatureCache
from dpdiff.inference.detector import Detector
from dpdiff.metrics import METRIC_NAMES, add_mean_row, compute_metrics
from dpdiff.model.checkpoint import config_differences, load_model, read_run_config
from dpdiff.scoring.image_gaussian import build_image_gaussian, mean_tokens
from dpdiff.scoring.scorer import postprocess_maps
from dpdiff.scoring.token_bank import build_token_bank
from dpdiff.utils.io import atomic_write_json
from dpdiff.workflows.train import train

log = logging.getLogger("accuracy")
PRESET = "lite0_cpu"  # packaged preset (dpdiff/configs/lite0_cpu.yaml)
#: In a run folder: the inference settings its token bank and image Gaussian were built with, and the seconds.
SCORING_FILES_MEMO = "scoring_files_settings.json"
COLUMNS = list(METRIC_NAMES) + ["mAD"]


class Bench:
    """One dataset: features, trainings and scored rows, all cached under ``out``."""

    def __init__(self, name: str, root: Path, categories: list[str], cfg: Config, out: Path, steps: int | None):
        self.name, self.root, self.categories, self.out = name, root, categories, out
        self.cfg = copy.deepcopy(cfg)
        self.cfg.data.root, self.cfg.data.categories, self.cfg.data.format = str(root), categories, "mvtec"
        if steps:
            self.cfg.train.steps = steps
        self.device = resolve_device("cpu")
        self.train_samples = load_samples("mvtec", root, categories, "train")
        self.test_samples = sorted(load_samples("mvtec", root, categories, "test"), key=lambda s: str(s.image_path))
        self.cache = FeatureCache(out.parent / "features")  # shared by the datasets of one run
        self._feature_sets: dict[str, tuple] = {}
        self.backbone, self.train_feats, self.test_feats = self.features_for(self.cfg)
        size = self.cfg.backbone.image_size
        ds = ImageDataset(self.test_samples, size, self.backbone.mean, self.backbone.std)
        self.masks, self.labels = masks_and_labels(ds)
        self.mask_known = np.array([s.mask_known for s in self.test_samples], dtype=bool)
        self.cats = np.array([s.category for s in self.test_samples])
        self.backbone_s_per_image = self._time_backbone(ds)

    def features_for(self, cfg: Config) -> tuple:
        """(backbone, train features, test features) of ``cfg``'s backbone section, from the feature cache; a
        training row that changes the backbone (layers, intensity normalisation ...) trains and scores on its own
        features."""
        key = feature_cache_key(cfg)
        name = json.dumps(key | {"image_size": cfg.backbone.image_size}, sort_keys=True)
        if name not in self._feature_sets:
            backbone = build_backbone_from_config(cfg)
            size, bs = cfg.backbone.image_size, cfg.train.feature_batch_size
            train = self.cache.get(backbone, key, self.train_samples, size, bs, self.device)
            test = self.cache.get(backbone, key, self.test_samples, size, bs, self.device)
            self._feature_sets[name] = (backbone, train, test)
        return self._feature_sets[name]

    def _time_backbone(self, ds: ImageDataset, n: int = 32) -> float:
        """Seconds per image of image loading + backbone (batch of 16), median of 3 rounds."""
        memo = self.out / "backbone_time.json"
        if memo.exists():
            return float(json.loads(memo.read_text())["s_per_image"])
        batch = torch.stack([ds[i]["image"] for i in range(min(n, len(ds)))])
        times = []
        with torch.inference_mode():
            for _ in range(3):
                t0 = time.perf_counter()
                for i in range(0, batch.shape[0], 16):
                    self.backbone(batch[i : i + 16])
                times.append((time.perf_counter() - t0) / batch.shape[0])
        s = float(np.median(times))
        atomic_write_json(memo, {"s_per_image": s, "images": int(batch.shape[0])})
        return s

    # ------------------------------------------------------------------ training
    def trained(self, variant: str, overrides: dict) -> Path:
        cfg = self.cfg.override(overrides) if overrides else self.cfg
        run_dir = self.out / "runs" / slug(variant)
        done = False
        if (run_dir / "config.json").exists():
            stored, payload = read_run_config(run_dir)
            changed = config_differences(stored.to_dict(), cfg.to_dict())  # the keys a resume may not change
            if changed:  # a changed preset must not reuse (or resume) weights trained with the old one
                diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
                raise SystemExit(
                    f"{run_dir} was trained with other settings ({diff}); move it away or pass another --output"
                )
            done = int(payload.get("step", -1)) >= cfg.train.steps
        if not done:
            resume = (run_dir / "train_state.pt").exists()
            log.info(
                "[%s] training %s (%d steps)%s", self.name, variant, cfg.train.steps, " (resumed)" if resume else ""
            )
            t0 = time.perf_counter()
            train_feats = self.features_for(cfg)[1]
            train(cfg, run_dir, overwrite=not resume, resume=resume, features=train_feats, samples=self.train_samples)
            log.info("[%s] trained %s in %.0f s", self.name, variant, time.perf_counter() - t0)
        self.scoring_files(run_dir, cfg)
        return run_dir

    def scoring_files(self, run_dir: Path, cfg: Config) -> None:
        """The token bank and the image Gaussian the inference settings of ``cfg`` need, built as ``dpdiff train``
        builds them but with ``cfg``'s inference settings (their z-score statistics depend on them): a run trained
        under another preset is scored with this one's. Rebuilt when the settings they were made with changed."""
        inf = cfg.inference
        if not (inf.knn_weight > 0 or inf.image_gaussian_weight > 0):
            return
        memo = run_dir / SCORING_FILES_MEMO
        settings = {k: getattr(inf, k) for k in INFERENCE_KEYS}
        if memo.is_file() and json.loads(memo.read_text()).get("settings") == settings:
            return
        t0 = time.perf_counter()
        feats = self.features_for(cfg)[1]
        model, run_cfg, _ = load_model(run_dir, self.device)
        scoring = run_cfg.override({f"inference.{k}": v for k, v in dataclasses.asdict(inf).items()})
        detector = self.detector(run_dir, self.features_for(cfg)[0], model, scoring)
        if inf.knn_weight > 0:
            detector.token_bank = build_token_bank(detector, feats, seed=cfg.train.seed)
            detector.token_bank.save(run_dir)
        if inf.image_gaussian_weight > 0:  # after the bank: its image scores include the bank's term
            build_image_gaussian(detector, feats).save(run_dir)
        # build_s: what `dpdiff train` adds after the last step (time_to_model.py adds it to the training time)
        atomic_write_json(memo, {"settings": settings, "build_s": time.perf_counter() - t0})

    # ------------------------------------------------------------------ scoring
    def detector(self, run_dir: Path, backbone, model, cfg: Config, runtime: dict | None = None) -> Detector:
        """The run's Detector on ``backbone`` with ``cfg`` (``runtime``: Detector options); it reads the run's token
        bank and image Gaussian from ``run_dir`` when the inference settings use them."""
        detector = Detector(backbone, model, cfg, self.device, **(runtime or {}))
        detector.run_dir = run_dir
        return detector

    def _metrics(self, maps: np.ndarray, scores: np.ndarray) -> dict:
        per_cat = {}
        for c in self.categories:
            sel = self.cats == c
            per_cat[c] = compute_metrics(
                scores[sel], self.labels[sel], maps[sel], self.masks[sel], mask_known=self.mask_known[sel]
            )
        mean = add_mean_row(per_cat)["mean"]
        # per category as well: a mean can hide one category below chance (the held-back labels-only failure)
        mean["per_category_I-AUROC"] = {c: m["I-AUROC"] for c, m in per_cat.items()}
        return mean

    def cached(self, name: str, compute, settings: dict | None = None) -> dict:
        """The row's metrics from ``rows/<name>.json``, else ``compute()`` saved there. ``settings`` (the
        inference settings a row was scored with): a stored row made with other settings is recomputed, so a
        changed preset never reuses the old preset's numbers."""
        path = self.out / "rows" / f"{slug(name)}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            made_with = stored.get("settings", stored["metrics"].get("inference"))
            if settings is None or made_with == settings:
                return stored["metrics"]
            log.info("[%s] %s: stored with %s, now %s: scoring again", self.name, name, made_with, settings)
        metrics = compute()
        atomic_write_json(path, {"name": name, "metrics": metrics, "settings": settings})
        log.info(
            "[%s] %s: I-AUROC %s P-AUROC %s mAD %s (%.2f img/s)",
            self.name,
            name,
            *(pct(metrics.get(k)) for k in ("I-AUROC", "P-AUROC", "mAD")),
            metrics.get("images_per_s", float("nan")),
        )
        return metrics

    @staticmethod
    def weights_digest(run_dir: Path) -> str:
        """sha256 (first 16 hex digits) of the run's inference weights: part of a scored row's cache key."""
        return hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()[:16]

    def dpdiff_row(self, run_dir: Path, inference: dict, runtime: dict | None = None) -> dict:
        """The run scored with ``inference`` settings; ``runtime``: Detector options (e.g. ``autocast_dtype``),
        applied to the DiT (the backbone features come from the float32 cache)."""
        model, run_cfg, payload = load_model(run_dir, self.device)
        cfg = run_cfg.override({f"inference.{k}": v for k, v in inference.items()})
        backbone, _, test_feats = self.features_for(run_cfg)
        detector = self.detector(run_dir, backbone, model, cfg, runtime)
        t0 = time.perf_counter()
        maps, scores = dpdiff_score_features(detector, test_feats)
        secs = time.perf_counter() - t0
        m = self._metrics(maps.numpy(), scores.numpy())
        n = len(self.test_samples)
        m["images_per_s"] = n / (secs + n * self.backbone_s_per_image)
        m["scoring_s_per_image"] = secs / n
        m["train_s"] = float(payload.get("train_s", float("nan")))
        m["inference"] = {k: v for k, v in cfg.to_dict()["inference"].items() if k in INFERENCE_KEYS}
        return m

    def end_to_end_row(self, run_dir: Path, inference: dict, runtime: dict | None = None) -> dict:
        """The run scored from the image files, as users run it (``Detector.score_images``: decoding, resizing,
        backbone, DiT, post-processing), with Detector options ``runtime`` (e.g. ``autocast_dtype`` for the
        backbone AND the DiT); ``images_per_s`` is measured end to end here."""
        model, run_cfg, _ = load_model(run_dir, self.device)
        cfg = run_cfg.override({f"inference.{k}": v for k, v in inference.items()})
        backbone = self.features_for(run_cfg)[0]
        detector = self.detector(run_dir, backbone, model, cfg, runtime)
        paths = [s.image_path for s in self.test_samples]
        detector.score_images(paths[:16], batch_size=16)  # warm-up
        t0 = time.perf_counter()
        maps, scores = detector.score_images(paths, batch_size=16)  # float32 numpy arrays
        secs = time.perf_counter() - t0
        m = self._metrics(maps, scores)
        m["images_per_s"] = len(paths) / secs
        return m

    def swap_row(self, run_dir: Path, inference: dict) -> dict:
        """Prototype-leakage check: each test image is reconstructed with the MEAN prototypes of its category's
        training images instead of its own (Eq. 10 computes them from the test image itself, so a defect could
        leak into the condition). Same inference otherwise; a diagnostic, not a deployable mode (it needs the
        category at test time)."""
        model, run_cfg, _ = load_model(run_dir, self.device)
        cfg = run_cfg.override({f"inference.{k}": v for k, v in inference.items()})
        detector = self.detector(run_dir, self.backbone, model, cfg)
        train_cats = np.array([s.category for s in self.train_samples])
        own = model.prototypes
        maps = np.zeros((len(self.test_samples), *self.masks.shape[1:]), dtype=np.float32)
        scores = np.zeros(len(self.test_samples), dtype=np.float32)
        for c in self.categories:
            idx = np.flatnonzero(train_cats == c)
            with torch.inference_mode():
                parts = [
                    own(model.standardize(tokens_from_maps(torch.as_tensor(self.train_feats[idx[i : i + 64]]).float())))
                    for i in range(0, len(idx), 64)
                ]
            mean_protos = [
                None if parts[0][j] is None else torch.cat([p[j] for p in parts]).mean(0, keepdim=True) for j in (0, 1)
            ]
            model.prototypes = lambda x0, mp=mean_protos: tuple(
                None if p is None else p.expand(x0.shape[0], -1, -1) for p in mp
            )
            sel = np.flatnonzero(self.cats == c)
            m_c, s_c = dpdiff_score_features(detector, torch.as_tensor(self.test_feats[sel]))
            maps[sel], scores[sel] = m_c.numpy(), s_c.numpy()
            model.prototypes = own
        m = self._metrics(maps, scores)
        m["images_per_s"] = float("nan")  # a diagnostic: not timed
        return m

    def hybrid_row(self, run_dir: Path, inference: dict, weight: float = 1.0) -> dict:
        """Beyond the paper (issue #21): ``inference.knn_weight`` as the library ships it
        (:mod:`dpdiff.scoring.token_bank`): the z-scored reconstruction error plus ``weight`` times the z-scored
        distance to a coreset bank of the even-numbered training images' tokens (statistics on odd-numbered ones),
        token by token. ``parts``: the bank's distance alone."""
        model, run_cfg, _ = load_model(run_dir, self.device)
        cfg = run_cfg.override({f"inference.{k}": v for k, v in inference.items()} | {"inference.knn_weight": weight})
        detector = self.detector(run_dir, self.backbone, model, cfg)
        detector.token_bank = build_token_bank(detector, self.train_feats, seed=cfg.train.seed)
        t0 = time.perf_counter()
        maps, scores = dpdiff_score_features(detector, self.test_feats)
        secs = time.perf_counter() - t0
        m = self._metrics(maps.numpy(), scores.numpy())
        n_test = len(self.test_samples)
        m["images_per_s"] = n_test / (secs + n_test * self.backbone_s_per_image)
        m["bank_tokens"] = int(detector.token_bank.tokens.shape[0])
        m["normalisation"] = detector.token_bank.stats.tolist()
        with torch.inference_mode():
            dist = torch.cat(
                [
                    detector.token_bank.distances(
                        model.standardize(tokens_from_maps(torch.as_tensor(self.test_feats[i : i + 32]).float()))
                    ).view(-1, *model.grid_size)
                    for i in range(0, n_test, 32)
                ]
            )
        alone_maps, alone_scores = postprocess_maps(dist, cfg)
        m["parts"] = {
            "bank alone": self._metrics(alone_maps.numpy(), alone_scores.numpy()) | {"images_per_s": float("nan")}
        }
        return m

    def _mean_tokens(self, feats) -> np.ndarray:
        """(N, C): each image's backbone tokens averaged over the grid (the image Gaussian's input)."""
        return mean_tokens(feats).numpy()

    def global_row(self, run_dir: Path, inference: dict, calibration_images: int = 128) -> dict:
        """Beyond the paper (issue #21, dark defects): an image-level Gaussian (Rippel et al. 2020) on each image's
        mean backbone token, Ledoit-Wolf covariance fitted on the even-numbered training images; its Mahalanobis
        distance z-scored on the odd-numbered ones and added to the z-scored DPDiff-AD image score (same
        statistics for DPDiff-AD). The maps (pixel metrics) are DPDiff-AD's. ``parts``: the global score alone
        (image metrics only)."""
        from sklearn.covariance import LedoitWolf

        model, run_cfg, _ = load_model(run_dir, self.device)
        own = {f"inference.{k}": v for k, v in inference.items()} | {"inference.image_gaussian_weight": 0.0}
        cfg = run_cfg.override(own)  # DPDiff-AD's score without the preset's own image Gaussian (no double count)
        detector = self.detector(run_dir, self.backbone, model, cfg)
        n = self.train_feats.shape[0]
        even, odd = np.arange(0, n, 2), np.arange(1, n, 2)[:calibration_images]
        gauss = LedoitWolf().fit(self._mean_tokens(self.train_feats[even]))
        g_cal = np.sqrt(gauss.mahalanobis(self._mean_tokens(self.train_feats[odd])))
        d_cal = dpdiff_score_features(detector, torch.as_tensor(self.train_feats[odd]))[1].numpy()
        maps, d_test = (x.numpy() for x in dpdiff_score_features(detector, self.test_feats))
        g_test = np.sqrt(gauss.mahalanobis(self._mean_tokens(self.test_feats)))
        combined = (d_test - d_cal.mean()) / d_cal.std() + (g_test - g_cal.mean()) / g_cal.std()
        m = self._metrics(maps, combined)
        m["images_per_s"] = float("nan")  # a diagnostic: not timed
        alone = self._metrics(maps, g_test)
        alone.update({k: None for k in ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO", "mAD")})
        m["parts"] = {"global alone": alone | {"images_per_s": float("nan")}}
        return m

    def intensity_diagnostic(self, run_dir: Path, inference: dict) -> dict:
        """Does the image score follow the image's brightness (issue #21: dark defects scored as normal)? Per
        category: Spearman's rho between the mean grey level of each test image and its DPDiff-AD / coreset-kNN
        image score (over all test images and over the normal ones), and the I-AUROC of darkness alone."""
        from PIL import Image
        from scipy.stats import spearmanr
        from sklearn.metrics import roc_auc_score

        model, run_cfg, _ = load_model(run_dir, self.device)
        cfg = run_cfg.override({f"inference.{k}": v for k, v in inference.items()})
        detector = self.detector(run_dir, self.backbone, model, cfg)
        dp = dpdiff_score_features(detector, self.test_feats)[1].numpy()
        bank = build_knn(self.train_feats[np.arange(0, self.train_feats.shape[0], 2)], 0.1, standardize=True)
        kn = knn_score_features(bank, self.test_feats, self.cfg)[1].numpy()
        bright = np.array(
            [np.asarray(Image.open(s.image_path).convert("L"), np.float32).mean() for s in self.test_samples]
        )
        out = {}
        for c in self.categories:
            sel = self.cats == c
            good = sel & (self.labels == 0)
            out[c] = {
                "darkness_I-AUROC": float(roc_auc_score(self.labels[sel], -bright[sel])),
                "mean_grey_normal": float(bright[good].mean()),
                "mean_grey_defective": float(bright[sel & (self.labels == 1)].mean()),
                **{
                    f"rho_{name}_{subset}": float(spearmanr(bright[m], score[m]).statistic)
                    for name, score in (("dpdiff", dp), ("knn_coreset", kn))
                    for subset, m in (("all", sel), ("normal", good))
                },
                "dpdiff_I-AUROC": float(roc_auc_score(self.labels[sel], dp[sel])),
                "knn_coreset_I-AUROC": float(roc_auc_score(self.labels[sel], kn[sel])),
            }
        return out

    def knn_row(self, standardize: bool, coreset: float = 1.0, train_every: int = 1) -> dict:
        """kNN memory bank on the tokens of every ``train_every``-th training image (1: all), greedy coreset."""
        bank = build_knn(self.train_feats[::train_every], coreset, standardize=standardize)
        t0 = time.perf_counter()
        maps, scores = knn_score_features(bank, self.test_feats, self.cfg)
        secs = time.perf_counter() - t0
        m = self._metrics(maps.numpy(), scores.numpy())
        n = len(self.test_samples)
        m["images_per_s"] = n / (secs + n * self.backbone_s_per_image)
        m["scoring_s_per_image"] = secs / n
        m["bank_tokens"] = int(bank.bank.shape[0])
        m["coreset"] = coreset
        return m
