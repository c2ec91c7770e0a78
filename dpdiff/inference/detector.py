"""The PyTorch runtime: :class:`Detector` (backbone + :class:`~dpdiff.scoring.scorer.Scorer` on DPDiffAD).

Evaluation, prediction, the report's probe images, the kNN comparison and the FPS benchmark (paper Table 4)
all score images with the pieces of :class:`Detector`, so what is timed and reported is what users run:

    images --preprocess--> (B,3,H,W) --backbone--> tokens --DDIM reconstruction error (Eq. 20-22)-->
    token maps (B,h,w) --upsample, smooth, image score (Eq. 23-24)--> pixel maps (B,Hm,Wm), scores (B,)

Inputs, decoding, preprocessing, batching, thresholds and decisions are the shared
:class:`~dpdiff.inference.predictor.Predictor`'s; this runtime runs preprocessed batches: the backbone
(:meth:`Detector.features`) and the scoring protocol (:meth:`Detector.scorer`), with the runtime's options
(rows per DiT call, autocast, ``torch.compile``). ``(Hm, Wm)`` is :func:`dpdiff.scoring.scorer.map_size`: the
evaluation resolution, by default the input size ``(H, W)``; the image geometry (``data.resize``, ``data.roi``) is
:class:`dpdiff.data.geometry.ImageGeometry`'s.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dpdiff.backbones.base import FeatureExtractor
from dpdiff.config import Config, InferenceConfig
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.geometry import ImageGeometry
from dpdiff.data.images import load_image_rgb
from dpdiff.data.types import Sample
from dpdiff.features import build_backbone_from_config, resolve_device
from dpdiff.inference.calibration import read_calibration, scoring_fingerprint
from dpdiff.inference.predictor import EXPORT_SUFFIXES, ImageInput, Preprocessing, image_score_rule, score_tiled
from dpdiff.inference.predictor import Detector as DetectorBase
from dpdiff.model.checkpoint import load_model
from dpdiff.model.dpdiff_ad import DPDiffAD
from dpdiff.scoring.image_gaussian import ImageGaussian
from dpdiff.scoring.scorer import Scorer, map_size, resolve_autocast_dtype
from dpdiff.scoring.token_bank import TokenBank
from dpdiff.utils.errors import CheckpointError, ConfigKeyError
from dpdiff.utils.progress import progress
from dpdiff.utils.run_files import CALIBRATION_FILE
from dpdiff.utils.sizes import as_hw, hw_json

#: Rows (image x noise draw) per DiT call on a CPU. Measured (benchmarks/speed.py, Lite0 @256, DiT
#: 128x4, batch 16, 4 draws): one call over all 64 rows 159 ms/img, 16-row calls 118 ms/img - the
#: attention matrices of 64 rows no longer fit the caches. GPUs take everything in one call.
CPU_MAX_ROWS = 16


def inference_row_cap(device: torch.device) -> int | None:
    """Rows per DiT call (the scorer's ``max_rows``) on ``device``: results are identical either way."""
    return CPU_MAX_ROWS if torch.device(device).type == "cpu" else None


def scoring_settings(cfg: Config) -> dict:
    """The settings a score depends on besides the weights: the inference options (but the batch size), the
    map size and the backbone (name, layers, input size, stride; not where its weights file lives)."""
    inference = {k: v for k, v in dataclasses.asdict(cfg.inference).items() if k != "batch_size"}
    for key in ("knn_weight", "image_gaussian_weight"):  # only when on: fingerprints made before them stay valid
        if not inference.get(key):
            inference.pop(key, None)
    b = cfg.backbone
    geometry = ImageGeometry.from_config(cfg)
    size = hw_json(geometry.size)  # a square one as one int: fingerprints made before [H, W] existed stay valid
    backbone = {"name": b.name, "layers": b.layers, "image_size": size, "feature_stride": b.feature_stride}
    if b.normalize_intensity:  # only when on: fingerprints made before the option stay valid
        backbone["normalize_intensity"] = True
    settings = {"inference": inference, "map_size": hw_json(geometry.map_hw), "backbone": backbone}
    if not geometry.is_plain:  # only then: the letterbox, the region of interest and tiles change every map
        described: dict[str, Any] = {
            "resize": geometry.resize,
            "roi": None if geometry.roi is None else list(geometry.roi),
        }
        if geometry.tiling is not None:
            described["tiling"] = geometry.tiling.to_config()
        settings["geometry"] = described
    return settings


class Detector(DetectorBase):
    """Backbone + DPDiffAD scored by the :class:`~dpdiff.scoring.scorer.Scorer`: images -> (pixel maps
    (B,R,R), image scores (B,)).

    The public ``dpdiff.Detector``: :meth:`load` a run folder (or a ``dpdiff export`` ``.onnx``), then
    ``predict`` images and ``calibrate`` thresholds (:class:`~dpdiff.inference.predictor.Predictor`, whose
    docstring is the contract of :class:`~dpdiff.inference.predictor.Prediction`).

    The runtime's options: ``autocast_dtype`` (``torch.bfloat16``/``torch.float16`` or "bf16"/"fp16"; default
    off) runs the backbone and the DiT under ``torch.autocast``; ``compile`` uses a ``torch.compile``d DiT. Both
    are speed options (``dpdiff benchmark --dtype``) that change results at rounding level only; post-processing
    stays float32. On a CPU the DiT runs at most :data:`CPU_MAX_ROWS` rows per call.
    """

    @classmethod
    def load(cls, run_dir: str | os.PathLike, weights: str | None = None, device: str = "auto"):
        """The detector of a run folder (``dpdiff train`` output) with its thresholds (``RUN/calibration.json``
        when present and made for these weights and settings); ``weights``: the backbone checkpoint, when it is
        not where the run's config says. An exported model (``dpdiff export``: ``.onnx``, or OpenVINO's ``.xml``)
        loads its runtime's detector instead (:data:`~dpdiff.inference.predictor.RUNTIMES`; same
        ``predict``/``calibrate``)."""
        path = Path(run_dir)
        if path.suffix.lower() in EXPORT_SUFFIXES:
            return DetectorBase.load(path, device=device)
        detector = load_detector(path, device, weights=weights)
        detector.calibration_path = path / CALIBRATION_FILE
        detector.calibration = read_calibration(detector.calibration_path, detector.fingerprint())
        return detector

    def fingerprint(self) -> dict:
        """What the scores depend on (:func:`~dpdiff.inference.calibration.scoring_fingerprint`): the DPDiffAD
        weights and the scoring settings; thresholds are used only with a matching fingerprint."""
        return scoring_fingerprint(self.model.state_dict(), scoring_settings(self.cfg))

    def __init__(
        self,
        backbone: FeatureExtractor,
        model: DPDiffAD,
        cfg: Config,
        device: torch.device | str,
        *,
        autocast_dtype: torch.dtype | str | None = None,
        compile: bool = False,
    ):
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.autocast_dtype = resolve_autocast_dtype(self.device, autocast_dtype)  # an unsupported pair raises
        self.compile = bool(compile)
        self.run_dir: Path | None = None  # set by load_detector: where the token bank (knn_weight) is read
        self.token_bank: TokenBank | None = None
        self.gaussian: ImageGaussian | None = None  # inference.image_gaussian_weight, read from run_dir

    @property
    def map_size(self) -> tuple[int, int]:
        return map_size(self.cfg)

    @property
    def preprocessing(self) -> Preprocessing:
        """The image geometry of the config (input size, resize mode, region of interest) and the backbone's
        normalisation statistics."""
        return Preprocessing(ImageGeometry.from_config(self.cfg), tuple(self.backbone.mean), tuple(self.backbone.std))

    # ------------------------------------------------------------------------------------------ the steps
    def _amp(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Backbone feature maps (B, C, h, w) of a normalised batch (B, 3, S, S) (:meth:`preprocess`)."""
        with self._amp():
            return self.backbone(torch.as_tensor(batch).to(self.device))

    def scorer(self, inference: InferenceConfig | None = None) -> Scorer:
        """The :class:`~dpdiff.scoring.scorer.Scorer` of the model with the config's inference settings
        (``inference``: other ones), run as this runtime runs it (:func:`inference_row_cap` rows per DiT call,
        the detector's autocast and compile options), with the run's token bank when ``knn_weight`` > 0 and its
        image Gaussian when ``image_gaussian_weight`` > 0.
        ``scorer.score_features(detector.features(batch), scorer.noise_source(generator))`` is what
        ``score_images`` computes for one batch."""
        inf = inference or self.cfg.inference
        return Scorer.from_config(
            self.model,
            self.cfg,
            inf,
            bank=self.bank() if inf.knn_weight else None,
            image_gaussian=self.image_gaussian() if inf.image_gaussian_weight else None,
            max_rows=inference_row_cap(self.device),
            autocast_dtype=self.autocast_dtype,
            compile=self.compile,
        )

    def bank(self) -> TokenBank:
        """The run's token bank (``inference.knn_weight``), read from the run folder on first use."""
        if self.token_bank is None:
            if self.run_dir is None:
                raise CheckpointError(
                    "inference.knn_weight > 0 needs the run's token bank: load the detector from its run folder"
                )
            self.token_bank = TokenBank.load(self.run_dir, self.device)
        return self.token_bank

    def image_gaussian(self) -> ImageGaussian:
        """The run's image Gaussian (``inference.image_gaussian_weight``), read from the run folder on first use."""
        if self.gaussian is None:
            if self.run_dir is None:
                raise CheckpointError(
                    "inference.image_gaussian_weight > 0 needs the run's image Gaussian: load the detector from its "
                    "run folder"
                )
            self.gaussian = ImageGaussian.load(self.run_dir, self.device)
        return self.gaussian

    def _run_batches(self, batches: Iterable) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _scored_batches(self, batches)


def _scored_batches(
    detector: Detector,
    batches: Iterable,
    *,
    features: bool = False,
    seed: int | None = None,
    inference: InferenceConfig | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(maps (B, R, R), scores (B,)) float32 numpy arrays of each normalised image batch (or of backbone maps
    with ``features=True``), in order. One generator seeded with ``seed`` (default ``inference.seed``) is
    consumed in batch order (the noise of ``inference.common_noise=false``), so the result depends only on the
    inputs and their batching; ``inference``: other inference options than the detector's."""
    inf = inference or detector.cfg.inference
    generator = torch.Generator(detector.device).manual_seed(int(inf.seed if seed is None else seed))
    scorer = detector.scorer(inf)
    noise = scorer.noise_source(generator)
    for batch in batches:
        with torch.inference_mode():
            feats = torch.as_tensor(batch) if features else detector.features(batch)
            maps, scores = scorer.score_features(feats, noise)
            out = maps.float().cpu().numpy(), scores.float().cpu().numpy()
        yield out


# ---------------------------------------------------------------------------------------------- loading, datasets
def apply_test_overrides(cfg: Config, overrides: dict | None) -> Config:
    """``{"noise_step": 50, "evaluation.resolution": 256, ...}``: bare keys are inference options;
    dotted keys may change the ``inference``, ``evaluation`` and ``data`` sections (never the model)."""
    dotted = {}
    for key, value in (overrides or {}).items():
        section, dot, name = key.partition(".")
        if not dot:
            section, name = "inference", key
        if section not in ("inference", "evaluation", "data"):
            raise ConfigKeyError(
                f"test option {key!r}: only inference.*, evaluation.* and data.* can change at test time"
            )
        dotted[f"{section}.{name}"] = value
    return cfg.override(dotted) if dotted else cfg


def load_detector(run_dir: Path, device: str = "auto", weights: str | None = None) -> Detector:
    """The detector of a run folder (``dpdiff train`` output); ``weights``: the backbone checkpoint, when it
    is not where the run's config says."""
    dev = resolve_device(device)
    model, cfg, _ = load_model(run_dir, dev)
    if weights is not None:
        cfg.backbone.weights = weights
    backbone = build_backbone_from_config(cfg)
    grid = tuple(backbone.grid_size(as_hw(cfg.backbone.image_size)))
    if backbone.out_channels != model.in_dim or grid != tuple(model.grid_size):
        raise CheckpointError(
            f"{run_dir}: backbone {cfg.backbone.name} gives {backbone.out_channels} channels on a "
            f"{grid} grid, the checkpoint expects "
            f"{model.in_dim} on {model.grid_size}"
        )
    detector = Detector(backbone, model, cfg, dev)
    detector.run_dir = Path(run_dir)
    return detector


def scoring_dataset(detector: Detector, samples: Sequence[Sample]) -> ImageDataset:
    """``samples`` as :func:`score_dataset` scores them with ``detector``: images by the config's geometry
    (input size, resize mode, region of interest), normalised with the backbone's statistics, masks on the
    evaluation frame at the map size (``evaluation.mask_threshold``/``mask_resize``)."""
    cfg = detector.cfg
    return ImageDataset(
        samples,
        ImageGeometry.from_config(cfg),
        detector.backbone.mean,
        detector.backbone.std,
        mask_threshold=cfg.evaluation.mask_threshold,
        mask_resize=cfg.evaluation.mask_resize,
    )


def score_dataset(
    detector: Detector,
    dataset: ImageDataset | Subset,
    batch_size: int,
    desc: str,
    features: torch.Tensor | None = None,
    seed: int = 0,
):
    """Returns (maps float32 (N,Hm,Wm), scores (N,), labels (N,), masks bool (N,Hm,Wm), seconds), maps and masks
    on the evaluation frame (:meth:`~dpdiff.data.geometry.ImageGeometry.eval_map`: a letterboxed map cut to its
    content); ``features``: the dataset's backbone maps, precomputed (the images are then not run through the
    backbone). With ``data.tiling``: each image's tiles scored in batches of ``batch_size`` tiles and stitched
    (:func:`~dpdiff.inference.predictor.score_tiled`), the maps the stitched ones on the evaluation frame."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    tiled_geometry = getattr(base, "geometry", None)
    if tiled_geometry is not None and tiled_geometry.tiling is not None:
        if features is not None:
            raise ValueError("score_dataset: precomputed features cannot be scored with data.tiling (tiles)")
        return _score_tiled_dataset(detector, dataset, batch_size, desc, seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    labels, masks, sizes = [], [], []

    def batches():
        pos = 0
        for batch in progress(loader, desc=desc, leave=False):
            n = len(batch["label"])
            labels.append(np.asarray(batch["label"]))
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
            sizes.extend(tuple(int(v) for v in hw) for hw in batch["image_hw"].tolist())
            yield batch["image"] if features is None else features[pos : pos + n]
            pos += n

    t0 = time.perf_counter()
    parts = list(_scored_batches(detector, batches(), features=features is not None, seed=seed))
    seconds = time.perf_counter() - t0
    if not parts:
        raise ValueError("no images to score")
    maps, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
    geometry = getattr(base, "geometry", None)
    if geometry is not None and geometry.resize != "stretch":  # a stretched map is on the evaluation frame already
        maps = np.stack([geometry.eval_map(m, hw) for m, hw in zip(maps, sizes, strict=True)])
    return maps, scores, np.concatenate(labels), np.concatenate(masks), seconds


def _score_tiled_dataset(detector: Detector, dataset: ImageDataset | Subset, batch_size: int, desc: str, seed: int):
    """:func:`score_dataset` of a tiled geometry: the images read one at a time, their tiles scored as one noise
    stream seeded by ``seed``, the stitched frames and the masks on the evaluation frame."""
    base: ImageDataset = dataset.dataset if isinstance(dataset, Subset) else dataset  # type: ignore[assignment]
    indices = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(base)))
    geometry = base.geometry
    masks: list[np.ndarray] = []

    def images():
        for i in progress(indices, desc=desc, leave=False):
            s = base.samples[i]
            pil = load_image_rgb(s.image_path)
            masks.append(base.eval_mask(i, pil.size))
            yield str(s.image_path), pil

    def run(batches):
        return _scored_batches(detector, batches, seed=seed)

    t0 = time.perf_counter()
    maps, scores = [], []
    for _, frame, score, hw in score_tiled(  # type: ignore[misc]
        run, images(), geometry, base.mean, base.std, max(1, int(batch_size)), image_score_rule(detector.cfg)
    ):
        maps.append(geometry.eval_map(frame, hw))
        scores.append(score)
    seconds = time.perf_counter() - t0
    if not maps:
        raise ValueError("no images to score")
    labels = np.array([int(base.samples[i].label) for i in indices], dtype=np.int64)
    return np.stack(maps), np.asarray(scores, np.float32), labels, np.stack(masks), seconds


__all__ = [
    "CPU_MAX_ROWS",
    "Detector",
    "ImageInput",
    "apply_test_overrides",
    "inference_row_cap",
    "load_detector",
    "scoring_settings",
    "score_dataset",
    "scoring_dataset",
]
