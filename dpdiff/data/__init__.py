"""Data: shared types, dataset readers (format registry), torch dataset, procedural synthetic dataset, shared-data
location."""

from __future__ import annotations

import os
from pathlib import Path

from dpdiff.data.readers import FORMATS, LayoutError, detect_format, list_categories_for, load_samples
from dpdiff.data.readers.mvtec import count_samples, list_categories, load_dataset, load_split
from dpdiff.data.synthetic import DEFECT_TYPES, generate_synthetic_dataset
from dpdiff.data.types import IMAGE_EXTENSIONS, Sample

#: Environment variable overriding the shared (read-only) data folder.
SHARED_DATA_ENV = "DPDIFF_SHARED_DATA"


def repo_root() -> Path:
    """The project root (the folder holding the ``dpdiff`` package)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``$DPDIFF_SHARED_DATA`` if set (and non-empty), else ``<repo root>/../shared/data``.

    The folder may not exist; callers (and tests) check and skip with a clear reason. ``shared`` may be a
    symlink: the path goes through it (it is not resolved to the link's target), so it always ends in
    ``shared/data`` next to the checkout.
    """
    env = os.environ.get(SHARED_DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return repo_root().parent / "shared" / "data"  # repo_root() is absolute already


def __getattr__(name: str):
    # torch is only imported when the torch Dataset is asked for
    if name in ("ImageDataset", "load_image_rgb", "load_image_array", "load_mask", "IMAGENET_MEAN", "IMAGENET_STD"):
        from dpdiff.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMATS",
    "LayoutError",
    "detect_format",
    "list_categories_for",
    "load_samples",
    "IMAGE_EXTENSIONS",
    "SHARED_DATA_ENV",
    "Sample",
    "count_samples",
    "list_categories",
    "load_dataset",
    "load_split",
    "DEFECT_TYPES",
    "generate_synthetic_dataset",
    "repo_root",
    "shared_data_dir",
    "ImageDataset",
    "load_image_rgb",
    "load_image_array",
    "load_mask",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
