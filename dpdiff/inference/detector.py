"""The one inference pipeline: ``Detector`` (preprocessing + backbone + DPDiffAD + map post-processing).

Evaluation, prediction, the report's probe images, the kNN comparison and the FPS benchmark (paper Table 4)
all score images through :class:`Detector`, so what is timed and reported is what users run:

    images --preprocess--> (B,3,S,S) --backbone--> tokens --DDIM reconstruction error (Eq. 20-22)-->
    token maps (B,h,w) --upsample, smooth, image score (Eq. 23-24)--> pixel maps (B,R,R), scores (B,)

``R`` is :func:`map_size`: the evaluation resolution, by default the input size ``S``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dpdiff.backbones.base import FeatureExtractor
from dpdiff.config import Config, InferenceConfig
from dpdiff.data.dataset import ImageDataset, normalized_image_tensor
from dpdiff.data.mvtec import Sample
from dpdiff.features import build_backbone_from_config, resolve_device, tokens_from_maps
from dpdiff.inference.calibration import read_calibration, scoring_fingerprint
from dpdiff.inference.predictor import Detector as DetectorBase
from dpdiff.inference.predictor import ImageInput
from dpdiff.inference.predictor import as_pil as _as_pil
from dpdiff.inference.predictor import flatten_inputs as _flatten_inputs
from dpdiff.model.checkpoint import load_model
from dpdiff.model.dpdiff_ad import DPDiffAD, _autocast_dtype
from dpdiff.model.postprocess import postprocess
from dpdiff.model.prototypes import prototype_similarity_maps
from dpdiff.scoring.token_bank import TokenBank
from dpdiff.utils.errors import CheckpointError, ConfigKeyError
from dpdiff.utils.progress import progress
from dpdiff.utils.run_files import CALIBRATION_FILE

#: Rows (image x noise draw) per DiT call on a CPU. Measured (benchmarks/speed.py, Lite0 @256, DiT
#: 128x4, batch 16, 4 draws): one call over all 64 rows 159 ms/img, 16-row calls 118 ms/img - the
#: attention matrices of 64 rows no longer fit the caches. GPUs take everything in one call.
CPU_MAX_ROWS = 16


def inference_row_cap(device: torch.device) -> int | None:
    """Rows per DiT call for ``DPDiffAD.token_scores(max_batch=...)``: results are identical either way."""
    return CPU_MAX_ROWS if torch.device(device).type == "cpu" else None


def token_score_options(inference: InferenceConfig) -> dict:
    """The keyword arguments of :meth:`~dpdiff.model.dpdiff_ad.DPDiffAD.token_scores` that ``inference.*`` sets
    (the DDIM reconstruction of Eq. 20-21 and the score of Eq. 22); the caller adds the noise source and how the
    rows are run."""
    return {
        "noise_step": inference.noise_step,
        "ddim_steps": inference.ddim_steps,
        "ensemble": inference.ensemble,
        "scoring": inference.scoring,
        "ensemble_reduce": inference.ensemble_reduce,
        "antithetic": inference.antithetic,
    }


def scoring_settings(cfg: Config) -> dict:
    """The settings a score depends on besides the weights: the inference options (but the batch size), the
    map size and the backbone (name, layers, input size, stride; not where its weights file lives)."""
    inference = {k: v for k, v in dataclasses.asdict(cfg.inference).items() if k != "batch_size"}
    if not inference.get("knn_weight"):  # only when on: fingerprints made before the option stay valid
        inference.pop("knn_weight", None)
    b = cfg.backbone
    backbone = {"name": b.name, "layers": b.layers, "image_size": b.image_size, "feature_stride": b.feature_stride}
    if b.normalize_intensity:  # only when on: fingerprints made before the option stay valid
        backbone["normalize_intensity"] = True
    return {"inference": inference, "map_size": map_size(cfg), "backbone": backbone}


def map_size(cfg: Config) -> int:
    """Side ``R`` of the pixel maps (and of the masks they are scored against): ``evaluation.resolution``,
    by default the input image size ``backbone.image_size``. The one place this rule lives."""
    return int(cfg.evaluation.resolution or cfg.backbone.image_size)


def postprocess_maps(token_maps: torch.Tensor, cfg: Config, inference: InferenceConfig | None = None):
    """Token maps (B, h, w) -> (pixel maps (B, R, R), image scores (B,)) with the config's post-processing:
    bilinear upsampling to :func:`map_size`, Gaussian smoothing, the image-score rule (Eq. 23-24)."""
    inf = inference or cfg.inference
    return postprocess(
        token_maps,
        map_size(cfg),
        inf.smoothing_sigma,
        inf.pool_size,
        image_score=inf.image_score,
        top_percent=inf.top_percent,
    )


@dataclass
class Probe:
    """What the report shows of a few images (:meth:`Detector.probe`), as float32 numpy arrays.

    ``x0``/``x0_hat`` (B, N, C): standardised tokens before and after one DDIM reconstruction from
    ``inference.noise_step`` (Eq. 20-21; paper Fig. 7); ``sim_local``/``sim_global`` (B, h, w): each token's
    highest cosine similarity to the image's local/global prototypes (Eq. 10; Fig. 8), None without them;
    ``maps`` (B, R, R) and ``scores`` (B,): the anomaly maps and image scores, as :meth:`Detector.score_images`
    gives them (None when not asked for)."""

    x0: np.ndarray
    x0_hat: np.ndarray
    sim_local: np.ndarray | None
    sim_global: np.ndarray | None
    maps: np.ndarray | None
    scores: np.ndarray | None


class Detector(DetectorBase):
    """Backbone + DPDiffAD + post-processing: images -> (pixel maps (B,R,R), image scores (B,)).

    The public ``dpdiff.Detector``: :meth:`load` a run folder (or a ``dpdiff export`` ``.onnx``), then
    ``predict`` images and ``calibrate`` thresholds (:class:`~dpdiff.inference.predictor.Predictor`, whose
    docstring is the contract of :class:`~dpdiff.inference.predictor.Prediction`).

    ``autocast_dtype`` (``torch.bfloat16``/``torch.float16`` or "bf16"/"fp16"; default off) runs the backbone
    and the DiT under ``torch.autocast``; ``compile`` uses a ``torch.compile``d DiT. Both are speed options
    (``dpdiff benchmark --dtype``) that change results at rounding level only; post-processing stays float32.
    """

    @classmethod
    def load(cls, run_dir: str | os.PathLike, weights: str | None = None, device: str = "auto"):
        """The detector of a run folder (``dpdiff train`` output) with its thresholds (``RUN/calibration.json``
        when present and made for these weights and settings); ``weights``: the backbone checkpoint, when it is
        not where the run's config says. A ``.onnx`` file (``dpdiff export``) loads an
        :class:`~dpdiff.inference.onnx_runtime.OnnxDetector` instead (onnxruntime, same ``predict``/``calibrate``)."""
        path = Path(run_dir)
        if path.suffix.lower() == ".onnx":
            from dpdiff.inference.onnx_runtime import OnnxDetector

            return OnnxDetector.load(path, device=device)
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
        self.autocast_dtype = _autocast_dtype(self.device, autocast_dtype)  # an unsupported pair raises
        self.compile = bool(compile)
        self.run_dir: Path | None = None  # set by load_detector: where the token bank (knn_weight) is read
        self.token_bank: TokenBank | None = None

    @property
    def map_size(self) -> int:
        return map_size(self.cfg)

    # ------------------------------------------------------------------------------------------ the steps
    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Images -> the normalised batch (B, 3, S, S) on the CPU, exactly as the datasets prepare them
        (:func:`dpdiff.data.dataset.normalized_image_tensor`: 8-bit RGB, direct bicubic resize to S, then
        ``(x - mean) / std`` with the backbone's statistics). Float tensors are taken as 8-bit images
        (rounded to 1/255), so a file, its PIL image, its uint8 array and ``array / 255`` as a tensor all
        give the same batch."""
        size = int(self.cfg.backbone.image_size)
        pil = [_as_pil(item, i) for i, item in enumerate(_flatten_inputs(images))]
        if not pil:
            raise ValueError("no images given")
        return torch.stack([normalized_image_tensor(im, size, self.backbone.mean, self.backbone.std) for im in pil])

    def _amp(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Backbone feature maps (B, C, h, w) of a normalised batch."""
        with self._amp():
            return self.backbone(batch.to(self.device))

    @torch.inference_mode()
    def token_scores(
        self, feats: torch.Tensor, generator: torch.Generator | None = None, inference: InferenceConfig | None = None
    ) -> torch.Tensor:
        """Per-token anomaly scores (B, h, w) of backbone maps: the reconstruction error (Eq. 22) or the
        prototype score, as ``inference.scoring`` says."""
        inf = inference or self.cfg.inference
        tokens = tokens_from_maps(feats.float().to(self.device))
        errors = self.model.token_scores(
            tokens,
            generator=generator,
            common_noise_seed=inf.seed if inf.common_noise else None,
            max_batch=inference_row_cap(self.device),
            autocast_dtype=self.autocast_dtype,
            compile=self.compile,
            **token_score_options(inf),
        )
        if not inf.knn_weight:
            return errors
        return self.bank().combine(errors, self.model.standardize(tokens), inf.knn_weight)

    def bank(self) -> TokenBank:
        """The run's token bank (``inference.knn_weight``), read from the run folder on first use."""
        if self.token_bank is None:
            if self.run_dir is None:
                raise CheckpointError(
                    "inference.knn_weight > 0 needs the run's token bank: load the detector from its run folder"
                )
            self.token_bank = TokenBank.load(self.run_dir, self.device)
        return self.token_bank

    @torch.inference_mode()
    def postprocess(self, token_maps: torch.Tensor, inference: InferenceConfig | None = None):
        """Token maps -> (pixel maps (B, R, R), image scores (B,)) (Eq. 23-24)."""
        return postprocess_maps(token_maps, self.cfg, inference)

    def score_features(
        self, feats: torch.Tensor, inference: InferenceConfig | None = None, generator: torch.Generator | None = None
    ):
        """(pixel maps, image scores) on the device, from backbone maps (e.g. from the feature cache)."""
        return self.postprocess(self.token_scores(feats, generator, inference), inference)

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator | None = None, inference: InferenceConfig | None = None
    ):
        """(pixel maps (B, R, R), image scores (B,)) on the device of a normalised batch (B, 3, S, S)."""
        return self.score_features(self.features(batch), inference, generator)

    # ------------------------------------------------------------------------------------------ batch loops
    def score_batches(
        self,
        batches: Iterable[torch.Tensor],
        *,
        features: bool = False,
        seed: int | None = None,
        inference: InferenceConfig | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (N, R, R), scores (N,)) as float32 CPU tensors of normalised image batches (or backbone
        maps with ``features=True``). One generator seeded with ``seed`` (default ``inference.seed``) is
        consumed in batch order, so the result depends only on the inputs and their batching."""
        inf = inference or self.cfg.inference
        generator = torch.Generator(self.device).manual_seed(int(inf.seed if seed is None else seed))
        maps, scores = [], []
        for batch in batches:
            if features:
                m, s = self.score_features(torch.as_tensor(batch), inf, generator)
            else:
                m, s = self(batch, generator, inf)
            maps.append(m.float().cpu())
            scores.append(s.float().cpu())
        if not maps:
            raise ValueError("no images to score")
        return torch.cat(maps), torch.cat(scores)

    def _input_chunks(self, images, batch_size: int | None, desc: str | None = None) -> Iterable[torch.Tensor]:
        """Normalised batches of ``batch_size`` (default ``inference.batch_size``) images, prepared lazily."""
        items = _flatten_inputs(images)
        bs = max(1, int(batch_size or self.cfg.inference.batch_size))
        for lo in progress(range(0, len(items), bs), desc=desc, leave=False, disable=desc is None):
            yield self.preprocess(items[lo : lo + bs])

    def score_images(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int | None = None,
        seed: int | None = None,
        desc: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (B, R, R), scores (B,)) as float32 CPU tensors of any images :meth:`preprocess` takes, in
        batches of ``batch_size`` (default ``inference.batch_size``): the same numbers as evaluation gives
        for the same files in the same order. ``desc``: show a progress bar with this label."""
        return self.score_batches(self._input_chunks(images, batch_size, desc), seed=seed)

    @torch.inference_mode()
    def probe(
        self, images: ImageInput | Sequence[ImageInput], with_maps: bool = True, batch_size: int | None = None
    ) -> Probe:
        """What the report shows of a few images (:class:`Probe`): prototype similarity maps, tokens before
        and after one DDIM reconstruction (generator seeded with ``inference.seed``, consumed in batch
        order) and, with ``with_maps``, the anomaly maps and scores (as :meth:`score_images`)."""
        inf = self.cfg.inference
        reconstruction = torch.Generator(self.device).manual_seed(int(inf.seed))
        scoring = torch.Generator(self.device).manual_seed(int(inf.seed))
        parts = []
        for batch in self._input_chunks(images, batch_size, desc="probe images"):
            feats = self.features(batch)
            part = self._probe_batch(feats, reconstruction)
            if with_maps:
                m, s = self.score_features(feats, inf, scoring)
                part |= {"maps": m.float().cpu(), "scores": s.float().cpu()}
            parts.append(part)
        joined: dict[str, Any] = {
            k: (torch.cat([p[k] for p in parts]).numpy() if parts and k in parts[0] else None)
            for k in ("x0", "x0_hat", "sim_local", "sim_global", "maps", "scores")
        }
        return Probe(**joined)

    def _probe_batch(self, feats: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        inf, model = self.cfg.inference, self.model
        tokens = tokens_from_maps(feats.float())
        x0 = model.standardize(tokens)
        p_local, p_global = model.prototypes(x0)
        h, w = model.grid_size
        out = {}
        for key, protos in (("sim_local", p_local), ("sim_global", p_global)):
            if protos is not None:
                out[key] = prototype_similarity_maps(x0, protos).amax(1).view(-1, h, w).float().cpu()
        x0, x0_hat = model.reconstruct(tokens, inf.noise_step, inf.ddim_steps, generator)
        return out | {"x0": x0.float().cpu(), "x0_hat": x0_hat.float().cpu()}


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
    if backbone.out_channels != model.in_dim or tuple(backbone.grid_size(cfg.backbone.image_size)) != model.grid_size:
        raise CheckpointError(
            f"{run_dir}: backbone {cfg.backbone.name} gives {backbone.out_channels} channels on a "
            f"{backbone.grid_size(cfg.backbone.image_size)} grid, the checkpoint expects "
            f"{model.in_dim} on {model.grid_size}"
        )
    detector = Detector(backbone, model, cfg, dev)
    detector.run_dir = Path(run_dir)
    return detector


def scoring_dataset(detector: Detector, samples: Sequence[Sample]) -> ImageDataset:
    """``samples`` as :func:`score_dataset` scores them with ``detector``: images at the backbone's input size,
    normalised with its statistics, masks at the map size (``evaluation.mask_threshold``/``mask_resize``)."""
    cfg = detector.cfg
    return ImageDataset(
        samples,
        cfg.backbone.image_size,
        detector.backbone.mean,
        detector.backbone.std,
        mask_size=detector.map_size,
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
    """Returns (maps float32 (N,R,R), scores (N,), labels (N,), masks bool (N,R,R), seconds); ``features``:
    the dataset's backbone maps, precomputed (the images are then not run through the backbone)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    labels, masks = [], []

    def batches():
        pos = 0
        for batch in progress(loader, desc=desc, leave=False):
            n = len(batch["label"])
            labels.append(np.asarray(batch["label"]))
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
            yield batch["image"] if features is None else features[pos : pos + n]
            pos += n

    t0 = time.perf_counter()
    maps, scores = detector.score_batches(batches(), features=features is not None, seed=seed)
    seconds = time.perf_counter() - t0
    return maps.numpy(), scores.numpy(), np.concatenate(labels), np.concatenate(masks), seconds


__all__ = [
    "CPU_MAX_ROWS",
    "Detector",
    "ImageInput",
    "Probe",
    "apply_test_overrides",
    "inference_row_cap",
    "load_detector",
    "map_size",
    "postprocess_maps",
    "scoring_settings",
    "score_dataset",
    "scoring_dataset",
    "token_score_options",
]
