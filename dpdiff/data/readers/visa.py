"""VisA read in place from its official 1-class split file, without conversion.

On-disk layout of the VisA download (``VisA_20220922.tar``; verified against
``amazon-science/spot-diff``: ``split_csv/1cls.csv`` and ``utils/prepare_data.py``)::

    <root>/split_csv/1cls.csv
    <root>/<object>/Data/Images/Normal/<name>.JPG
    <root>/<object>/Data/Images/Anomaly/<name>.JPG
    <root>/<object>/Data/Masks/Anomaly/<name>.png
    <root>/<object>/image_anno.csv          (not used)

``1cls.csv`` has the header ``object,split,label,image,mask``; ``split`` is ``train``/``test``,
``label`` is ``normal``/``anomaly``, ``image`` and ``mask`` are paths relative to ``<root>``
(e.g. ``candle/Data/Images/Anomaly/000.JPG``, ``candle/Data/Masks/Anomaly/000.png``); ``mask``
is empty for normal rows. In the 1-class split the training rows are all normal.

The 2-class split files next to it (``split_csv/2cls_highshot.csv``, ``split_csv/2cls_fewshot.csv``,
same columns; choose one with ``split_csv=``) list anomalies in their training rows. Training is
unsupervised here: ``split="train"`` keeps the normal rows only, and a warning
``left out N anomalous training rows of <file>`` is logged (logger ``dpdiff.data.readers.visa``).

Masks store the *defect class id* per pixel (0 = background, 1..9 = the object's defect types
listed in spot-diff's ``utils/id2class.py``), so they look black; some re-distributed copies are
0/255. Both are handled by the ``> 0`` binarisation of :func:`dpdiff.data.dataset.load_mask`
(the same rule as spot-diff's ``prepare_data.py``: ``mask[mask != 0] = 255``).

Samples: label 0 / defect ``"good"`` for ``normal`` rows, label 1 / defect ``"anomaly"`` for
``anomaly`` rows (1cls.csv carries no per-image defect type). Order: categories as requested
(sorted when ``None``), within a category normal rows first, then by image path.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from dpdiff.data.readers.layout import LayoutError, expect_dir, expect_file, keep_normal_training, resolve_categories
from dpdiff.data.readers.mvtec import GOOD
from dpdiff.data.types import Sample
from dpdiff.utils.errors import DataError

__all__ = [
    "SPLIT_CSV",
    "CSV_COLUMNS",
    "VISA_CATEGORIES",
    "ANOMALY_DEFECT",
    "list_categories",
    "load_visa",
    "read_split_csv",
]

#: Split file, relative to the VisA root.
SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
#: The 12 VisA objects (for reference; the reader takes the categories from the CSV).
VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
#: Defect name given to VisA anomalies (1cls.csv has no per-image defect type).
ANOMALY_DEFECT = "anomaly"
_LABELS = {"normal": 0, "anomaly": 1}

logger = logging.getLogger(__name__)


def _csv_path(root: Path, split_csv: Path | str | None) -> Path:
    root = Path(root)
    expect_dir(root, "(VisA root)")
    if split_csv is None:
        path = root / SPLIT_CSV
        return expect_file(
            path,
            "for VisA: the split file shipped with VisA (amazon-science/spot-diff split_csv/1cls.csv); "
            "pass split_csv=<path> to use another copy",
        )
    path = Path(split_csv)
    if not path.is_absolute() and not path.exists():
        path = root / path
    return expect_file(path, "(VisA split_csv)")


def read_split_csv(root: Path, split_csv: Path | str | None = None) -> list[dict[str, str]]:
    """Rows of the VisA split file as dicts (columns :data:`CSV_COLUMNS`), validated."""
    path = _csv_path(root, split_csv)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise LayoutError(
                f"VisA split file {str(path)!r} has columns {header}, expected {list(CSV_COLUMNS)} (missing {missing})",
                path,
            )
        rows = []
        for lineno, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            if row["label"] not in _LABELS:
                raise LayoutError(
                    f"{str(path)!r} line {lineno}: label {row['label']!r} is not one of {sorted(_LABELS)}", path
                )
            if row["split"] not in ("train", "test"):
                raise LayoutError(f"{str(path)!r} line {lineno}: split {row['split']!r} is not 'train' or 'test'", path)
            if not row["object"] or not row["image"]:
                raise LayoutError(f"{str(path)!r} line {lineno}: empty object or image field", path)
            row["_line"] = str(lineno)
            rows.append(row)
    if not rows:
        raise LayoutError(f"VisA split file {str(path)!r} has no rows", path)
    return rows


def list_categories(root: Path, split_csv: Path | str | None = None) -> list[str]:
    """Sorted object names found in the split file."""
    return sorted({r["object"] for r in read_split_csv(root, split_csv)})


def load_visa(
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    split_csv: Path | str | None = None,
    allow_missing_masks: bool = False,
    verify_files: bool = True,
) -> list[Sample]:
    """VisA samples of ``categories`` (all when ``None``) for ``split`` (``"train"``/``"test"``).

    ``verify_files``: check that every image (and mask) listed exists; the first missing one
    raises :class:`~dpdiff.data.readers.generic.LayoutError` naming it. ``split="train"`` returns the
    normal training rows only (anomalous ones, as in the 2cls split files, are left out and
    counted in a logged warning).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    rows = read_split_csv(root, split_csv)
    available = sorted({r["object"] for r in rows})
    categories = resolve_categories(categories, lambda: available)
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DataError(f"VisA categories {unknown} are not in the split file (available: {available})")

    selected = [r for r in rows if r["split"] == split and r["object"] in categories]
    if split == "train":  # never anomalies in training (the 2cls split files list some there)
        selected = keep_normal_training(
            selected, lambda r: _LABELS[r["label"]] == 1, f"VisA split file {str(_csv_path(root, split_csv))!r}", logger
        )
    by_cat: dict[str, list[Sample]] = {c: [] for c in categories}
    for r in selected:
        by_cat[r["object"]].append(_row_sample(root, r, allow_missing_masks, verify_files))

    out: list[Sample] = []
    for c in categories:
        samples = sorted(by_cat[c], key=lambda s: (s.label, str(s.image_path)))
        if not samples:
            raise DataError(f"VisA category {c!r} has no {split!r} rows in the split file")
        out.extend(samples)
    return out


def _row_sample(root: Path, r: dict[str, str], allow_missing_masks: bool, verify_files: bool) -> Sample:
    """The sample of one split-file row (checks its image and mask exist when ``verify_files``)."""
    label = _LABELS[r["label"]]
    image = root / r["image"]
    if verify_files and not image.is_file():
        raise LayoutError(
            f"expected image {str(image)!r} (VisA split file line {r['_line']}: {r['image']!r} relative "
            f"to the VisA root)",
            image,
        )
    mask = None
    if label == 1:
        if r["mask"]:
            mask = root / r["mask"]
            if verify_files and not mask.is_file():
                if not allow_missing_masks:
                    raise LayoutError(
                        f"expected mask {str(mask)!r} for anomalous image {str(image)!r} (VisA split file "
                        f"line {r['_line']}; pass allow_missing_masks=True to accept it without a mask)",
                        mask,
                    )
                mask = None
        elif not allow_missing_masks:
            raise LayoutError(
                f"anomalous image {str(image)!r} has an empty mask field (VisA split file line {r['_line']}; "
                f"pass allow_missing_masks=True to accept it without a mask)",
                image,
            )
    return Sample(image, mask, label, ANOMALY_DEFECT if label else GOOD, r["object"])
