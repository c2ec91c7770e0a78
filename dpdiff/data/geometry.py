"""Image geometry, in one place: how an image becomes the model input and how a model map goes back onto it.

:class:`ImageGeometry` (frozen; :meth:`ImageGeometry.from_config` reads ``backbone.image_size``,
``data.resize``, ``data.roi`` and ``evaluation.resolution``) is used by every consumer: the datasets (training,
evaluation), the feature cache key, the predictors of every runtime (PyTorch, ONNX, OpenVINO), ``dpdiff serve``,
the ONNX export and the figures. Numpy and Pillow only (the onnxruntime path imports no torch).

Three frames (docs/datasets.md, "Image geometry"):

* **image**: the file's own pixels ``(H_img, W_img)``; the region of interest ``data.roi`` is a box in it (pixels
  or fractions), cut out first, before anything else.
* **model input** ``(H, W)`` (``backbone.image_size``): the ROI crop resized into it, ``stretch`` = directly to
  ``H x W`` (aspect not kept; today's behaviour), ``keep_aspect`` = letterboxed: resized to fit inside ``H x W``
  with its aspect ratio kept (PIL bicubic), centred, the rest padded with the normalisation mean (0 after
  normalisation). The model's maps come out on this frame at the map size ``(Hm, Wm)``
  (``evaluation.resolution``).
* **evaluation**: the ROI crop stretched to ``(Hm, Wm)``: masks and maps are compared there. With ``stretch``
  it is the model's frame itself (no resampling: the maps are used as they come); with ``keep_aspect`` the map
  is cut to the content region (the padding is never scored) and resized to ``(Hm, Wm)``.

``map_to_image`` brings a model map back to the image's own size: cut to the content region (letterbox), resized
(bilinear) to the ROI's size and placed in a zero map of the image's size (0 outside the ROI).

The tiling hook: :meth:`ImageGeometry.model_input` and :meth:`ImageGeometry.map_to_image` take an extra ``crop``
box in ROI coordinates (a tile), applied after the ROI.

Tiles (``data.tiling``, :class:`~dpdiff.data.tiling.TilingSpec`; docs/guides/high-resolution.md): the ROI crop is
cut into tiles (:meth:`ImageGeometry.tile_plan`), each tile is a model input of its own (``model_input(im,
crop=tile)``), and the tiles' maps are stitched (cosine window, :class:`~dpdiff.data.tiling.Stitcher`) into a
**frame**: the ROI crop scaled by ``map_size / tile_size``, so every tile's map lands there at its own resolution
(no resampling for full tiles). With tiling the maps a predictor hands on are frames: :meth:`map_to_image`
resizes the frame to the ROI (0 outside it) and :meth:`eval_map` to the evaluation frame ``(Hm, Wm)`` of the ROI
crop; the image score is the configured rule on the frame (:func:`~dpdiff.data.tiling.frame_score`). One tile
covering the whole ROI gives a frame equal to the model's map, so the untiled map and score exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dpdiff.choices import RESIZE_MODES
from dpdiff.config_checks import check_roi
from dpdiff.data.images import _to_rgb, load_image_rgb, normalized_image_array, resize_binarise_mask
from dpdiff.data.tiling import Box as TileBox
from dpdiff.data.tiling import TilingSpec, to_xyxy
from dpdiff.data.types import Sample
from dpdiff.utils.errors import ConfigError, DataError
from dpdiff.utils.sizes import as_hw, hw_json

if TYPE_CHECKING:  # pragma: no cover
    from dpdiff.config import Config

__all__ = [
    "Box",
    "ImageGeometry",
    "TilePlan",
    "as_geometry",
    "eval_image_array",
    "evaluation_size",
    "image_wh",
    "resize_map",
    "tile_samples",
]

#: A pixel box ``(x0, y0, x1, y1)``: columns x0..x1-1, rows y0..y1-1 (PIL's ``crop`` convention).
Box = tuple[int, int, int, int]


def resize_map(anomaly_map: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """A float map resized to ``(H, W)`` bilinearly (PIL, float32); a copy when it already has that size."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape == (int(size_hw[0]), int(size_hw[1])):
        return m.copy()
    out = Image.fromarray(m).resize((int(size_hw[1]), int(size_hw[0])), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32).copy()


