"""The one predictor pipeline, shared by the PyTorch :class:`~dpdiff.inference.detector.Detector` and the
onnxruntime :class:`~dpdiff.inference.onnx_runtime.OnnxDetector`: :class:`Prediction` (the public result) and
:class:`Predictor` (inputs, decoding, preprocessing, batching, thresholds and decisions: ``predict``,
``iter_predict``, ``score_images``, ``calibrate``), on top of a runtime that only runs preprocessed batches.

The contract (stable; ``dpdiff serve`` and user code rely on it):

``Predictor.predict(images, category=None, batch_size=None) -> list[Prediction]``, one per image, in order.
``images``: one image or a sequence of file paths, folders (every image under them, sorted), PIL images,
``(H, W[, 3|4])`` uint8 arrays or float tensors in [0, 1] of shape ``(3, H, W)``/``(B, 3, H, W)``; each is
preprocessed inside exactly as in training, so the same picture given in any of these forms gets the same
prediction. A :class:`Prediction` holds:

* ``image``: the file path (str) it was read from, or None for in-memory images;
* ``score`` (float): the image anomaly score (paper Eq. 24); higher = more anomalous;
* ``normalized_score`` (float or None when uncalibrated): ``score / image_threshold``; 1.0 is the decision
  boundary;
* ``is_anomalous`` (bool or None when uncalibrated): ``score > image_threshold``;
* ``anomaly_map`` (float32 ``(H, W)``): the pixel anomaly map at the image's own size (the model's map,
  bilinearly resized; with ``data.resize: keep_aspect`` cut to the letterbox's content first; with ``data.roi``
  placed in the region of interest and 0 outside it: :meth:`dpdiff.data.geometry.ImageGeometry.map_to_image`);
* ``mask`` (bool ``(H, W)`` or None when uncalibrated or without a pixel threshold): ``anomaly_map >
  pixel_threshold``, the defect region, on an image judged anomalous; all False on an image judged normal
  (an operator reads any marked pixel as "defect here"), unless ``predict(..., all_masks=True)``;
* ``image_threshold``, ``pixel_threshold`` (float or None): the thresholds used;
* ``category`` (str or None): the category the caller named (its thresholds are used when calibrated for it,
  else the global ones);
* ``model_map`` (float32 ``(Hm, Wm)``): the model's map before resizing, at the map size, on the evaluation frame
  (the region of interest stretched to the map size; what overlays draw);
* ``roi`` (``[x0, y0, x1, y1]`` pixels or None): the region of interest used (``data.roi``); the map is 0
  outside it;

With ``data.tiling`` (docs/guides/high-resolution.md) every image is cut into tiles, the tiles are scored in
batches of ``batch_size`` tiles (:func:`score_tiled`: at most one batch of tiles and the stitched maps of the
images it touches are in memory, whatever the image's size), and the tile maps are stitched into one map; the
score is the image-score rule applied to the stitched map; ``anomaly_map`` is that map at the image's size and
``model_map`` at the evaluation size.

and ``to_dict()`` gives the JSON-ready fields without arrays (plus ``height``, ``width``,
``max_pixel_score`` and ``defect_pixels``; ``roi`` only when one was used).

``Predictor.calibrate(normal_images=None, target_fpr=0.01, category=None, *, labelled=None, ...)`` sets the
thresholds (:mod:`dpdiff.inference.calibration`), keeps them on the predictor and, for a detector loaded from a
run folder, saves them to ``RUN/calibration.json`` (atomically) so later loads use them.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
from PIL import Image

from dpdiff.data.geometry import ImageGeometry, TilePlan, resize_map
from dpdiff.data.images import load_image_rgb, read_mask_values
from dpdiff.data.tiling import Stitcher, frame_score
from dpdiff.data.types import list_images
from dpdiff.inference.calibration import (
    DEFAULT_PIXEL_FPR,
    Calibration,
    Thresholds,
    f1_thresholds,
    fpr_thresholds,
    min_normal_images,
    write_calibration,
)
from dpdiff.utils.errors import DataError, UsageError
from dpdiff.utils.progress import progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from dpdiff.config import Config

logger = logging.getLogger(__name__)

__all__ = [
    "Detector",
    "ImageInput",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "Skipped",
    "as_pil",
    "flatten_inputs",
    "score_tiled",
]

#: What the predictors take: a file path (or a folder of images, for ``predict``/``calibrate``), a PIL image,
#: an 8-bit numpy image (H, W[, 3|4]), or a float tensor in [0, 1] of one (3, H, W) or several (B, 3, H, W) RGB
#: images.
ImageInput: TypeAlias = "str | os.PathLike | Image.Image | np.ndarray | torch.Tensor"


def _torch_tensor_type() -> type | None:
    """``torch.Tensor`` when torch is loaded, else None: no input can be a tensor then, and this module (the
    onnxruntime path's base) never imports torch itself."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _is_tensor(item) -> bool:
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(item, tensor)


@dataclass
class Prediction:
    """The decision on one image (see the module docstring for the contract)."""

    image: str | None
    score: float
    normalized_score: float | None
    is_anomalous: bool | None
    anomaly_map: np.ndarray
    mask: np.ndarray | None
    image_threshold: float | None
    pixel_threshold: float | None
    category: str | None = None
    model_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    roi: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types, without the arrays: their size, the largest map value and the
        number of defect pixels (None without a mask) instead."""
        h, w = self.anomaly_map.shape
        return {
            "image": self.image,
            "score": self.score,
            "normalized_score": self.normalized_score,
            "is_anomalous": self.is_anomalous,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "category": self.category,
            "height": int(h),
            "width": int(w),
            "max_pixel_score": float(self.anomaly_map.max()),
            "defect_pixels": None if self.mask is None else int(self.mask.sum()),
        } | ({} if self.roi is None else {"roi": list(self.roi)})


@dataclass
class Skipped:
    """An input that could not be read (``skip_bad=True``): its name and why."""

    image: str
    reason: str


# ---------------------------------------------------------------------------------------------- inputs
def flatten_inputs(images, expand_folders: bool = False) -> list:
    """One entry per image: a (B, 3, H, W) tensor becomes B (3, H, W) tensors; a single image a list of one;
    with ``expand_folders`` a folder path becomes the images under it (:func:`list_images`)."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or _is_tensor(images):
        images = [images]
    out: list[Any] = []
    for item in images:
        if _is_tensor(item) and item.dim() == 4:
            out.extend(item.unbind(0))
        elif expand_folders and isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            out.extend(list_images(item))
        else:
            out.append(item)
    return out


def as_pil(item, position: int) -> Image.Image:
    """One input as an 8-bit RGB-convertible PIL image (files decoded, arrays and tensors converted exactly:
    a float tensor is taken as an 8-bit image, rounded to 1/255)."""
    if isinstance(item, (str, os.PathLike)):
        return load_image_rgb(os.fspath(item))
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ValueError(
                f"image {position}: numpy images must be uint8 (H, W), (H, W, 3) or (H, W, 4), got "
                f"{item.dtype} {item.shape}; pass float images as a torch tensor (3, H, W) in [0, 1]"
            )
        return Image.fromarray(np.ascontiguousarray(item))
    if _is_tensor(item):
        import torch

        if not item.is_floating_point() or item.dim() != 3 or item.shape[0] != 3:
            raise ValueError(
                f"image {position}: tensors must be float RGB (3, H, W) or (B, 3, H, W) in [0, 1], got "
                f"{item.dtype} {tuple(item.shape)}"
            )
        t = item.detach().float().cpu()
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0.0 or float(t.max()) > 1.0:
            raise ValueError(
                f"image {position}: tensor values must be finite and in [0, 1], got "
                f"[{float(t.min()):.4g}, {float(t.max()):.4g}] (an already normalised batch is not an image: "
                f"score its backbone maps with Detector.scorer(), not preprocess/score_images)"
            )
        return Image.fromarray((t * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    raise TypeError(
        f"image {position}: expected a path, PIL image, numpy uint8 array or float tensor, got {type(item).__name__}"
    )


def _name(item) -> str | None:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else None


def _load(items: Sequence, offset: int, skip_bad: bool) -> list[tuple[str | None, Image.Image] | Skipped]:
    """Per item, in order, ``(name, PIL image)``; an unreadable file is a DataError naming it, or with
    ``skip_bad`` a :class:`Skipped` in its place."""
    out: list[tuple[str | None, Image.Image] | Skipped] = []
    for i, item in enumerate(items):
        name = _name(item)
        try:
            out.append((name, as_pil(item, offset + i)))
        except (DataError, OSError) as e:
            if not skip_bad or name is None:
                raise
            logger.warning("skipping %s: %s", name, e)
            out.append(Skipped(name, str(e)))
    return out


def decide(
    name: str | None,
    anomaly_map: np.ndarray,
    score: float,
    size_hw: tuple[int, int],
    thresholds: Thresholds | None,
    category: str | None,
    all_masks: bool = False,
    geometry: ImageGeometry | None = None,
) -> Prediction:
    """The :class:`Prediction` of one scored image (``anomaly_map``: the model's (Hm, Wm) map, on its input
    frame): map at its own size (``geometry``'s :meth:`~dpdiff.data.geometry.ImageGeometry.map_to_image`; None: a
    direct resize), decision and mask by ``thresholds``; the mask of an image judged normal is empty unless
    ``all_masks``."""
    if geometry is None:
        full, small, roi = resize_map(anomaly_map, size_hw), anomaly_map, None
    else:
        full = geometry.map_to_image(anomaly_map, size_hw, source=name)
        small, roi = geometry.eval_map(anomaly_map, size_hw), geometry.roi_pixels(size_hw)
    score = float(score)
    if thresholds is None:
        return Prediction(name, score, None, None, full, None, None, None, category, small, roi)
    anomalous = bool(score > thresholds.image)
    mask = None
    if thresholds.pixel is not None:
        mask = full > thresholds.pixel if anomalous or all_masks else np.zeros(full.shape, dtype=bool)
    return Prediction(
        name,
        score,
        score / thresholds.image,
        anomalous,
        full,
        mask,
        thresholds.image,
        thresholds.pixel,
        category,
        small,
        roi,
    )


# ---------------------------------------------------------------------------------------------- tiles
#: Scores preprocessed batches (a runtime's ``_run_batches``): batches (B, 3, H, W) in, (maps, scores) out.
RunBatches = Callable[[Iterable[np.ndarray]], Iterator[tuple[np.ndarray, np.ndarray]]]


class _TiledImage:
    """One image being scored tile by tile: its plan, and its stitcher (or its single tile's map and score)."""

    def __init__(self, name: str | None, size_hw: tuple[int, int], plan: TilePlan) -> None:
        self.name, self.size_hw, self.plan = name, size_hw, plan
        self.left = len(plan.crops)
        self.stitcher = Stitcher(plan.frame_hw) if self.left > 1 else None
        self.single: tuple[np.ndarray, float] | None = None

    def add(self, k: int, model_map: np.ndarray, score: float, geometry: ImageGeometry) -> None:
        content = geometry.tile_content(model_map, self.plan)
        if self.stitcher is not None:
            self.stitcher.add([content], [self.plan.frame_boxes[k]])
        else:
            self.single = content, float(score)
        self.left -= 1

    def result(self, geometry: ImageGeometry, rule: Callable[[np.ndarray], float]):
        """(name, frame, score, (H, W)): the stitched frame and the image-score rule applied to it."""
        if self.stitcher is not None:
            frame = self.stitcher.result()
            return self.name, frame, rule(frame), self.size_hw
        assert self.single is not None
        content, score = self.single
        if content.shape == tuple(self.plan.frame_hw):  # the frame is the tile's map: its own score is the rule's
            return self.name, np.array(content, dtype=np.float32), score, self.size_hw
        frame = resize_map(content, self.plan.frame_hw)
        return self.name, frame, rule(frame), self.size_hw


def score_tiled(
    run_batches: RunBatches,
    images: Iterable[tuple[str | None, Image.Image] | Skipped],
    geometry: ImageGeometry,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    rule: Callable[[np.ndarray], float],
) -> Iterator[tuple[str | None, np.ndarray, float, tuple[int, int]] | Skipped]:
    """Per image, in order, ``(name, frame, score, (H, W))`` (a :class:`Skipped` passes through in its place):
    the image cut into its tiles (:meth:`~dpdiff.data.geometry.ImageGeometry.tile_plan`), the tiles scored by
    ``run_batches`` in batches of ``batch_size`` tiles (a batch may hold the tiles of several images; all batches
    are one call, i.e. one noise stream), the tile maps stitched into the frame (cosine window) and ``rule``
    (the image-score rule) applied to it.

    Memory: ``images`` is consumed lazily (an image is decoded when its tiles are next), so at most one batch
    of tiles, the image being cut and the frames of the images whose tiles are in flight are held."""
    states: deque[_TiledImage | Skipped] = deque()
    pending: deque[list[tuple[_TiledImage, int]]] = deque()

    def batches() -> Iterator[np.ndarray]:
        buf: list[np.ndarray] = []
        meta: list[tuple[_TiledImage, int]] = []
        for entry in images:
            if isinstance(entry, Skipped):
                states.append(entry)
                continue
            name, pil = entry
            state = _TiledImage(name, (pil.height, pil.width), geometry.tile_plan(pil.size, name))
            states.append(state)
            for k, crop in enumerate(state.plan.crops):
                buf.append(geometry.model_input(pil, mean, std, crop=crop, source=name))
                meta.append((state, k))
                if len(buf) == batch_size:
                    pending.append(meta)
                    yield np.stack(buf)
                    buf, meta = [], []
        if buf:
            pending.append(meta)
            yield np.stack(buf)

    def finished() -> Iterator[tuple[str | None, np.ndarray, float, tuple[int, int]] | Skipped]:
        while states:
            head = states[0]
            if isinstance(head, _TiledImage) and head.left > 0:
                return
            states.popleft()
            yield head if isinstance(head, Skipped) else head.result(geometry, rule)

    for maps, scores in run_batches(batches()):
        meta = pending.popleft()
        for (state, k), m, sc in zip(meta, maps, np.asarray(scores).tolist(), strict=True):
            state.add(k, m, sc, geometry)
        yield from finished()
    yield from finished()  # images after the last batch that had no tile left to score (skipped files)


def image_score_rule(cfg: Config) -> Callable[[np.ndarray], float]:
    """``inference.image_score`` (with ``pool_size``, ``top_percent``) as a function of one stitched map."""
    inf = cfg.inference

    def rule(frame: np.ndarray) -> float:
        return frame_score(frame, inf.image_score, inf.pool_size, inf.top_percent)

    return rule


# ---------------------------------------------------------------------------------------------- the base class
@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input, as in training (:meth:`~dpdiff.data.geometry.ImageGeometry.model_input`:
    8-bit RGB, the region of interest cut out, PIL bicubic resize (direct, or letterboxed) to the input's
    ``(H, W)``, ``(x / 255 - mean) / std`` per channel, float32 (3, H, W)); the same numpy and Pillow code for
    every runtime, so every runtime gets the same bits. ``geometry``: an
    :class:`~dpdiff.data.geometry.ImageGeometry`, or a size (one int or ``(H, W)``: a direct resize)."""

    geometry: ImageGeometry
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, ImageGeometry):
            object.__setattr__(self, "geometry", ImageGeometry(self.geometry))

    @property
    def size(self) -> tuple[int, int]:
        """The input's (H, W)."""
        return self.geometry.size

    def __call__(self, images: Sequence[Image.Image], names: Sequence[str | None] | None = None) -> np.ndarray:
        """PIL images -> the normalised batch (B, 3, H, W) float32 (``names``: the files, named in errors)."""
        names = names if names is not None else [None] * len(images)
        return np.stack(
            [
                self.geometry.model_input(im, self.mean, self.std, source=name)
                for im, name in zip(images, names, strict=True)
            ]
        )


class Predictor:
    """The one predictor pipeline: input flattening, decoding, preprocessing, batching, thresholds and the
    decision, for every runtime. Public: :meth:`predict`, :meth:`iter_predict`, :meth:`score_images`,
    :meth:`calibrate` (and ``Detector.load``).

    A runtime (the PyTorch :class:`~dpdiff.inference.detector.Detector`, the onnxruntime
    :class:`~dpdiff.inference.onnx_runtime.OnnxDetector`) provides ``_run_batches`` (preprocessed batches in,
    (maps (B, Hm, Wm), scores (B,)) float32 arrays out), ``fingerprint()`` (what thresholds are valid for:
    :func:`~dpdiff.inference.calibration.scoring_fingerprint` of its model and settings), and what it was loaded
    with: ``cfg`` (the run's :class:`~dpdiff.config.Config`), ``map_size`` ((Hm, Wm)) and ``preprocessing``
    (:class:`Preprocessing`, whose ``geometry`` also brings the maps back onto the images). ``calibration`` (None
    until calibrated) and ``calibration_path`` (where ``calibrate`` saves; None: kept in memory only) are set by
    the loaders."""

    calibration: Calibration | None = None
    calibration_path: Path | None = None
    cfg: Config

    # ---------------------------------------------------------------------------- what a runtime provides
    @property
    def map_size(self) -> tuple[int, int]:  # pragma: no cover - abstract
        """(Hm, Wm) of the model's maps."""
        raise NotImplementedError

    @property
    def preprocessing(self) -> Preprocessing:  # pragma: no cover - abstract
        """How images become the model's input."""
        raise NotImplementedError

    def _run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(maps (B, Hm, Wm), scores (B,)) float32 of each preprocessed batch (B, 3, H, W), in order, the batches
        scored as one noise stream (where the runtime draws noise: the PyTorch runtime's generator seeded with
        ``inference.seed`` is consumed batch after batch)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def fingerprint(self) -> dict:  # pragma: no cover - abstract
        """What thresholds are valid for (:func:`~dpdiff.inference.calibration.scoring_fingerprint`)."""
        raise NotImplementedError

    @property
    def geometry(self) -> ImageGeometry:
        """The image geometry (:class:`~dpdiff.data.geometry.ImageGeometry`) of :attr:`preprocessing`."""
        return self.preprocessing.geometry

    # ---------------------------------------------------------------------------- scoring
    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images (anything :data:`ImageInput` names but folders) -> the normalised batch (B, 3, H, W) float32,
        exactly as the datasets prepare them (:class:`Preprocessing`). Float tensors are taken as 8-bit images
        (rounded to 1/255), so a file, its PIL image, its uint8 array and ``array / 255`` as a tensor all give
        the same batch."""
        pils = [as_pil(item, i) for i, item in enumerate(flatten_inputs(images))]
        if not pils:
            raise ValueError("no images given")
        return self.preprocessing(pils)

    def _batch_size(self, batch_size: int | None) -> int:
        return max(1, int(batch_size or self.cfg.inference.batch_size))

    def score_images(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None, desc: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(maps (N, Hm, Wm), scores (N,)) as float32 numpy arrays of the images (as :meth:`preprocess` takes
        them), in batches of ``batch_size`` (default ``inference.batch_size``) scored as one noise stream: the
        same numbers as evaluation gives for the same files in the same order. ``desc``: show a progress bar
        with this label. With ``data.tiling``: batches of ``batch_size`` tiles, the maps the stitched ones on the
        evaluation frame (:meth:`~dpdiff.data.geometry.ImageGeometry.eval_map`)."""
        items = flatten_inputs(images)
        if not items:
            raise ValueError("no images given")
        bs = self._batch_size(batch_size)
        if self.geometry.tiling is not None:  # tiles: the stitched maps on the evaluation frame
            out = [
                (self.geometry.eval_map(frame, hw), score)
                for _, frame, score, hw in cast(
                    Iterator[tuple[str | None, np.ndarray, float, tuple[int, int]]],
                    self._tiled(((_name(it), as_pil(it, i)) for i, it in enumerate(items)), bs, desc, len(items)),
                )
            ]
            return np.stack([m for m, _ in out]), np.asarray([s for _, s in out], np.float32)
        chunks = (
            self.preprocess(items[lo : lo + bs])
            for lo in progress(range(0, len(items), bs), desc=desc, leave=False, disable=desc is None)
        )
        maps, scores = zip(*self._run_batches(chunks), strict=True)
        return np.concatenate(maps), np.concatenate(scores)

    def _iter_scored(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int | None, skip_bad: bool, desc: str | None
    ) -> Iterator[tuple[str | None, np.ndarray, float, tuple[int, int]] | Skipped]:
        """Per image, in order: ``(name, map (Hm, Wm) float32 on the input frame, score, (H, W))``, or a
        :class:`Skipped` for an unreadable file when ``skip_bad`` (else a DataError naming it). Each batch is
        decoded once and scored on its own (a fresh noise stream per batch). With ``data.tiling`` the map is the
        stitched frame (:func:`score_tiled`; all tile batches one noise stream)."""
        items = flatten_inputs(images, expand_folders=True)
        if not items:
            raise ValueError("no images given")
        bs = self._batch_size(batch_size)
        if self.geometry.tiling is not None:  # tiles: one tile batch stream, images decoded one at a time
            one_by_one = (_load([item], i, skip_bad)[0] for i, item in enumerate(items))
            yield from self._tiled(one_by_one, bs, desc, total=len(items))
            return
        for lo in progress(range(0, len(items), bs), desc=desc, leave=False, disable=desc is None):
            loaded = _load(items[lo : lo + bs], lo, skip_bad)
            good = [x for x in loaded if not isinstance(x, Skipped)]
            done: Iterator[tuple[str | None, np.ndarray, float, tuple[int, int]]] = iter(())
            if good:
                batch = self.preprocessing([pil for _, pil in good], [n for n, _ in good])
                maps, scores = next(iter(self._run_batches([batch])))
                sizes = [(pil.height, pil.width) for _, pil in good]
                done = iter(zip([n for n, _ in good], maps, np.asarray(scores).tolist(), sizes, strict=True))
            for x in loaded:  # the inputs' order, skipped files in their place
                yield x if isinstance(x, Skipped) else next(done)

    def _tiled(
        self,
        loaded: Iterable[tuple[str | None, Image.Image] | Skipped],
        batch_size: int,
        desc: str | None,
        total: int | None = None,
    ) -> Iterator[tuple[str | None, np.ndarray, float, tuple[int, int]] | Skipped]:
        """:func:`score_tiled` with this runtime, its preprocessing and its image-score rule (frames)."""
        pre = self.preprocessing
        shown = progress(loaded, desc=desc, leave=False, disable=desc is None, total=total)
        return score_tiled(
            self._run_batches, shown, pre.geometry, pre.mean, pre.std, batch_size, image_score_rule(self.cfg)
        )

    def iter_predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        category: str | None = None,
        batch_size: int | None = None,
        skip_bad: bool = False,
        all_masks: bool = False,
        desc: str | None = None,
    ) -> Iterator[Prediction | Skipped]:
        """:meth:`predict` one batch at a time (memory stays bounded by a batch); with ``skip_bad`` an
        unreadable file yields a :class:`Skipped` in its place instead of raising a DataError. ``desc``: show a
        progress bar with this label."""
        thresholds = self.thresholds(category)
        for item in self._iter_scored(images, batch_size, skip_bad, desc):
            if isinstance(item, Skipped):
                yield item
            else:
                name, small_map, score, size_hw = item
                yield decide(name, small_map, score, size_hw, thresholds, category, all_masks, self.geometry)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        category: str | None = None,
        batch_size: int | None = None,
        all_masks: bool = False,
    ) -> list[Prediction]:
        """One :class:`Prediction` per image (see the module docstring); ``category``: use the thresholds
        calibrated for it (else the global ones); ``all_masks``: the pixel mask on images judged normal too
        (default: empty there). Unreadable files are a DataError naming the file."""
        return cast(list[Prediction], list(self.iter_predict(images, category, batch_size, all_masks=all_masks)))

    # ------------------------------------------------------------------------------------------ calibration
    @property
    def calibrated(self) -> bool:
        """True when global thresholds are set (predictions then carry decisions)."""
        return self.calibration is not None and self.calibration.overall is not None

    def thresholds(self, category: str | None = None) -> Thresholds | None:
        """The thresholds ``predict`` uses for ``category`` (its own when calibrated for it, else the global
        ones); None when uncalibrated."""
        return None if self.calibration is None else self.calibration.thresholds(category)

    def _score_all(self, items: list, batch_size: int | None, skip_bad: bool):
        """(maps (N, Hm, Wm) on the evaluation frame, scores (N,), kept positions, skipped) of ``items``."""
        maps, scores, kept, skipped = [], [], [], []
        geometry = self.geometry
        for i, item in enumerate(self._iter_scored(items, batch_size, skip_bad, desc="calibration images")):
            if isinstance(item, Skipped):
                skipped.append(item)
                continue
            maps.append(geometry.eval_map(item[1], item[3]))
            scores.append(item[2])
            kept.append(i)
        if not maps:
            raise DataError("no readable images to calibrate on")
        return np.stack(maps), np.asarray(scores, np.float32), kept, skipped

    def calibrate(
        self,
        normal_images: ImageInput | Sequence[ImageInput] | None = None,
        target_fpr: float = 0.01,
        category: str | None = None,
        *,
        pixel_fpr: float = DEFAULT_PIXEL_FPR,
        labelled: str | os.PathLike | Sequence | None = None,
        batch_size: int | None = None,
        skip_bad: bool = False,
        save: bool | None = None,
    ) -> Thresholds:
        """Set the decision thresholds (:mod:`dpdiff.inference.calibration`) and return them.

        ``normal_images`` (paths, folders, in-memory images) held out from training: the image threshold is
        the (1 - ``target_fpr``) quantile of their scores, the pixel threshold the (1 - ``pixel_fpr``) quantile
        of their map pixels (its own, small rate: the share of a normal image's pixels that may exceed it);
        fewer than ``min_normal_images(target_fpr)`` images is a DataError (99 for 1 %).
        ``labelled``: a labelled validation set instead or in addition: a dataset folder (its test split, in
        any layout ``dpdiff test`` reads; masks give the pixel threshold) or a sequence of ``(image, label,
        mask or None)`` with label 1 = defective; the thresholds are then the F1-optimal ones, with
        ``normal_images`` added as normal samples.

        ``category``: store them as that category's thresholds (used by ``predict(..., category=...)``);
        default the global ones. ``skip_bad``: leave out unreadable files (logged) instead of failing.
        ``save``: write ``calibration.json`` (default: when the predictor has a ``calibration_path``);
        nothing is written when calibration fails."""
        if normal_images is None and labelled is None:
            raise UsageError(
                "calibrate needs normal images (normal_images / --normal) or a labelled set (labelled / --labelled)"
            )
        normal = flatten_inputs(normal_images, expand_folders=True) if normal_images is not None else []
        if labelled is None:
            need = min_normal_images(target_fpr)
            if len(normal) < need:  # before any scoring
                raise DataError(
                    f"calibrating at target_fpr={float(target_fpr):g} needs at least {need} normal images, "
                    f"got {len(normal)}: with n normal images the smallest false-alarm rate that can be "
                    f"set is 1/(n+1) = {1.0 / (len(normal) + 1):.3g}; add normal images or raise the "
                    f"target (--fpr)"
                )
            maps, scores, _, skipped = self._score_all(normal, batch_size, skip_bad)
            thresholds = fpr_thresholds(scores, maps, target_fpr, pixel_fpr)
        else:
            thresholds, skipped = self._calibrate_labelled(normal, labelled, batch_size, skip_bad)
        if skipped:
            thresholds.details["skipped"] = [s.image for s in skipped]
        self.set_thresholds({category: thresholds}, save=save)
        return thresholds

    def set_thresholds(self, thresholds: dict[str | None, Thresholds], save: bool | None = None) -> Calibration:
        """Use ``thresholds`` ({None: global ones, "category": that category's}) from now on, keeping the other
        scopes; ``save``: write ``calibration.json`` atomically (default: when there is a ``calibration_path``)."""
        calibration = self.calibration or Calibration(self.fingerprint())
        for category, t in thresholds.items():
            calibration = calibration.with_thresholds(t, category)
        if save or (save is None and self.calibration_path is not None):
            if self.calibration_path is None:
                raise UsageError("save=True needs a detector loaded from a run folder (Detector.load)")
            write_calibration(self.calibration_path, calibration)
            logger.info("thresholds written to %s", self.calibration_path)
        self.calibration = calibration
        return calibration

    def _calibrate_labelled(self, normal: list, labelled, batch_size, skip_bad):
        if isinstance(labelled, (str, os.PathLike)):
            from dpdiff.data.readers import load_samples

            samples = load_samples("auto", Path(labelled), None, "test")
            rows = [(s.image_path, int(s.label), s.mask_path) for s in samples]
        else:
            rows = [tuple(r) + (None,) * (3 - len(tuple(r))) for r in labelled]
        rows += [(item, 0, None) for item in normal]
        if not rows:
            raise DataError(f"{labelled}: no labelled images")
        maps, scores, kept, skipped = self._score_all([r[0] for r in rows], batch_size, skip_bad)
        rows = [rows[i] for i in kept]
        labels = np.array([int(r[1]) for r in rows], dtype=np.int64)
        masks = np.zeros(maps.shape, dtype=bool)
        geometry, ev = self.geometry, self.cfg.evaluation
        # the pixel threshold from the images whose ground truth is known pixel by pixel: normal images and
        # defective ones with a mask; image labels only (no mask anywhere): no pixel threshold
        known = np.array([not label or mask is not None for _, label, mask in rows], dtype=bool)
        for i, (_, label, mask) in enumerate(rows):
            if label and mask is not None:
                values = (
                    read_mask_values(mask)
                    if isinstance(mask, (str, os.PathLike))
                    else np.asarray(mask, dtype=np.float32)
                )
                masks[i] = geometry.eval_mask(values, ev.mask_threshold, ev.mask_resize, _name(mask))
        if not masks.any():
            logger.info("calibrate: no defect masks in the labelled images: image threshold only")
            return f1_thresholds(scores, labels, None, None), skipped
        return f1_thresholds(scores, labels, maps[known], masks[known]), skipped


#: The runtimes :meth:`Detector.load` picks from, by the suffix of the path it is given ("" for a run folder):
#: ``"module:class"``, imported only when used (so the onnxruntime path never loads torch). A runtime plugs in
#: here with its ``load(path, weights=None, device="auto")`` classmethod.
RUNTIMES = {
    ".onnx": "dpdiff.inference.onnx_runtime:OnnxDetector",
    ".xml": "dpdiff.inference.openvino_runtime:OpenVinoDetector",
    "": "dpdiff.inference.detector:Detector",
}
#: the file suffixes of exported models (their backbone is in the graph: no ``weights``)
EXPORT_SUFFIXES = tuple(suffix for suffix in RUNTIMES if suffix)


class Detector(Predictor):
    """``dpdiff.Detector``: what both runtimes' detectors are (the PyTorch
    :class:`dpdiff.inference.detector.Detector` and the onnxruntime
    :class:`~dpdiff.inference.onnx_runtime.OnnxDetector`),
    and :meth:`load`, which picks the runtime by the file it is given (:data:`RUNTIMES`)."""

    @classmethod
    def load(cls, path: str | os.PathLike, weights: str | None = None, device: str = "auto") -> Detector:
        """A run folder (``dpdiff train``) -> the PyTorch detector; a ``.onnx`` (``dpdiff export``) -> the
        onnxruntime one, which imports neither torch nor torchvision nor timm. ``weights``: the backbone checkpoint
        of a run folder, when it is not where the run's config says."""
        suffix = Path(path).suffix.lower()
        module, _, name = RUNTIMES.get(suffix, RUNTIMES[""]).partition(":")
        runtime = getattr(importlib.import_module(module), name)
        if suffix in EXPORT_SUFFIXES:
            return runtime.load(path, device=device)
        return runtime.load(path, weights=weights, device=device)
