"""BTAD (beanTech Anomaly Detection) read in place, all categories in one call.

Layout of the BTAD download (``btad.zip``; sources in ``docs/datasets.md``)::

    <root>/01/train/ok/0000.bmp
    <root>/01/test/ok/0000.bmp
    <root>/01/test/ko/0000.bmp
    <root>/01/ground_truth/ko/0000.png       (01 and 02: PNG masks)
    <root>/02/...                             (images .png)
    <root>/03/ground_truth/ko/0000.bmp       (03: BMP masks)

* Categories: the sub-folders of ``root`` holding ``train/ok`` (``01``, ``02``, ``03`` in BTAD),
  sorted.
* ``ok`` images are normal (label 0, defect ``"good"``); ``ko`` images are defective (label 1,
  defect :data:`KO_DEFECT` = ``"defect"``: BTAD has no defect types). The training split is
  ``train/ok`` only.
* The mask of ``test/ko/<stem>.<ext>`` is ``ground_truth/ko/<stem>.png`` or
  ``ground_truth/ko/<stem>.bmp`` (same stem, no ``_mask`` suffix; names matched
  case-insensitively). A defective image without a mask raises :class:`LayoutError` naming the
  image and both names tried, unless ``allow_missing_masks=True``.
* Images are recognised by extension (:data:`dpdiff.data.types.IMAGE_EXTENSIONS`), hidden files
  are ignored, files are sorted by name; within a category the ``ok`` test images come first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dpdiff.data.readers.layout import LayoutError, expect_dir, resolve_categories
from dpdiff.data.readers.mvtec import GOOD, _index_folder, _list_images, _list_subdirs
from dpdiff.data.types import Sample

__all__ = [
    "BTAD_CATEGORIES",
    "OK",
    "KO",
    "KO_DEFECT",
    "MASK_EXTENSIONS",
    "list_categories",
    "load_btad",
    "find_btad_mask",
]

#: The three BTAD products (for reference; the reader lists what is on disk).
BTAD_CATEGORIES = ("01", "02", "03")
OK = "ok"
KO = "ko"
#: Defect name given to BTAD ``ko`` images (BTAD has no per-image defect type).
KO_DEFECT = "defect"
#: Mask extensions, in lookup order (PNG in 01 and 02, BMP in 03).
MASK_EXTENSIONS = (".png", ".bmp")


def _has_train_ok(cat_dir: Path) -> bool:
    return (cat_dir / "train" / OK).is_dir()


def list_categories(root: Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that contain ``train/ok``."""
    root = expect_dir(Path(root), "(BTAD root)")
    cats = [p.name for p in _list_subdirs(root) if _has_train_ok(p)]
    if not cats:
        subs = [p.name for p in _list_subdirs(root)]
        first = root / (subs[0] if subs else "01") / "train" / OK
        raise LayoutError(
            f"expected {str(first)!r} for BTAD (layout <root>/<category>/train/ok, test/ok, test/ko, "
            f"ground_truth/ko): no sub-folder of {str(root)!r} has train/ok",
            first,
        )
    return cats


def find_btad_mask(
    gt_dir: Path, image_path: Path, _index: dict[str, Path] | None = None
) -> tuple[Path | None, list[Path]]:
    """``(mask or None, candidate paths tried)`` for a ``ko`` image: ``<stem>.png`` then ``<stem>.bmp``."""
    stem = Path(image_path).stem
    candidates = [gt_dir / f"{stem}{ext}" for ext in MASK_EXTENSIONS]
    index = _index_folder(gt_dir) if _index is None else _index
    for c in candidates:
        hit = index.get(c.name.lower())
        if hit is not None:
            return hit, candidates
    return None, candidates


def _load_category(root: Path, cat: str, split: str, allow_missing_masks: bool) -> list[Sample]:
    cat_dir = root / cat
    if not cat_dir.is_dir():
        raise LayoutError(
            f"expected BTAD category folder {str(cat_dir)!r} (available categories: {list_categories(root)})", cat_dir
        )
    if split == "train":
        folder = expect_dir(cat_dir / "train" / OK, f"(BTAD category {cat!r}: normal training images)")
        images = _list_images(folder)
        if not images:
            raise LayoutError(f"BTAD category {cat!r} has no training images in {str(folder)!r}", folder)
        return [Sample(p, None, 0, GOOD, cat) for p in images]

    test_dir = expect_dir(cat_dir / "test", f"(BTAD category {cat!r}: test images in ok/ and ko/)")
    samples: list[Sample] = []
    ok_dir = test_dir / OK
    if ok_dir.is_dir():
        samples.extend(Sample(p, None, 0, GOOD, cat) for p in _list_images(ok_dir))
    ko_dir = test_dir / KO
    if ko_dir.is_dir():
        gt_dir = cat_dir / "ground_truth" / KO
        index = _index_folder(gt_dir)
        for p in _list_images(ko_dir):
            mask, tried = find_btad_mask(gt_dir, p, index)
            if mask is None and not allow_missing_masks:
                raise LayoutError(
                    f"expected mask {str(tried[0])!r} or {tried[1].name!r} for defective BTAD image {str(p)!r} "
                    f"(pass allow_missing_masks=True to accept it without a mask)",
                    tried[0],
                )
            samples.append(Sample(p, mask, 1, KO_DEFECT, cat))
    if not samples:
        raise LayoutError(
            f"BTAD category {cat!r} has no test images: expected {str(ok_dir)!r} and/or {str(ko_dir)!r}", ok_dir
        )
    return samples


def load_btad(
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    allow_missing_masks: bool = False,
) -> list[Sample]:
    """BTAD samples of ``categories`` (all of :func:`list_categories` when ``None``) for ``split``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = expect_dir(Path(root), "(BTAD root)")
    out: list[Sample] = []
    for cat in resolve_categories(categories, lambda: list_categories(root)):
        out.extend(_load_category(root, cat, split, allow_missing_masks))
    return out
