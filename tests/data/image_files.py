"""Small image and mask files for the dataset-reader tests (the tests in this folder import it by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: tuple[int, int], value: int | tuple[int, ...] = 128, mode: str = "L") -> None:
    """A uniform ``mode`` image of ``size`` = (width, height) at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def write_box_mask(path: Path, size: tuple[int, int], rows: slice, cols: slice) -> None:
    """A 0/255 mask of ``size`` = (width, height), 255 on ``[rows, cols]``, at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0]), np.uint8)
    a[rows, cols] = 255
    Image.fromarray(a).save(path)
