"""Reader for datasets stored in the MVTec-AD folder layout.

Layout (one folder per category under ``root``)::

    <root>/<category>/train/good/<image>
    <root>/<category>/test/good/<image>
    <root>/<category>/test/<defect>/<image>
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

MVTec-AD, MTD (as prepared in ``shared/data``), VisA/MPDD/BTAD conversions all follow this
layout, but mask names vary, so for a defective image ``<stem>.<ext>`` the mask is looked up, in
this order, as ``<stem>_mask.png``, ``<stem>_mask.<any image ext>``, ``<stem>.png`` and
``<stem>.<any image ext>`` (file names matched case-insensitively).

Rules:

* Image files are recognised by extension (:data:`dpdiff.data.types.IMAGE_EXTENSIONS`, case-insensitive); other
  files (``.txt``, ``Thumbs.db`` ...) are skipped, and hidden files/folders (leading ``.``) are
  ignored everywhere.
* The training split is ``train/good`` only (unsupervised setting); every training sample is
  labelled good.
* In the test split the folder ``good`` gives label 0 and every other folder is a defect type
  (label 1). A defect type with no ``ground_truth/<defect>`` folder at all has image labels only:
  its samples get ``mask_path=None`` (left out of the pixel metrics) and one log line per load says
  which defect types have no masks; a data set without ``ground_truth/`` is a labels-only set. Where
  the folder exists, a defective image without a mask in it raises :class:`FileNotFoundError` naming
  the image and every mask path tried (a half-filled mask folder is a mistake, not a labels-only
  set), unless ``allow_missing_masks=True`` (then ``mask_path`` is ``None``).
* Order is deterministic: categories sorted, within a category ``good`` first then the defect
  folders sorted by name, and files sorted by name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from dpdiff.data.readers.layout import resolve_categories
from dpdiff.data.types import IMAGE_EXTENSIONS, Sample, is_image_file
from dpdiff.utils.errors import DataError

__all__ = [
    "SPLITS",
    "list_categories",
    "load_split",
    "load_dataset",
    "find_mask",
    "count_samples",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
GOOD = "good"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def _list_subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _visible(p) and p.is_dir()), key=lambda p: p.name)


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} is not a directory")
    return root


def list_categories(root: Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that contain ``train/good``."""
    root = _check_root(root)
    cats = [p.name for p in _list_subdirs(root) if (p / "train" / GOOD).is_dir()]
    if not cats:
        raise DataError(
            f"no category found under {str(root)!r}: expected sub-folders containing "
            f"'train/good' (MVTec-AD layout <root>/<category>/train/good/...)"
        )
    return cats


def _mask_candidates(stem: str) -> list[str]:
    exts = [".png"] + sorted(IMAGE_EXTENSIONS - {".png"})
    return [f"{stem}_mask{e}" for e in exts] + [f"{stem}{e}" for e in exts]


def find_mask(gt_dir: Path, image_path: Path, _index: dict[str, Path] | None = None) -> tuple[Path | None, list[Path]]:
    """Look up the mask of ``image_path`` in ``gt_dir``.

    Returns ``(mask_path or None, candidate paths tried)``.
    """
    candidates = _mask_candidates(Path(image_path).stem)
    if _index is None:
        _index = _index_folder(gt_dir)
    for name in candidates:
        hit = _index.get(name.lower())
        if hit is not None:
            return hit, [gt_dir / c for c in candidates]
    return None, [gt_dir / c for c in candidates]


def _index_folder(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    if folder.is_dir():
        # sorted so that, if two names differ only by case, the choice is deterministic
        for p in sorted(folder.iterdir(), key=lambda p: p.name):
            if is_image_file(p):
                index.setdefault(p.name.lower(), p)
    return index


def load_split(
    root: Path, category: str, split: str, allow_missing_masks: bool = False, _unmasked: list | None = None
) -> list[Sample]:
    """Samples of one category and split (``"train"`` or ``"test"``), deterministically sorted.
    ``_unmasked``: when given, ``"<category>/<defect>"`` of the defect types without a mask folder are added
    to it instead of logged (:func:`load_dataset` logs them in one line)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _check_root(root)
    cat_dir = root / category
    if not cat_dir.is_dir():
        try:
            available = list_categories(root)
        except ValueError:
            available = []
        raise FileNotFoundError(f"category folder {str(cat_dir)!r} does not exist (available categories: {available})")
    split_dir = cat_dir / split

    if split == "train":
        good_dir = split_dir / GOOD
        if not good_dir.is_dir():
            raise DataError(f"category {category!r} has no training folder {str(good_dir)!r}")
        images = _list_images(good_dir)
        if not images:
            raise DataError(f"category {category!r} has no training images in {str(good_dir)!r}")
        return [Sample(p, None, 0, GOOD, category) for p in images]

    if not split_dir.is_dir():
        raise DataError(f"category {category!r} has no test folder {str(split_dir)!r}")
    defect_dirs = _list_subdirs(split_dir)
    defect_dirs.sort(key=lambda p: (p.name != GOOD, p.name))
    samples: list[Sample] = []
    unmasked: list[str] = [] if _unmasked is None else _unmasked
    for ddir in defect_dirs:
        defect = ddir.name
        images = _list_images(ddir)
        if defect == GOOD:
            samples.extend(Sample(p, None, 0, GOOD, category) for p in images)
            continue
        gt_dir = cat_dir / "ground_truth" / defect
        if not gt_dir.is_dir():  # image labels only for this defect type
            unmasked.append(f"{category}/{defect}")
            samples.extend(Sample(p, None, 1, defect, category) for p in images)
            continue
        index = _index_folder(gt_dir)
        for p in images:
            mask, tried = find_mask(gt_dir, p, index)
            if mask is None and not allow_missing_masks:
                names = ", ".join(t.name for t in tried)
                raise FileNotFoundError(
                    f"no ground-truth mask for defective image {str(p)!r}: tried {str(tried[0])!r} "
                    f"and the other names in {str(gt_dir)!r}: {names} "
                    f"(pass allow_missing_masks=True to accept it without a mask)"
                )
            samples.append(Sample(p, mask, 1, defect, category))
    if not samples:
        raise DataError(f"category {category!r} has no test images under {str(split_dir)!r}")
    if _unmasked is None:
        log_unmasked(unmasked)
    return samples


def log_unmasked(unmasked: Sequence[str]) -> None:
    """The one log line saying which defect types have image labels only (no ground-truth masks)."""
    if unmasked:
        logger.info(
            "no ground-truth masks for %d defect type(s) (%s): image labels only there; pixel metrics use the "
            "images with masks, and are not available where no defective image has one",
            len(unmasked),
            ", ".join(unmasked[:8]) + (" ..." if len(unmasked) > 8 else ""),
        )


def load_dataset(
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    allow_missing_masks: bool = False,
) -> list[Sample]:
    """Concatenate :func:`load_split` over ``categories`` (all of :func:`list_categories` if None)."""
    out: list[Sample] = []
    unmasked: list[str] = []
    for cat in resolve_categories(categories, lambda: list_categories(root)):
        out.extend(load_split(root, cat, split, allow_missing_masks=allow_missing_masks, _unmasked=unmasked))
    log_unmasked(unmasked)
    return out


def count_samples(samples: Iterable[Sample]) -> dict[tuple[str, str], int]:
    """``{(category, defect): count}`` - handy for logging and sanity checks."""
    counts: dict[tuple[str, str], int] = {}
    for s in samples:
        counts[(s.category, s.defect)] = counts.get((s.category, s.defect), 0) + 1
    return counts
