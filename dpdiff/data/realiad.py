"""Real-IAD and Real-IAD Variety, read in place from their official per-category split JSONs.

Real-IAD layout (verified; sources in ``docs/datasets.md``)::

    <root>/realiad_{256,512,1024,raw}/<cat>/OK/S0001/<cat>_0001_OK_C1_<ts>.jpg
    <root>/realiad_{256,512,1024,raw}/<cat>/NG/<code>/S0001/<cat>_0001_NG_<code>_C1_<ts>.jpg
    <root>/realiad_{256,512,1024,raw}/<cat>/NG/<code>/S0001/<cat>_0001_NG_<code>_C1_<ts>.png   (mask)
    <root>/realiad_jsons/realiad_jsons/<cat>.json      (as extracted from realiad_jsons.zip)
    <root>/realiad_jsons/realiad_jsons_sv/<cat>.json   (single-view), realiad_jsons_fuiad_0.x/ ...
    or <root>/realiad_jsons/<cat>.json                 (flat, as in Tencent's README)

(some categories use a double underscore, ``audiojack__0001_NG_BX_C1_...``; the reader never
builds file names, it takes them from the JSON). Each JSON is
``{"meta": {"prefix": ..., "normal_class": "OK", ...}, "train": [...], "test": [...]}`` and each
sample ``{"category", "anomaly_class", "image_path", "mask_path"}`` with ``image_path`` /
``mask_path`` relative to ``realiad_<res>/<cat>/``; ``mask_path`` is ``null`` for normal views.

Real-IAD Variety (partly verified): same JSON schema, 160 categories, images under
``<root>/realiadvariety_{raw,1024,...}/<cat>/`` (the official download ships ``realiadvariety_raw``
as PNG; ``realiadvariety_1024`` is the usual downsampled copy); some category archives extract
to a nested ``<cat>/<cat>/`` folder; the JSONs come in ``realiadvariety_jsons.zip`` and are found
under ``<root>/realiadvariety_jsons/[<wrapper>/]<cat>.json`` (or ``<root>/realiad_jsons/``).

Labels (the official rule of ``Tencent/AnomalyDetection_Real-IAD`` ``datasets/explicit_dataset.py``:
``as_normal = mask_path is None or anomaly_class == normal_class``):

* ``anomaly_class == meta.normal_class`` (``"OK"``): label 0, defect ``"good"``, no mask;
* otherwise, with a ``mask_path``: label 1, defect = ``anomaly_class`` (e.g. ``"BX"``), mask;
* otherwise (a view of a defective object on which the defect is not visible, ``mask_path``
  null): ``ng_without_mask`` decides - ``"normal"`` (default, the official rule: label 0, defect
  = ``anomaly_class`` kept for traceability, no mask), ``"anomaly"`` (label 1 without mask, as
  anomalib does; leave such samples out of pixel metrics) or ``"drop"``.

Object-level scores: the five camera views ``C1``-``C5`` of one physical object share a sample
folder ``S####``. Sample numbers restart in every ``OK`` and ``NG/<code>`` folder
(``audiojack/OK/S0001`` and ``audiojack/NG/BX/S0001`` are different objects), so
:func:`object_id` returns ``<cat>/OK/S0001`` or ``<cat>/NG/BX/S0001`` - the same grouping as the
official ADEval ``--sample_key_pat`` (``<cat>_0001_NG_BX``).
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterable, Sequence

from .generic import LayoutError, expect_dir
from .mvtec import GOOD, Sample

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
]

RESOLUTIONS = ("256", "512", "1024", "raw")
NORMAL_CLASS = "OK"
NG_WITHOUT_MASK = ("normal", "anomaly", "drop")
_SAMPLE_DIR = re.compile(r"S\d+")
# ADEval's --sample_key_pat from Tencent/AnomalyDetection_Real-IAD README (fallback for flat copies)
_SAMPLE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")


@dataclass(frozen=True)
class _Variant:
    name: str
    image_prefix: str  # image folder is <root>/<image_prefix><resolution>
    json_tops: tuple[str, ...]  # candidate JSON folders under <root>, in order


REALIAD = _Variant("Real-IAD", "realiad_", ("realiad_jsons",))
VARIETY = _Variant(
    "Real-IAD Variety",
    "realiadvariety_",
    ("realiadvariety_jsons", "realiad_variety_jsons", "Real-IAD_Variety_jsons", "realiad_jsons"),
)


# ----------------------------------------------------------------------------- JSON folder


def _has_json(d: Path) -> bool:
    return d.is_dir() and any(p.suffix.lower() == ".json" and not p.name.startswith(".") for p in d.iterdir())


def _descend(top: Path) -> Path | None:
    """``top`` if it holds *.json, else its single (or same-named) sub-folder holding *.json."""
    if _has_json(top):
        return top
    if not top.is_dir():
        return None
    subs = sorted((p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_json(p)),
                  key=lambda p: p.name)
    if len(subs) == 1:
        return subs[0]
    for s in subs:  # realiad_jsons/realiad_jsons next to realiad_jsons_sv, realiad_jsons_fuiad_0.x
        if s.name == top.name:
            return s
    if subs:
        raise LayoutError(
            f"{str(top)!r} holds several JSON folders {[s.name for s in subs]}; choose one with json_dir=",
            top,
        )
    return None


def find_json_dir(root: Path, json_dir: Path | str | None = None, variety: bool = False) -> Path:
    """The folder of per-category JSONs (see the module docstring for the search order).

    ``json_dir``: absolute, or relative to ``root`` or to the default JSON folder (so
    ``json_dir="realiad_jsons_sv"`` finds ``<root>/realiad_jsons/realiad_jsons_sv``).
    """
    variant = VARIETY if variety else REALIAD
    root = expect_dir(Path(root), f"({variant.name} root)")
    if json_dir is not None:
        jd = Path(json_dir)
        cands = [jd] if jd.is_absolute() else [root / jd] + [root / t / jd for t in variant.json_tops]
        for c in cands:
            found = _descend(c)
            if found is not None:
                return found
        raise LayoutError(f"expected JSON folder {str(cands[0])!r} with <category>.json files for {variant.name}",
                          cands[0])
    for top in variant.json_tops:
        found = _descend(root / top)
        if found is not None:
            return found
    first = root / variant.json_tops[0]
    raise LayoutError(
        f"expected {str(first / variant.json_tops[0])!r} or {str(first)!r} holding <category>.json files "
        f"for {variant.name} (or pass json_dir=)",
        first,
    )


def _categories(root: Path, json_dir, variant: _Variant) -> list[str]:
    jd = find_json_dir(root, json_dir, variant is VARIETY)
    return sorted(p.stem for p in jd.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith("."))


def list_categories(root: Path, json_dir: Path | str | None = None) -> list[str]:
    """Real-IAD categories: the stems of the JSON files, sorted."""
    return _categories(root, json_dir, REALIAD)


def list_variety_categories(root: Path, json_dir: Path | str | None = None) -> list[str]:
    """Real-IAD Variety categories: the stems of the JSON files, sorted."""
    return _categories(root, json_dir, VARIETY)


# ----------------------------------------------------------------------------- loading


def _image_root(root: Path, resolution, variant: _Variant) -> Path:
    res = str(resolution)
    if res not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    path = root / f"{variant.image_prefix}{res}"
    if not path.is_dir():
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(variant.image_prefix)
                        and not p.name.startswith(variant.image_prefix + "jsons"))
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


def _category_dir(img_root: Path, cat: str, meta: dict, first_image: str) -> Path:
    """``<img_root>/<cat>``, or the nested ``<cat>/<cat>``, or ``<img_root>/<meta.prefix>``:
    the first one in which the first image of the JSON exists."""
    cands = [img_root / cat, img_root / cat / cat]
    prefix = meta.get("prefix") if isinstance(meta, dict) else None
    if isinstance(prefix, str) and prefix.strip("/") and not PurePath(prefix).is_absolute() and ".." not in prefix:
        cands.append(img_root / prefix.strip("/"))
    for c in cands:
        if (c / first_image).is_file():
            return c
    if not cands[0].is_dir():
        raise LayoutError(f"expected category folder {str(cands[0])!r}", cands[0])
    raise LayoutError(
        f"expected image {str(cands[0] / first_image)!r} (first image of the split file; also tried the nested "
        f"{str(cands[1])!r})",
        cands[0] / first_image,
    )


def _suggest(cat: str, available: Iterable[str]) -> str:
    low = {a.lower(): a for a in available}
    hit = low.get(cat.lower())
    return f" (did you mean {hit!r}?)" if hit else ""


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
        raise ValueError(f"ng_without_mask must be one of {NG_WITHOUT_MASK}, got {ng_without_mask!r}")
    root = expect_dir(Path(root), f"({variant.name} root)")
    jd = find_json_dir(root, json_dir, variant is VARIETY)
    available = sorted(p.stem for p in jd.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith("."))
    if categories is None:
        categories = available
    elif isinstance(categories, str):
        categories = [categories]
    categories = list(categories)
    if len(set(categories)) != len(categories):
        raise ValueError(f"duplicate categories in {categories}")
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
        jpath = jd / f"{cat}.json"
        doc = _read_json(jpath, variant)
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
        normal_class = meta.get("normal_class", NORMAL_CLASS)
        entries = _entries(doc, split, jpath, variant)
        if not entries:
            raise ValueError(f"{variant.name} category {cat!r} has no {split!r} samples in {str(jpath)!r}")
        cat_dir = _category_dir(img_root, cat, meta, entries[0]["image_path"])
        for e in entries:
            image = cat_dir / e["image_path"]
            if verify_files and not image.is_file():
                raise LayoutError(f"expected image {str(image)!r} (listed in {str(jpath)!r})", image)
            cls = str(e["anomaly_class"])
            mask_rel = e.get("mask_path")
            if cls == normal_class:
                out.append(Sample(image, None, 0, GOOD, cat))
                continue
            if mask_rel:
                mask = cat_dir / mask_rel
                if verify_files and not mask.is_file():
                    raise LayoutError(f"expected mask {str(mask)!r} of image {str(image)!r} (listed in {str(jpath)!r})",
                                      mask)
                out.append(Sample(image, mask, 1, cls, cat))
            elif ng_without_mask == "normal":
                out.append(Sample(image, None, 0, cls, cat))
            elif ng_without_mask == "anomaly":
                out.append(Sample(image, None, 1, cls, cat))
            # "drop": skipped
    return out


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
    ``json_dir``: another JSON folder (e.g. ``"realiad_jsons_sv"``); ``ng_without_mask``: see the
    module docstring; ``verify_files``: check every image/mask exists (first missing one raises
    :class:`~dpdiff.data.generic.LayoutError` naming it).
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

    ``categories`` may be a subset name of :mod:`dpdiff.data.realiad_variety_splits`
    (``"S1"``, ``"S2"``, ``"S3"``, ``"Full"``).
    """
    if isinstance(categories, str):
        from .realiad_variety_splits import SUBSET_NAMES, subset_categories

        if categories in SUBSET_NAMES:
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
            return "/".join((sample.category, *parts[start:i + 1]))
    m = _SAMPLE_KEY.match(path.name)
    if m:
        return f"{sample.category}/{m.group(1)}"
    raise ValueError(
        f"cannot derive an object id from {str(sample.image_path)!r}: expected a sample folder S<digits> "
        f"(Real-IAD <cat>/OK/S0001/...) or a file name <cat>_0001_<OK|NG_..>_C<view>_..."
    )


def group_by_object(samples: Sequence[Sample]) -> "OrderedDict[str, list[int]]":
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
    scores = np.asarray(scores, dtype=np.float64)
    groups = group_by_object(samples)
    ids = list(groups)
    labels = np.array([max(samples[i].label for i in idx) for idx in groups.values()], dtype=np.int64)
    obj = np.array([scores[idx].max() for idx in groups.values()], dtype=np.float64)
    return ids, labels, obj