def evaluation_size(image_size: int | Sequence[int], resolution: int | Sequence[int] | None) -> tuple[int, int]:
    """The map size ``(Hm, Wm)`` (``evaluation.resolution``): null -> the input ``(H, W)``; ``[H, W]`` as given;
    one int -> the side of a square for a square input (as before non-square inputs existed), else the long
    side, the short one following the input's aspect ratio (rounded, at least 1)."""
    h, w = as_hw(image_size, "backbone.image_size")
    if resolution is None:
        return h, w
    if not isinstance(resolution, int) or isinstance(resolution, bool):
        return as_hw(resolution, "evaluation.resolution")
    r = int(resolution)
    if r < 1:
        raise ConfigError(f"evaluation.resolution: must be >= 1, got {resolution!r}")
    if h == w:
        return r, r
    if h > w:
        return r, max(1, round(r * w / h))
    return max(1, round(r * h / w)), r


def _check_roi(roi: Sequence[Any] | None) -> tuple[int | float, ...] | None:
    """``data.roi`` validated (:func:`dpdiff.config_checks.check_roi`): pixels as ints, fractions as floats."""
    if roi is None:
        return None
    check_roi(roi)
    if all(isinstance(v, int) for v in roi):
        return tuple(int(v) for v in roi)
    return tuple(float(v) for v in roi)


def _half_up(num: int, den: int) -> int:
    """``round(num / den)`` with halves rounded up, in integers (exact: tile boxes on the frame stay aligned)."""
    return (2 * num + den) // (2 * den)


@dataclass(frozen=True)
class TilePlan:
    """How one image is tiled (:meth:`ImageGeometry.tile_plan`): ``crops`` = the tiles as ``(x0, y0, x1, y1)``
    boxes in ROI coordinates (``model_input``'s ``crop``), ``frame_boxes`` = where each tile's map lands in the
    frame (``(y0, x0, y1, x1)``, :class:`~dpdiff.data.tiling.Stitcher`'s order), ``frame_hw`` = the frame's size
    (the ROI crop scaled by map size / tile size), ``tile_wh`` = the tiles' size in pixels."""

    crops: list[Box]
    frame_boxes: list[TileBox]
    frame_hw: tuple[int, int]
    tile_wh: tuple[int, int]


