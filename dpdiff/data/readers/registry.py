"""Dataset-format registry: one entry point for every on-disk layout the project reads.

Its public names are those of :mod:`dpdiff.data.readers` (and of :mod:`dpdiff.data`)::

    from dpdiff.data.readers import load_samples, list_categories_for, detect_format
    train = load_samples("visa", root, None, "train")
    test = load_samples("realiad", root, ["audiojack"], "test", resolution=1024)
    fmt = detect_format(root)            # or load_samples("auto", root, ...)

Formats (:data:`FORMATS`; layouts and sources in ``docs/datasets.md``):

* ``mvtec``: ``<root>/<cat>/{train/good, test/<defect>, ground_truth/<defect>}``;
  options ``allow_missing_masks``.
* ``mpdd``: the MVTec-AD layout (masks ``<stem>_mask.png``), same reader and options.
* ``btad``: ``<root>/<cat>/{train/ok, test/ok, test/ko, ground_truth/ko}`` (BTAD as downloaded:
  ``01``, ``02``, ``03``; masks ``<stem>.png`` or ``<stem>.bmp``); options ``allow_missing_masks``.
* ``visa``: ``<root>/split_csv/1cls.csv`` + ``<root>/<object>/Data/{Images,Masks}/...``;
  options ``split_csv``, ``allow_missing_masks``, ``verify_files``.
* ``realiad``: ``<root>/realiad_<res>/<cat>/`` + ``<root>/realiad_jsons/[realiad_jsons/]<cat>.json``
  (variants ``realiad_jsons_sv`` ... next to ``realiad_jsons/`` or inside it, chosen with
  ``json_dir``); options ``resolution``, ``json_dir``, ``ng_without_mask``, ``verify_files``.
* ``realiad_variety``: ``<root>/realiadvariety_<res>/<cat>/`` + ``<root>/realiadvariety_jsons/...``;
  options as ``realiad``; ``categories`` may also be ``"S1"``, ``"S2"``, ``"S3"`` or ``"Full"``.
* ``generic``: normal / abnormal / mask folders given as options (relative to ``root``):
  ``normal_dir``, ``abnormal_dir``, ``mask_dir``, ``train_normal_dir``, ``category``,
  ``allow_missing_masks``.

Every reader returns a list of :class:`dpdiff.data.types.Sample`. The training split never holds
anomalies: readers of split files (VisA CSVs, Real-IAD JSONs) leave out anomalous training rows
and log how many, and :func:`load_samples` drops (and logs) any label-1 training sample a reader
might still return. A root that does not match the
layout raises :class:`LayoutError` (a ``FileNotFoundError`` and ``ValueError``) whose message
names the first offending path, e.g. ``expected file '<root>/split_csv/1cls.csv' for VisA ...``.

:func:`detect_format` heuristics, checked in this order on the root's direct children:

1. ``split_csv/1cls.csv`` is a file -> ``visa``;
2. a folder named ``realiadvariety_*`` (images or JSONs) or ``realiad_variety_jsons`` /
   ``Real-IAD_Variety_jsons`` -> ``realiad_variety``;
3. a folder ``realiad_jsons*`` or ``realiad_{256,512,1024,raw}`` -> ``realiad``;
4. a sub-folder with ``train/good`` -> ``mpdd`` when every such category is an MPDD category
   (bracket_black, bracket_brown, bracket_white, connector, metal_plate, tubes), else ``mvtec``;
5. a sub-folder with ``train/ok`` -> ``btad``;
6. otherwise :class:`LayoutError` listing what was looked for. ``generic`` is never guessed.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dpdiff.choices import AUTO_FORMAT, DATA_FORMATS, check_registry

# explicit submodule imports (never ``from . import ...``, which imports this package's
# __init__, itself importing this module: an import cycle)
from dpdiff.data.readers.btad import list_categories as _btad_list_categories
from dpdiff.data.readers.btad import load_btad
from dpdiff.data.readers.generic import load_generic
from dpdiff.data.readers.layout import LayoutError, expect_dir, keep_normal_training
from dpdiff.data.readers.mvtec import list_categories as _mvtec_list_categories
from dpdiff.data.readers.mvtec import load_dataset as _mvtec_load_dataset
from dpdiff.data.readers.realiad import RESOLUTIONS as _REALIAD_RESOLUTIONS
from dpdiff.data.readers.realiad import list_categories as _realiad_list_categories
from dpdiff.data.readers.realiad import list_variety_categories as _variety_list_categories
from dpdiff.data.readers.realiad import load_realiad, load_realiad_variety
from dpdiff.data.readers.visa import SPLIT_CSV as _VISA_SPLIT_CSV
from dpdiff.data.readers.visa import list_categories as _visa_list_categories
from dpdiff.data.readers.visa import load_visa
from dpdiff.data.types import Sample
from dpdiff.utils.errors import ConfigError

__all__ = [
    "FORMATS",
    "AUTO",
    "FormatSpec",
    "LayoutError",
    "MPDD_CATEGORIES",
    "detect_format",
    "list_categories_for",
    "load_samples",
]

AUTO = AUTO_FORMAT
logger = logging.getLogger(__name__)
MPDD_CATEGORIES = frozenset({"bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"})


@dataclass(frozen=True)
class FormatSpec:
    """One registered format: how to list its categories and load its samples."""

    name: str
    description: str
    #: ``(root, **options) -> list[str]``
    list_categories: Callable[..., list[str]]
    #: ``(root, categories | None, split, **options) -> list[Sample]``
    load: Callable[..., list[Sample]]
    #: option names accepted by :func:`load_samples` for this format
    options: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- MVTec / MPDD


def _mvtec_list(root: Path, label: str) -> list[str]:
    root = expect_dir(Path(root), f"({label} root)")
    try:
        return _mvtec_list_categories(root)
    except ValueError:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        first = root / subs[0] / "train" / "good" if subs else root / "<category>" / "train" / "good"
        raise LayoutError(
            f"expected {str(first)!r} for {label} (MVTec-AD layout <root>/<category>/train/good/...): "
            f"no sub-folder of {str(root)!r} has train/good",
            first,
        ) from None


def _make_mvtec(label: str) -> tuple[Callable, Callable]:
    def list_cats(root: Path) -> list[str]:
        return _mvtec_list(root, label)

    def load(root: Path, categories, split: str, allow_missing_masks: bool = False) -> list[Sample]:
        root = Path(root)
        cats = _mvtec_list(root, label) if categories is None else categories
        return _mvtec_load_dataset(root, cats, split, allow_missing_masks=allow_missing_masks)

    return list_cats, load


# ----------------------------------------------------------------------------- generic


def _resolve(root: Path, value):
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        p = Path(value)
        return p if p.is_absolute() else root / p
    return [_resolve(root, v) for v in value]


def _generic_list(root: Path, category: str = "generic") -> list[str]:
    return [category]


def _generic_load(
    root: Path,
    categories,
    split: str,
    normal_dir=None,
    abnormal_dir=None,
    mask_dir=None,
    train_normal_dir=None,
    category: str = "generic",
    allow_missing_masks: bool = False,
) -> list[Sample]:
    root = expect_dir(Path(root), "(generic dataset root)")
    if categories is not None:
        cats = [categories] if isinstance(categories, str) else list(categories)
        if cats != [category]:
            raise ConfigError(f"the generic reader has the single category {category!r} (option category=), got {cats}")
    return load_generic(
        _resolve(root, normal_dir),
        _resolve(root, abnormal_dir),
        _resolve(root, mask_dir),
        category=category,
        train_normal_dir=_resolve(root, train_normal_dir),
        split=split,
        allow_missing_masks=allow_missing_masks,
    )


# ----------------------------------------------------------------------------- registry

_mvtec_list_fn, _mvtec_load_fn = _make_mvtec("MVTec-AD")
_mpdd_list_fn, _mpdd_load_fn = _make_mvtec("MPDD")

FORMATS: dict[str, FormatSpec] = {
    "mvtec": FormatSpec(
        "mvtec",
        "MVTec-AD folder layout (also MTD as prepared in shared/data, VisA conversions)",
        _mvtec_list_fn,
        _mvtec_load_fn,
        ("allow_missing_masks",),
    ),
    "mpdd": FormatSpec(
        "mpdd",
        "MPDD: MVTec-AD folder layout, masks <stem>_mask.png",
        _mpdd_list_fn,
        _mpdd_load_fn,
        ("allow_missing_masks",),
    ),
    "btad": FormatSpec(
        "btad",
        "BTAD as downloaded: <cat>/train/ok, test/ok, test/ko, ground_truth/ko (.png or .bmp masks)",
        _btad_list_categories,
        load_btad,
        ("allow_missing_masks",),
    ),
    "visa": FormatSpec(
        "visa",
        "VisA read in place from split_csv/1cls.csv",
        _visa_list_categories,
        load_visa,
        ("split_csv", "allow_missing_masks", "verify_files"),
    ),
    "realiad": FormatSpec(
        "realiad",
        "Real-IAD: realiad_<res>/<cat>/ images + realiad_jsons/ split JSONs",
        _realiad_list_categories,
        load_realiad,
        ("resolution", "json_dir", "ng_without_mask", "verify_files"),
    ),
    "realiad_variety": FormatSpec(
        "realiad_variety",
        "Real-IAD Variety: realiadvariety_<res>/<cat>/ images + realiadvariety_jsons/ split JSONs",
        _variety_list_categories,
        load_realiad_variety,
        ("resolution", "json_dir", "ng_without_mask", "verify_files"),
    ),
    "generic": FormatSpec(
        "generic",
        "normal / abnormal / mask folders (paths relative to root)",
        _generic_list,
        _generic_load,
        ("normal_dir", "abnormal_dir", "mask_dir", "train_normal_dir", "category", "allow_missing_masks"),
    ),
}
check_registry("data formats (dpdiff.data.FORMATS)", FORMATS, DATA_FORMATS)


def _spec(format: str, root: Path) -> FormatSpec:
    if format == AUTO:
        format = detect_format(root)
    spec = FORMATS.get(format)
    if spec is None:
        raise ConfigError(f"unknown dataset format {format!r}; known formats: {sorted(FORMATS)} (or {AUTO!r})")
    return spec


def _check_options(spec: FormatSpec, options: dict) -> None:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for dataset format {spec.name!r}; accepted: {list(spec.options) or 'none'}"
        )


def list_categories_for(format: str, root: Path, **options) -> list[str]:
    """Categories available under ``root`` in ``format`` (``"auto"``: :func:`detect_format`).

    ``options`` are those of :func:`load_samples`; the ones the category listing does not need
    are ignored (so the same options can be passed to both functions).
    """
    spec = _spec(format, Path(root))
    _check_options(spec, options)
    accepted = inspect.signature(spec.list_categories).parameters
    return spec.list_categories(Path(root), **{k: v for k, v in options.items() if k in accepted})


def load_samples(
    format: str,
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    **options,
) -> list[Sample]:
    """Samples of ``categories`` (all when ``None``) and ``split`` (``"train"``/``"test"``).

    ``format``: a key of :data:`FORMATS` or ``"auto"``; ``options``: format-specific (see the
    table in the module docstring); an option the format does not take raises ``ValueError``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _spec(format, Path(root))
    _check_options(spec, options)
    samples = spec.load(Path(root), categories, split, **options)
    if split == "train":  # never anomalies in training, whatever the reader returned
        samples = keep_normal_training(
            samples, lambda s: s.label != 0, f"the {spec.name!r} training split of {str(root)!r}", logger
        )
    return samples


