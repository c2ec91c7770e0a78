"""The types every part of :mod:`dpdiff.data` shares: :class:`Sample`, the image extensions, the image listing.

This module imports nothing else from :mod:`dpdiff.data`, so every reader (and code outside the package)
can import it without creating an import cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dpdiff.utils.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "Sample", "is_image_file", "list_images"]

#: Extensions recognised as images (compared lower-cased).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Sample:
    """One image of a dataset (every reader of :mod:`dpdiff.data.readers` returns a list of them)."""

    image_path: Path
    #: ``None`` for good images, and for defective images with image labels only.
    mask_path: Path | None
    #: 0 good, 1 defective.
    label: int
    #: ``"good"`` or the defect folder name.
    defect: str
    category: str
    #: A tile of the image (``data.tiling``): a box ``(x0, y0, x1, y1)`` in the region of interest's pixels; None
    #: (every reader's samples) = the whole image. Training items are tiles: ``dpdiff.data.geometry.tile_samples``.
    crop: tuple[int, int, int, int] | None = None

    @property
    def mask_known(self) -> bool:
        """Whether the ground truth is known pixel by pixel: a normal image (no defect pixel) or a defective
        image with a mask. The pixel metrics use these images only."""
        return self.label == 0 or self.mask_path is not None


def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose extension is in :data:`IMAGE_EXTENSIONS`."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursively, sorted; hidden files skipped). FileNotFoundError when
    it is not a folder, DataError when it holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if is_image_file(p))
    if not paths:
        raise DataError(f"{folder}: no images found (extensions {sorted(IMAGE_EXTENSIONS)})")
    return paths