@dataclass(frozen=True)
class ImageGeometry:
    """The geometry of the model input (module docstring): ``size`` = (H, W) of the input, ``resize``
    (``stretch`` | ``keep_aspect``), ``roi`` (None, or ``(x0, y0, x1, y1)`` in pixels (ints) or fractions
    (floats) of the image), ``map_size`` = (Hm, Wm) of the maps (None: the input size)."""

    size: tuple[int, int]
    resize: str = "stretch"
    roi: tuple[int | float, ...] | None = None
    map_size: tuple[int, int] | None = None
    #: ``data.tiling`` (module docstring): None = the whole ROI is one model input (no tiles).
    tiling: TilingSpec | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "tiling", TilingSpec.parse(self.tiling))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        object.__setattr__(self, "size", as_hw(self.size, "backbone.image_size"))
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"data.resize: {self.resize!r} is not allowed; choose one of {', '.join(RESIZE_MODES)}")
        object.__setattr__(self, "roi", _check_roi(self.roi))
        if self.map_size is not None:
            object.__setattr__(self, "map_size", as_hw(self.map_size, "evaluation.resolution"))

    # ------------------------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: Config) -> ImageGeometry:
        """The geometry of ``cfg``: ``backbone.image_size``, ``data.resize``, ``data.roi``,
        ``evaluation.resolution`` (:func:`evaluation_size`)."""
        size = as_hw(cfg.backbone.image_size, "backbone.image_size")
        roi = cfg.data.roi
        return cls(
            size,
            cfg.data.resize,
            tuple(roi) if roi is not None else None,
            evaluation_size(size, cfg.evaluation.resolution),
            TilingSpec.parse(cfg.data.tiling),
        )

    @classmethod
    def from_dict(cls, d: dict) -> ImageGeometry:
        """The inverse of :meth:`to_dict` (metadata of an exported model)."""
        roi = d.get("roi")
        return cls(
            as_hw(d["size"]),
            str(d.get("resize", "stretch")),
            tuple(roi) if roi is not None else None,
            as_hw(d["map_size"]) if d.get("map_size") is not None else None,
            TilingSpec.parse(d.get("tiling")),
        )

    def to_dict(self) -> dict:
        """JSON-ready: ``{"size": [H, W], "resize", "roi", "map_size": [Hm, Wm]}``, and ``"tiling"`` (the
        config value) only when tiled (untiled dicts stay as they were before tiles existed)."""
        out: dict[str, Any] = {
            "size": list(self.size),
            "resize": self.resize,
            "roi": None if self.roi is None else list(self.roi),
            "map_size": list(self.map_hw),
        }
        if self.tiling is not None:
            out["tiling"] = self.tiling.to_config()
        return out

    # ------------------------------------------------------------------------------------ properties
    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    @property
    def map_hw(self) -> tuple[int, int]:
        """(Hm, Wm): the size of the model's maps and of the evaluation frame."""
        return self.map_size if self.map_size is not None else self.size

    @property
    def is_plain(self) -> bool:
        """True for today's geometry: a direct resize of the whole image (no ROI, no letterbox), whatever
        the sizes; nothing is cut or padded, and maps are used as they come."""
        return self.resize == "stretch" and self.roi is None and self.tiling is None

    def input_key(self) -> dict:
        """What the model input depends on (the feature cache key): size, resize mode, ROI. A plain square
        geometry is ``{"image_size": S}``, the key of caches made before the other forms existed."""
        if self.is_plain and self.size[0] == self.size[1]:
            return {"image_size": self.size[0]}
        key: dict[str, Any] = {
            "image_size": list(self.size),
            "resize": self.resize,
            "roi": None if self.roi is None else list(self.roi),
        }
        if self.tiling is not None:  # tile features are keyed per tile too (the crop is in the image identity)
            key["tiling"] = self.tiling.to_config()
        return key

    def describe(self) -> str:
        """One line for results files and logs."""
        h, w = self.size
        how = (
            f"letterboxed into {h}x{w} (aspect kept, padded with the normalisation mean)"
            if self.resize == "keep_aspect"
            else (f"direct resize to {h}^2 (aspect not kept)" if h == w else f"direct resize to {h}x{w} (HxW)")
        )
        roi = "" if self.roi is None else f"region of interest {list(self.roi)} cut out first, then "
        if self.tiling is None:
            return f"images: {roi}{how}"
        t = self.tiling
        if t.tile is not None:
            tiles = f"tiles of {t.tile[0]}x{t.tile[1]} px"
        else:
            rows, cols = t.grid or (0, 0)
            tiles = f"a {rows}x{cols} grid of tiles"
        return (
            f"images: {roi}cut into {tiles} (overlap {t.overlap:g}), each {how}; tile maps stitched with a "
            f"cosine window"
        )

    # ------------------------------------------------------------------------------------ boxes
    def roi_box(self, image_wh: Sequence[int], source: str | None = None) -> Box:
        """The ROI as a pixel box of an image of size ``(W, H)`` (the whole image without a ROI). Fractions are
        rounded to pixels (at least one pixel wide and high); a pixel ROI reaching outside the image is a
        DataError naming ``source``."""
        w, h = int(image_wh[0]), int(image_wh[1])
        if self.roi is None:
            return 0, 0, w, h
        if all(isinstance(v, int) for v in self.roi):
            x0, y0, x1, y1 = (int(v) for v in self.roi)
            if x1 > w or y1 > h:
                where = f"image {source!r}" if source else "an image"
                raise DataError(
                    f"{where} is {w}x{h} (WxH), smaller than data.roi {list(self.roi)} (pixels): "
                    f"give the box in fractions of the image or crop it to the smallest image"
                )
            return x0, y0, x1, y1
        fx0, fy0, fx1, fy1 = (float(v) for v in self.roi)
        x0, y0 = min(int(round(fx0 * w)), w - 1), min(int(round(fy0 * h)), h - 1)
        x1, y1 = max(int(round(fx1 * w)), x0 + 1), max(int(round(fy1 * h)), y0 + 1)
        return x0, y0, min(x1, w), min(y1, h)

    def crop_box(self, image_wh: Sequence[int], crop: Box | None = None, source: str | None = None) -> Box:
        """The pixel box of the image the model sees: the ROI, or ``crop`` (a box in ROI coordinates, e.g. a
        tile) inside it."""
        x0, y0, x1, y1 = self.roi_box(image_wh, source)
        if crop is None:
            return x0, y0, x1, y1
        cx0, cy0, cx1, cy1 = (int(v) for v in crop)
        if not (0 <= cx0 < cx1 <= x1 - x0 and 0 <= cy0 < cy1 <= y1 - y0):
            raise ValueError(f"crop box {crop} is not inside the region of interest of size {x1 - x0}x{y1 - y0}")
        return x0 + cx0, y0 + cy0, x0 + cx1, y0 + cy1

    def tile_plan(self, image_wh: Sequence[int], source: str | None = None) -> TilePlan:
        """The tiles of an image of size ``(W, H)`` (module docstring) and where their maps land in the frame.

        The frame is the ROI crop scaled by ``map_size / tile_size`` per axis (rounded half up, in integers), so
        every tile's box in it is exactly ``(Hm, Wm)``: its map is added at its own resolution. Without
        ``data.tiling``: one tile, the whole ROI (the frame is then the model's map)."""
        x0, y0, x1, y1 = self.roi_box(image_wh, source)
        rh, rw = y1 - y0, x1 - x0
        boxes = self.tiling.boxes((rh, rw)) if self.tiling is not None else [(0, 0, rh, rw)]
        th, tw = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]  # every box has this size
        hm, wm = self.map_hw
        fh, fw = max(1, _half_up(rh * hm, th)), max(1, _half_up(rw * wm, tw))
        frame_boxes: list[TileBox] = []
        for by0, bx0, by1, bx1 in boxes:
            fy0, fx0 = min(_half_up(by0 * hm, th), fh - 1), min(_half_up(bx0 * wm, tw), fw - 1)
            fy1, fx1 = max(_half_up(by1 * hm, th), fy0 + 1), max(_half_up(bx1 * wm, tw), fx0 + 1)
            frame_boxes.append((fy0, fx0, min(fy1, fh), min(fx1, fw)))
        return TilePlan([to_xyxy(b) for b in boxes], frame_boxes, (fh, fw), (tw, th))

    def tile_content(self, model_map: np.ndarray, plan: TilePlan) -> np.ndarray:
        """The part of one tile's model map that covers the tile (all of it, unless letterboxed)."""
        return self._content(model_map, plan.tile_wh)

    def content_box(self, crop_wh: Sequence[int], frame_hw: Sequence[int] | None = None) -> Box:
        """Where a crop of size ``(w, h)`` lies in a frame of ``frame_hw`` (default: the model input's ``(H, W)``):
        the whole frame (stretch), or the centred letterbox (keep_aspect: scaled by min(W/w, H/h), at least one
        pixel). On the map frame ``(Hm, Wm)`` the box is the input's scaled (the map covers the input)."""
        H, W = self.size
        cw, ch = int(crop_wh[0]), int(crop_wh[1])
        if self.resize == "stretch":
            x0, y0, x1, y1 = 0, 0, W, H
        else:
            scale = min(W / cw, H / ch)
            nw, nh = min(W, max(1, int(round(cw * scale)))), min(H, max(1, int(round(ch * scale))))
            x0, y0 = (W - nw) // 2, (H - nh) // 2
            x1, y1 = x0 + nw, y0 + nh
        if frame_hw is None or tuple(int(v) for v in frame_hw) == (H, W):
            return x0, y0, x1, y1
        fh, fw = int(frame_hw[0]), int(frame_hw[1])
        sx, sy = fw / W, fh / H
        mx0, my0 = min(int(round(x0 * sx)), fw - 1), min(int(round(y0 * sy)), fh - 1)
        mx1, my1 = max(int(round(x1 * sx)), mx0 + 1), max(int(round(y1 * sy)), my0 + 1)
        return mx0, my0, min(mx1, fw), min(my1, fh)

    # ------------------------------------------------------------------------------------ image -> model
    def model_input(
        self,
        im: Image.Image,
        mean: Sequence[float] | np.ndarray,
        std: Sequence[float] | np.ndarray,
        crop: Box | None = None,
        source: str | None = None,
    ) -> np.ndarray:
        """The model input of one image, float32 ``(3, H, W)``: 8-bit RGB, the ROI (and ``crop``, in ROI
        coordinates) cut out, then stretched or letterboxed (module docstring), ``(x / 255 - mean) / std``; the
        letterbox padding is 0 (the mean). A plain geometry gives exactly
        :func:`~dpdiff.data.images.normalized_image_array` of the whole image."""
        rgb = _to_rgb(im)
        box = self.crop_box(rgb.size, crop, source)
        if box != (0, 0, rgb.size[0], rgb.size[1]):
            rgb = rgb.crop(box)
        if self.resize == "stretch":
            return normalized_image_array(rgb, self.size, mean, std)
        x0, y0, x1, y1 = self.content_box(rgb.size)
        out = np.zeros((3, *self.size), dtype=np.float32)
        out[:, y0:y1, x0:x1] = normalized_image_array(rgb, (y1 - y0, x1 - x0), mean, std)
        return out

    # ------------------------------------------------------------------------ model map -> image, evaluation
    def _content(self, model_map: np.ndarray, crop_wh: Sequence[int]) -> np.ndarray:
        """The part of a model-frame map that covers the image content (all of it, unless letterboxed)."""
        m = np.asarray(model_map, dtype=np.float32)
        if self.resize == "stretch":
            return m
        x0, y0, x1, y1 = self.content_box(crop_wh, m.shape[-2:])
        return m[..., y0:y1, x0:x1]

    def map_to_image(
        self, model_map: np.ndarray, image_hw: Sequence[int], crop: Box | None = None, source: str | None = None
    ) -> np.ndarray:
        """A model map (any size, on the model's input frame) -> float32 ``(H_img, W_img)`` at the image's own
        size: cut to the content region (letterbox), resized bilinearly to the ROI (or ``crop``) and placed in
        it; 0 outside. A plain geometry is one bilinear resize of the whole map (as before).

        Tiled (``data.tiling``, no ``crop``): ``model_map`` is the stitched frame of the ROI (module docstring),
        resized bilinearly to the ROI and placed in it; 0 outside."""
        h, w = int(image_hw[0]), int(image_hw[1])
        x0, y0, x1, y1 = self.crop_box((w, h), crop, source)
        if self.tiling is not None and crop is None:
            part = resize_map(model_map, (y1 - y0, x1 - x0))
        else:
            part = resize_map(self._content(model_map, (x1 - x0, y1 - y0)), (y1 - y0, x1 - x0))
        if (x0, y0, x1, y1) == (0, 0, w, h):
            return part
        out = np.zeros((h, w), dtype=np.float32)
        out[y0:y1, x0:x1] = part
        return out

    def eval_map(self, model_map: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
        """A model map ``(Hm, Wm)`` on the evaluation frame (module docstring): the map itself unless letterboxed;
        then its content region resized to ``(Hm, Wm)`` (the padding is not scored). Tiled: ``model_map`` is
        the stitched frame of the ROI, resized to ``(Hm, Wm)``."""
        m = np.asarray(model_map, dtype=np.float32)
        if self.tiling is not None:
            return resize_map(m, self.map_hw)
        if self.resize == "stretch":
            return m
        x0, y0, x1, y1 = self.roi_box((int(image_hw[1]), int(image_hw[0])))
        return resize_map(self._content(m, (x1 - x0, y1 - y0)), m.shape[-2:])

    def eval_mask(
        self, values: np.ndarray, threshold: float = 0.0, mode: str = "nearest", source: str | None = None
    ) -> np.ndarray:
        """Mask values ``(H_img, W_img)`` in [0, 1] -> bool ``(Hm, Wm)`` on the evaluation frame: the ROI cut out,
        resized (``mode``) and binarised (``> threshold``) as :func:`~dpdiff.data.images.resize_binarise_mask`."""
        h, w = values.shape[:2]
        x0, y0, x1, y1 = self.roi_box((w, h), source)
        if (x0, y0, x1, y1) != (0, 0, w, h):
            values = values[y0:y1, x0:x1]
        return resize_binarise_mask(values, self.map_hw, threshold, mode)

    def eval_image(self, im: Image.Image) -> np.ndarray:
        """``uint8 (Hm, Wm, 3)``: the image on the evaluation frame (ROI cut out, bicubic resize), what the
        overlays and the report draw the maps on."""
        rgb = _to_rgb(im)
        box = self.roi_box(rgb.size)
        if box != (0, 0, rgb.size[0], rgb.size[1]):
            rgb = rgb.crop(box)
        hm, wm = self.map_hw
        if rgb.size != (wm, hm):
            rgb = rgb.resize((wm, hm), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8).copy()

    def roi_pixels(self, image_hw: Sequence[int]) -> list[int] | None:
        """The ROI of an image of ``(H, W)`` as ``[x0, y0, x1, y1]`` pixels (what a Prediction reports); None
        without a ROI."""
        if self.roi is None:
            return None
        return list(self.roi_box((int(image_hw[1]), int(image_hw[0]))))

    def map_size_json(self) -> int | list[int]:
        return hw_json(self.map_hw)


def image_wh(path: str | Path) -> tuple[int, int]:
    """An image file's ``(W, H)``, read from its header (the pixels are not decoded)."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {str(path)!r}: {e}") from e


def tile_samples(samples: Sequence[Sample], geometry: ImageGeometry) -> list[Sample]:
    """The training items of ``samples`` under ``geometry``: each image's tiles (``data.tiling``; a
    :class:`~dpdiff.data.types.Sample` per tile with its ``crop``, in the image's order, tiles row-major), or
    ``samples`` unchanged without tiling. Samples that already are tiles stay as they are."""
    if geometry.tiling is None:
        return list(samples)
    out: list[Sample] = []
    for s in samples:
        if s.crop is not None:
            out.append(s)
            continue
        plan = geometry.tile_plan(image_wh(s.image_path), str(s.image_path))
        out.extend(dataclasses.replace(s, crop=crop) for crop in plan.crops)
    return out


def as_geometry(size: int | Sequence[int] | ImageGeometry) -> ImageGeometry:
    """An :class:`ImageGeometry` as given, or the plain geometry of a size (one int or ``(H, W)``): what the
    functions that took an image size before take now."""
    if isinstance(size, ImageGeometry):
        return size
    return ImageGeometry(as_hw(size))


def eval_image_array(
    path: str | Path, size: int | Sequence[int], roi: Sequence[int | float] | None = None
) -> np.ndarray:
    """``uint8 (H, W, 3)``: the image file on the evaluation frame of ``size`` (a square side or (H, W)), cut to
    ``roi`` (``data.roi``) first: what overlays and the report draw maps on (:meth:`ImageGeometry.eval_image`)."""
    hw = as_hw(size)
    return ImageGeometry(hw, roi=None if roi is None else tuple(roi)).eval_image(load_image_rgb(path))