def detect_format(root: Path) -> str:
    """Guess the format of ``root`` from its layout (heuristics in the module docstring)."""
    root = expect_dir(Path(root), "(dataset root)")
    if (root / _VISA_SPLIT_CSV).is_file():
        return "visa"
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = {p.name for p in children}
    if any(
        n.startswith("realiadvariety_") or n.lower() in ("realiad_variety_jsons", "real-iad_variety_jsons")
        for n in names
    ):  # checked before Real-IAD: Dinomaly2 keeps Variety JSONs in realiad_jsons/
        return "realiad_variety"
    if any(n.startswith("realiad_jsons") for n in names) or any(f"realiad_{r}" in names for r in _REALIAD_RESOLUTIONS):
        return "realiad"
    cats = [p.name for p in children if (p / "train" / "good").is_dir()]
    if cats:
        return "mpdd" if set(cats) <= MPDD_CATEGORIES else "mvtec"
    if any((p / "train" / "ok").is_dir() for p in children):
        return "btad"
    raise LayoutError(
        f"cannot detect the dataset format of {str(root)!r}: expected one of {str(root / _VISA_SPLIT_CSV)!r} (VisA), "
        f"a realiadvariety_* folder (Real-IAD Variety), a realiad_jsons or realiad_<res> folder (Real-IAD), "
        f"<category>/train/good sub-folders (MVTec-AD / MPDD) or <category>/train/ok sub-folders (BTAD); "
        f"use format='generic' with explicit folders for anything else",
        root / _VISA_SPLIT_CSV,
    )
