"""Real-IAD and Real-IAD Variety, read in place from their official per-category split JSONs.

Real-IAD layout (verified; sources in ``docs/datasets.md``)::

    <root>/realiad_{256,512,1024,raw}/<cat>/OK/S0001/<cat>_0001_OK_C1_<ts>.jpg
    <root>/realiad_{256,512,1024,raw}/<cat>/NG/<code>/S0001/<cat>_0001_NG_<code>_C1_<ts>.jpg
    <root>/realiad_{256,512,1024,raw}/<cat>/NG/<code>/S0001/<cat>_0001_NG_<code>_C1_<ts>.png   (mask)
    <root>/realiad_jsons/<cat>.json                    (Tencent's README: realiad_jsons.zip extracted
    <root>/realiad_jsons_sv/<cat>.json                  into the root; the variants single-view _sv and
    <root>/realiad_jsons_fuiad_0.{0,1,2,4}/<cat>.json   FUIAD _fuiad_0.x sit NEXT TO realiad_jsons/)
    or <root>/realiad_jsons/realiad_jsons/<cat>.json   (the zip extracted into a folder of its own, as
       <root>/realiad_jsons/realiad_jsons_sv/...        anomalib and Dinomaly do; variants inside it)

(some categories use a double underscore, ``audiojack__0001_NG_BX_C1_...``; the reader never
builds file names, it takes them from the JSON). Each JSON is
``{"meta": {"prefix": ..., "normal_class": "OK", ...}, "train": [...], "test": [...]}`` and each
sample ``{"category", "anomaly_class", "image_path", "mask_path"}``. The official loader reads
``os.path.join(image_dir, meta.prefix, image_path)`` with ``image_dir = realiad_<res>``: with the
usual prefix ``"<cat>/"`` the paths are relative to ``realiad_<res>/<cat>/``, with an **empty
prefix** they are relative to ``realiad_<res>/`` itself (and start with the category folder). The
reader does the same, then falls back to ``<cat>/`` and the nested ``<cat>/<cat>/`` (see
:func:`_category_dir`). ``mask_path`` is ``null`` for normal views.

Real-IAD Variety (partly verified): same JSON schema, 160 categories, images under
``<root>/realiadvariety_{raw,1024,...}/<cat>/`` (the official download ships ``realiadvariety_raw``
as PNG; ``realiadvariety_1024`` is the usual downsampled copy); some category archives extract
to a nested ``<cat>/<cat>/`` folder; the JSONs come in ``realiadvariety_jsons.zip`` and are found
under ``<root>/realiadvariety_jsons/[<wrapper>/]<cat>.json`` (or ``<root>/realiad_jsons/``).
Category names are the JSON stems; the paper's subsets are matched to them ignoring case,
hyphens, underscores and spaces (:mod:`dpdiff.data.readers.realiad_layout`).

Labels (the official rule of ``Tencent/AnomalyDetection_Real-IAD`` ``datasets/explicit_dataset.py``:
``as_normal = mask_path is None or anomaly_class == normal_class``):

* ``anomaly_class == meta.normal_class`` (``"OK"``): label 0, defect ``"good"``, no mask;
* otherwise, with a ``mask_path``: label 1, defect = ``anomaly_class`` (e.g. ``"BX"``), mask;
* otherwise (a view of a defective object on which the defect is not visible, ``mask_path``
  null): ``ng_without_mask`` decides - ``"normal"`` (default, the official rule: label 0, defect
  = ``anomaly_class`` kept for traceability, no mask), ``"anomaly"`` (label 1 without mask, as
  anomalib does; leave such samples out of pixel metrics) or ``"drop"``.

Training (``split="train"``) keeps the entries whose ``anomaly_class`` is ``meta.normal_class``
only: an anomalous training entry (the FUIAD variants ``realiad_jsons_fuiad_0.x`` put some there on
purpose) is left out, and a warning ``left out N anomalous training rows of <json>`` is logged.
Unsupervised training never sees anomalies.

Object-level scores: the five camera views ``C1``-``C5`` of one physical object share a sample
folder ``S####``. Sample numbers restart in every ``OK`` and ``NG/<code>`` folder
(``audiojack/OK/S0001`` and ``audiojack/NG/BX/S0001`` are different objects), so
:func:`object_id` returns ``<cat>/OK/S0001`` or ``<cat>/NG/BX/S0001`` - the same grouping as the
official ADEval ``--sample_key_pat`` (``<cat>_0001_NG_BX``).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath

from dpdiff.data.readers.layout import LayoutError, expect_dir, keep_normal_training, resolve_categories
from dpdiff.data.readers.mvtec import GOOD
from dpdiff.data.readers.realiad_layout import (
    REALIAD,
    VARIETY,
    _Variant,
    closest_categories,
    find_json_dir,
    json_categories,
    list_categories,
    list_variety_categories,
    normalize_category,
)
from dpdiff.data.readers.realiad_variety_splits import SUBSET_NAMES, subset_categories
from dpdiff.data.types import Sample
from dpdiff.utils.errors import ConfigError, DataError

__all__ = [
    "RESOLUTIONS",
    "NORMAL_CLASS",
    "NG_WITHOUT_MASK",
    "find_json_dir",
    "list_categories",
    "list_variety_categories",
    "load_realiad",
    "load_realiad_variety",
    "object_id",
    "group_by_object",
    "object_scores",
    "normalize_category",
]

logger = logging.getLogger(__name__)

RESOLUTIONS = ("256", "512", "1024", "raw")
NORMAL_CLASS = "OK"
NG_WITHOUT_MASK = ("normal", "anomaly", "drop")
_SAMPLE_DIR = re.compile(r"S\d+")
# ADEval's --sample_key_pat from Tencent/AnomalyDetection_Real-IAD README (fallback for flat copies)
_SAMPLE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")


# ----------------------------------------------------------------------------- loading


def _image_root(root: Path, resolution, variant: _Variant) -> Path:
    res = str(resolution)
    if res not in RESOLUTIONS:
        raise ConfigError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    path = root / f"{variant.image_prefix}{res}"
    if not path.is_dir():
        others = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir()
            and p.name.startswith(variant.image_prefix)
            and not p.name.startswith(variant.image_prefix + "jsons")
        )
        raise LayoutError(
            f"expected image folder {str(path)!r} for {variant.name} at resolution {res!r} "
            f"(image folders present: {others or 'none'}; choose one with resolution=)",
            path,
        )
    return path


def _read_json(path: Path, variant: _Variant) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise LayoutError(f"{variant.name} split file {str(path)!r} is not valid JSON: {e}", path) from e
    if not isinstance(doc, dict) or not any(k in doc for k in ("train", "test")):
        raise LayoutError(
            f"{variant.name} split file {str(path)!r} must be an object with 'meta', 'train' and 'test' keys", path
        )
    return doc


def _entries(doc: dict, split: str, path: Path, variant: _Variant) -> list[dict]:
    entries = doc.get(split)
    if not isinstance(entries, list):
        raise LayoutError(f"{variant.name} split file {str(path)!r} has no {split!r} list", path)
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not e.get("image_path") or "anomaly_class" not in e:
            raise LayoutError(
                f"{variant.name} split file {str(path)!r}: {split}[{i}] lacks 'image_path'/'anomaly_class': {e!r}",
                path,
            )
    return entries


def _safe_prefix(meta: dict) -> str | None:
    """``meta.prefix`` without surrounding ``/`` (``""`` for an empty prefix); ``None`` when absent or unsafe."""
    prefix = meta.get("prefix") if isinstance(meta, dict) else None
    if not isinstance(prefix, str):
        return None
    if PurePath(prefix).is_absolute() or ".." in PurePath(prefix).parts:
        return None
    return prefix.strip("/")


def _category_dir(img_root: Path, cat: str, meta: dict, first_image: str) -> Path:
    """The folder the JSON paths are relative to: the first candidate holding the first listed image.

    Candidates, in order: ``<img_root>/<meta.prefix>`` (the official loader's
    ``os.path.join(image_dir, prefix, image_path)``; an empty prefix means ``<img_root>`` itself),
    ``<img_root>/<cat>``, the nested ``<img_root>/<cat>/<cat>``, and a folder of ``<img_root>``
    whose name equals ``cat`` ignoring case, hyphens, underscores and spaces (and its nested copy).
    """
    cands: list[Path] = []
    prefix = _safe_prefix(meta)
    if prefix is not None:
        cands.append(img_root / prefix if prefix else img_root)
    cands += [img_root / cat, img_root / cat / cat]
    if not (img_root / cat).is_dir() and img_root.is_dir():
        key = normalize_category(cat)
        for d in sorted(img_root.iterdir(), key=lambda p: p.name):
            if d.is_dir() and not d.name.startswith(".") and normalize_category(d.name) == key:
                cands += [d, d / d.name]
    seen: list[Path] = []
    for c in cands:
        if c in seen:
            continue
        seen.append(c)
        if (c / first_image).is_file():
            return c
    if not any(c.is_dir() for c in seen if c != img_root):
        raise LayoutError(f"expected category folder {str(img_root / cat)!r}", img_root / cat)
    tried = ", ".join(repr(str(c / first_image)) for c in seen)
    raise LayoutError(
        f"expected image {str(seen[0] / first_image)!r} (first image of the split file; tried {tried})",
        seen[0] / first_image,
    )


def _suggest(cat: str, available: Iterable[str]) -> str:
    available = list(available)
    same = [a for a in available if normalize_category(a) == normalize_category(cat)]
    if same:
        return f" (did you mean {same[0]!r}?)"
    close = closest_categories(cat, available)
    return f" (closest: {close})" if close else ""


def _load(
    variant: _Variant,
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    resolution,
    json_dir,
    ng_without_mask: str,
    verify_files: bool,
) -> list[Sample]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if ng_without_mask not in NG_WITHOUT_MASK:
        raise ConfigError(f"ng_without_mask must be one of {NG_WITHOUT_MASK}, got {ng_without_mask!r}")
    root = expect_dir(Path(root), f"({variant.name} root)")
    jd = find_json_dir(root, json_dir, variant is VARIETY)
    available = json_categories(jd)
    categories = resolve_categories(categories, lambda: available)
    for c in categories:
        if c not in available:
            raise LayoutError(
                f"expected split file {str(jd / (c + '.json'))!r} for {variant.name} category {c!r}"
                f"{_suggest(c, available)}",
                jd / (c + ".json"),
            )
    img_root = _image_root(root, resolution, variant)

    out: list[Sample] = []
    for cat in categories:
        out.extend(_category_samples(variant, jd / f"{cat}.json", img_root, cat, split, ng_without_mask, verify_files))
    return out


def _category_samples(
    variant: _Variant,
    jpath: Path,
    img_root: Path,
    cat: str,
    split: str,
    ng_without_mask: str,
    verify_files: bool,
) -> list[Sample]:
    """The samples of one category, in the order of its split file ``jpath``."""
    doc = _read_json(jpath, variant)
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    normal_class = meta.get("normal_class", NORMAL_CLASS)
    entries = _entries(doc, split, jpath, variant)
    if split == "train":  # never anomalies in training (FUIAD variants list some there)
        entries = keep_normal_training(
            entries,
            lambda e, normal_class=normal_class: str(e["anomaly_class"]) != normal_class,
            f"{variant.name} split file {str(jpath)!r}",
            logger,
        )
    if not entries:
        raise DataError(f"{variant.name} category {cat!r} has no {split!r} samples in {str(jpath)!r}")
    cat_dir = _category_dir(img_root, cat, meta, entries[0]["image_path"])
    out: list[Sample] = []
    for e in entries:
        sample = _entry_sample(e, cat_dir, cat, normal_class, jpath, ng_without_mask, verify_files)
        if sample is not None:
            out.append(sample)
    return out


def _entry_sample(
    e: dict, cat_dir: Path, cat: str, normal_class: str, jpath: Path, ng_without_mask: str, verify_files: bool
) -> Sample | None:
    """The sample of one split-file entry (``None``: an anomaly without a mask, with ``ng_without_mask="drop"``)."""
    image = cat_dir / e["image_path"]
    if verify_files and not image.is_file():
        raise LayoutError(f"expected image {str(image)!r} (listed in {str(jpath)!r})", image)
    cls = str(e["anomaly_class"])
    mask_rel = e.get("mask_path")
    if cls == normal_class:
        return Sample(image, None, 0, GOOD, cat)
    if mask_rel:
        mask = cat_dir / mask_rel
        if verify_files and not mask.is_file():
            raise LayoutError(f"expected mask {str(mask)!r} of image {str(image)!r} (listed in {str(jpath)!r})", mask)
        return Sample(image, mask, 1, cls, cat)
    if ng_without_mask == "normal":
        return Sample(image, None, 0, cls, cat)
    if ng_without_mask == "anomaly":
        return Sample(image, None, 1, cls, cat)
    return None  # "drop": skipped


def load_realiad(
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    resolution: int | str = 1024,
    json_dir: Path | str | None = None,
    ng_without_mask: str = "normal",
    verify_files: bool = True,
) -> list[Sample]:
    """Real-IAD samples (JSON order) of ``categories`` (all when ``None``) for ``split``.

    ``resolution``: 256, 512, 1024 or ``"raw"`` (image folder ``realiad_<resolution>``);
    ``json_dir``: another JSON folder (e.g. ``"realiad_jsons_sv"``, next to or inside
    ``realiad_jsons/``); ``ng_without_mask``: see the
    module docstring; ``verify_files``: check every image/mask exists (first missing one raises
    :class:`~dpdiff.data.readers.generic.LayoutError` naming it).
    """
    return _load(REALIAD, root, categories, split, resolution, json_dir, ng_without_mask, verify_files)


def load_realiad_variety(
    root: Path,
    categories: Sequence[str] | str | None,
    split: str,
    resolution: int | str = 1024,
    json_dir: Path | str | None = None,
    ng_without_mask: str = "normal",
    verify_files: bool = True,
) -> list[Sample]:
    """Real-IAD Variety samples; as :func:`load_realiad` with image folder ``realiadvariety_<resolution>``.

    ``categories`` may be a subset name of :mod:`dpdiff.data.readers.realiad_variety_splits`
    (``"S1"``, ``"S2"``, ``"S3"``, ``"Full"``); a subset's names are matched to the categories on
    disk ignoring case, hyphens, underscores and spaces (the samples carry the on-disk names).
    """
    if isinstance(categories, str) and categories in SUBSET_NAMES:
        categories = subset_categories(categories, root, json_dir=json_dir)
    return _load(VARIETY, root, categories, split, resolution, json_dir, ng_without_mask, verify_files)


# ----------------------------------------------------------------------------- objects (5 views)


def object_id(sample: Sample) -> str:
    """``<category>/<OK|NG/<code>>/<S####>``: the physical object a (Real-IAD) view belongs to.

    Derived from the image path: the last folder named ``S<digits>`` and the folders between the
    category folder and it. For images not stored in a sample folder, falls back to the ADEval
    file-name key (``<cat>_0001_NG_BX``) and raises :class:`ValueError` when neither is present.
    """
    path = PurePath(sample.image_path)
    parts = path.parts[:-1]
    for i in range(len(parts) - 1, -1, -1):
        if _SAMPLE_DIR.fullmatch(parts[i]):
            start = None
            for j in range(i - 1, -1, -1):  # nearest category folder (handles nested <cat>/<cat>)
                if parts[j] == sample.category:
                    start = j + 1
                    break
            if start is None:  # category folder renamed: anchor on OK / NG
                for j in range(i - 1, -1, -1):
                    if parts[j] in ("OK", "NG"):
                        start = j
                        break
            if start is None:
                start = i
            return "/".join((sample.category, *parts[start : i + 1]))
    m = _SAMPLE_KEY.match(path.name)
    if m:
        return f"{sample.category}/{m.group(1)}"
    raise DataError(
        f"cannot derive an object id from {str(sample.image_path)!r}: expected a sample folder S<digits> "
        f"(Real-IAD <cat>/OK/S0001/...) or a file name <cat>_0001_<OK|NG_..>_C<view>_..."
    )


def group_by_object(samples: Sequence[Sample]) -> OrderedDict[str, list[int]]:
    """``{object_id: [indices into samples]}`` in order of first appearance."""
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, s in enumerate(samples):
        groups.setdefault(object_id(s), []).append(i)
    return groups


def object_scores(samples: Sequence[Sample], scores: Sequence[float]):
    """Object-level ``(ids, labels, scores)``: max over the views of each object.

    ``labels[k]`` is 1 when any view of object ``k`` is labelled 1; ``scores[k]`` is the maximum
    view score. Returns a list of ids and two numpy arrays.
    """
    import numpy as np

    if len(samples) != len(scores):
        raise ValueError(f"{len(samples)} samples but {len(scores)} scores")
    view_scores = np.asarray(scores, dtype=np.float64)
    groups = group_by_object(samples)
    ids = list(groups)
    labels = np.array([max(samples[i].label for i in idx) for idx in groups.values()], dtype=np.int64)
    obj = np.array([view_scores[idx].max() for idx in groups.values()], dtype=np.float64)
    return ids, labels, obj
