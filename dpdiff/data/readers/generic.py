"""Generic folder reader: a folder of normal images, folders of abnormal images, mask folders.

For data that follows no benchmark layout (an in-house line camera, a customer's export ...)::

    load_generic(normal_dir, abnormal_dir=None, mask_dir=None, category="generic",
                 train_normal_dir=None, split="test", allow_missing_masks=False)

* ``split="train"``: every image of ``train_normal_dir`` (label 0, defect ``"good"``).
  ``train_normal_dir`` is required for the training split (the test normals of ``normal_dir``
  are never reused for training, so there is no train/test leakage).
* ``split="test"``: every image of ``normal_dir`` (label 0, defect ``"good"``), then every image
  of each abnormal folder (label 1, defect = the folder's name). ``abnormal_dir`` may be one
  folder or a list of folders (MVTec-style ``test/<defect>`` folders).
* Masks (``mask_dir``) are matched to an abnormal image ``<stem>.<ext>`` by stem, in this order:
  ``<stem>_mask.png``, ``<stem>_mask.<any image ext>``, ``<stem>.png``, ``<stem>.<any image ext>``
  (case-insensitive, the same rule as :func:`dpdiff.data.readers.mvtec.find_mask`). ``mask_dir`` is

  - ``None``: no masks at all (``mask_path=None``; classification-only data);
  - one folder: for each abnormal folder ``A`` the masks are looked up in ``mask_dir/<A.name>``
    when that sub-folder exists (MVTec ``ground_truth/<defect>``), otherwise in ``mask_dir``
    itself;
  - a list: one mask folder per abnormal folder, in the same order (same length).

  With a ``mask_dir``, an abnormal image without a mask raises :class:`FileNotFoundError`
  naming the image and the first mask path tried, unless ``allow_missing_masks=True``.
* Images are recognised by extension (:data:`dpdiff.data.types.IMAGE_EXTENSIONS`), hidden
  files are ignored, files are sorted by name; folders are not searched recursively.
* Masks are binarised later with ``> 0`` (:func:`dpdiff.data.dataset.load_mask`).

This module also exports :class:`LayoutError` (defined in :mod:`dpdiff.data.readers.layout`), the error
every reader in :mod:`dpdiff.data.readers` raises when a dataset root does not match the expected
layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpdiff.data.readers.layout import LayoutError, expect_dir, expect_file
from dpdiff.data.readers.mvtec import GOOD, _index_folder, _list_images, find_mask
from dpdiff.data.types import Sample
from dpdiff.utils.errors import ConfigError

__all__ = ["LayoutError", "expect_dir", "expect_file", "load_generic"]


def _as_dir_list(value, name: str) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    out = [Path(v) for v in value]
    if not out:
        raise ConfigError(f"{name} is an empty list")
    return out


def _images_of(folder: Path, what: str) -> list[Path]:
    expect_dir(folder, what)
    return _list_images(folder)


def load_generic(
    normal_dir: Path | str | None,
    abnormal_dir: Path | str | Sequence[Path | str] | None = None,
    mask_dir: Path | str | Sequence[Path | str] | None = None,
    category: str = "generic",
    train_normal_dir: Path | str | None = None,
    split: str = "test",
    allow_missing_masks: bool = False,
) -> list[Sample]:
    """Samples of a generic folder dataset (see the module docstring)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not category or "/" in category:
        raise ConfigError(f"category must be a non-empty name without '/', got {category!r}")
    if split == "train":
        return _training_samples(train_normal_dir, category)

    samples: list[Sample] = []
    if normal_dir is not None:
        samples.extend(
            Sample(p, None, 0, GOOD, category) for p in _images_of(Path(normal_dir), "(normal_dir: normal test images)")
        )
    abnormal_dirs = _as_dir_list(abnormal_dir, "abnormal_dir")
    names = [d.name for d in abnormal_dirs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"abnormal folders must have distinct names (used as defect names), repeated: {dupes}")
    for adir, mdir in zip(abnormal_dirs, _mask_dirs(mask_dir, abnormal_dirs), strict=True):
        samples.extend(_abnormal_samples(adir, mdir, category, allow_missing_masks))
    if not samples:
        raise LayoutError(
            f"no test images: normal_dir={normal_dir!r} and abnormal_dir={abnormal_dir!r} hold no image files",
            None if normal_dir is None else Path(normal_dir),
        )
    return samples


def _training_samples(train_normal_dir: Path | str | None, category: str) -> list[Sample]:
    """Every image of ``train_normal_dir``, as normal training samples."""
    if train_normal_dir is None:
        raise ConfigError(
            "split='train' needs train_normal_dir (the normal images to train on); "
            "normal_dir holds the normal *test* images and is not reused for training"
        )
    images = _images_of(Path(train_normal_dir), "(train_normal_dir: normal training images)")
    if not images:
        raise LayoutError(f"no training images in {str(train_normal_dir)!r}", Path(train_normal_dir))
    return [Sample(p, None, 0, GOOD, category) for p in images]


def _mask_dirs(mask_dir: Path | str | Sequence[Path | str] | None, abnormal_dirs: list[Path]) -> list[Path | None]:
    """The mask folder of each abnormal folder (None: no masks), by the rules of the module docstring."""
    if isinstance(mask_dir, (str, Path)) or mask_dir is None:
        single_mask_dir = None if mask_dir is None else Path(mask_dir)
        mask_dirs: list[Path | None] = []
        for d in abnormal_dirs:
            if single_mask_dir is None:
                mask_dirs.append(None)
            else:
                expect_dir(single_mask_dir, "(mask_dir)")
                sub = single_mask_dir / d.name
                mask_dirs.append(sub if sub.is_dir() else single_mask_dir)
        return mask_dirs
    listed = list(_as_dir_list(mask_dir, "mask_dir"))
    if len(listed) != len(abnormal_dirs):
        raise ConfigError(
            f"mask_dir is a list of {len(listed)} folders but there are {len(abnormal_dirs)} "
            f"abnormal folders: give one mask folder per abnormal folder, in the same order"
        )
    for md in listed:
        expect_dir(md, "(mask_dir)")
    return list(listed)


def _abnormal_samples(adir: Path, mdir: Path | None, category: str, allow_missing_masks: bool) -> list[Sample]:
    """The images of abnormal folder ``adir`` (defect = its name), each with its mask from ``mdir``."""
    defect = adir.name
    if defect == GOOD:
        raise ConfigError(f"abnormal folder {str(adir)!r} is named {GOOD!r}, which is reserved for normal images")
    images = _images_of(adir, "(abnormal_dir: abnormal test images)")
    if mdir is None:
        return [Sample(p, None, 1, defect, category) for p in images]
    if mdir.resolve() == adir.resolve():
        raise ConfigError(f"mask folder {str(mdir)!r} is the abnormal image folder itself; keep masks apart")
    index = _index_folder(mdir)
    samples = []
    for p in images:
        mask, tried = find_mask(mdir, p, index)
        if mask is None and not allow_missing_masks:
            raise FileNotFoundError(
                f"no mask for abnormal image {str(p)!r}: tried {str(tried[0])!r} and the other "
                f"names {', '.join(t.name for t in tried[1:])} in {str(mdir)!r} "
                f"(pass allow_missing_masks=True to accept it without a mask)"
            )
        samples.append(Sample(p, mask, 1, defect, category))
    return samples
