"""Converters of public real data sets into the MVTec-AD layout, with a fixed, documented split that never
trains on a defective image (``benchmarks/real_datasets.py`` runs them; docs/datasets.md names sources and
licences). Nothing here downloads: each converter reads a copy the user obtained.

* **ELPV** (Buerhop-Lutz et al. 2018, Deitsch et al. 2019; CC BY-NC-SA 4.0): 2624 electroluminescence images
  (300 x 300, 8-bit grey) of solar cells from 44 modules, two categories by cell type (``mono``, ``poly``),
  *image labels only*: a defect probability in {0, 1/3, 2/3, 1} judged by experts. Source: the PyPI package
  ``elpv-dataset`` (``labels.csv`` + ``images/``). Split: probability 0 is normal, probability 1 defective;
  1/3 and 2/3 (the experts were unsure) are left out. Per category the normal images are shuffled with
  ``seed`` and ``train_fraction`` of them train, the rest are ``test/good``; as many defective images as
  there are ``test/good`` ones, drawn with ``seed``, are ``test/defective`` (a balanced test set that keeps
  the kNN baseline's scoring time within a benchmark run). Defects (cracks, inactive regions) are *dark*
  in these images. ``split="units"`` (``elpv_units``) keeps the test cells on *other units* than the training
  ones: the cells are numbered module by module (60 cells a module: 44 blocks of 60 numbers for 44 modules,
  5 blocks holding both cell types, so the boundaries are approximate), so each block of 60 numbers of a
  category is one unit; units are shuffled with ``seed`` and drawn until they hold ``1 - train_fraction`` of
  the category's normal cells; their normal and (as many, drawn) defective cells are the test set, the normal
  cells of the other units train. Brightness differs by unit (module mean grey 114 to 183), as on a line
  where the camera, exposure or supplier changes.
* **BSData** (Schlagenhauf et al. 2021, "Industrial machine tool element surface defect dataset"; CC BY-SA
  4.0): 1104 RGB photographs of ball screw drive spindles (1130 x 460 px), 394 with labelme polygons of
  pitting. Source: a clone of the public repository ``2Obe/BSData`` (``data/*.jpg``, ``label/*.json``,
  ``image_data.json``). One category ``ball_screw`` of BSD type 2 (type 1's 69 images are all annotated,
  so it has no normal images and is left out). An image with at least one pitting polygon is defective,
  its mask rasterised from the polygons; an image without annotation is normal. Split as for ELPV.
* **KolektorSDD** (Tabernik et al. 2019, "Segmentation-based deep-learning approach for surface-defect
  detection", J. Intell. Manuf.; Kolektor Group / ViCoS, CC BY-NC-SA 4.0): 399 grey photographs of
  electrical commutators (500 x about 1260 px, tall), 52 with a crack (thin: a median 0.5 % of the image).
  Source: a clone of the public repository ``stoy95536/KolektorSDD_Yolov8_Datasets`` (the original images as
  ``Datasets/images/{train,val}/NNN.jpg``, the original pixel labels as YOLO polygons in
  ``Datasets/labels/.../NNN.txt``: normalised ``x y`` pairs after a class id, empty for a good image). One
  category ``commutator``; masks are the polygons rasterised at the image's size. Split as for ELPV (the
  repository's own train/val split mixes defective images into training and is not used).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from dpdiff.utils.errors import DataError
from dpdiff.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["PUBLIC_SETS", "convert_elpv", "convert_bsdata", "convert_kolektorsdd", "split_normals"]

#: ``done.json`` in a converted folder records the source and split; a finished conversion is not redone.
DONE_FILE = "done.json"


def split_normals(names: list, train_fraction: float, seed: int) -> tuple[list, list]:
    """(train, test) of the normal images: sorted, shuffled with ``seed``, the first ``train_fraction``."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    k = int(round(train_fraction * len(order)))
    return sorted(order[:k]), sorted(order[k:])


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _finish(out: Path, record: dict) -> dict:
    atomic_write_json(out / DONE_FILE, record)
    logger.info("wrote %s: %s", out, record["counts"])
    return record


def _already_done(out: Path, record: dict) -> dict | None:
    done = out / DONE_FILE
    if done.is_file():
        stored = json.loads(done.read_text())
        keys = ("source", "seed", "train_fraction", "split")
        if {k: stored.get(k, "cells" if k == "split" else None) for k in keys} == {
            k: record.get(k, "cells" if k == "split" else None) for k in keys
        }:
            return stored
        raise DataError(f"{out} holds a conversion made with other settings ({stored}); choose another output")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not a finished conversion; remove it or choose another output")
    return None


def elpv_source() -> Path:
    """The ``data`` folder of the installed ``elpv-dataset`` package (``pip install elpv-dataset``)."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise DataError("ELPV: the package 'elpv-dataset' is not installed (pip install elpv-dataset)")
    return Path(spec.origin).parent / "data"


#: Cells per solar module in ELPV's numbering (the ``units`` split).
ELPV_CELLS_PER_UNIT = 60


def _elpv_unit(path: str) -> int:
    digits = "".join(c for c in Path(path).stem if c.isdigit())
    return (int(digits) - 1) // ELPV_CELLS_PER_UNIT


def _split_by_units(groups: dict[str, list[str]], train_fraction: float, seed: int) -> tuple[list, list, list]:
    """(train normal, test normal, test defective) with whole units on one side (module docstring)."""
    units = sorted({_elpv_unit(p) for names in groups.values() for p in names})
    random.Random(seed).shuffle(units)
    n_normal, held, chosen = len(groups["normal"]), 0, set()
    for u in units:
        if held >= (1.0 - train_fraction) * n_normal:
            break
        chosen.add(u)
        held += sum(_elpv_unit(p) == u for p in groups["normal"])
    train = sorted(p for p in groups["normal"] if _elpv_unit(p) not in chosen)
    test_good = sorted(p for p in groups["normal"] if _elpv_unit(p) in chosen)
    return train, test_good, sorted(p for p in groups["defective"] if _elpv_unit(p) in chosen)


def convert_elpv(
    source: Path | None, out: Path, train_fraction: float = 0.8, seed: int = 0, split: str = "cells"
) -> dict:
    """ELPV (module docstring) from ``source`` (a folder with ``labels.csv`` and ``images/``; default the
    installed package's) into ``out`` in MVTec layout, without ``ground_truth/`` (image labels only).
    ``split``: ``cells`` (normal cells drawn at random) or ``units`` (test cells on other modules)."""
    if split not in ("cells", "units"):
        raise ValueError(f"split must be 'cells' or 'units', got {split!r}")
    source = Path(source) if source else elpv_source()
    labels = source / "labels.csv"
    if not labels.is_file():
        raise DataError(f"ELPV: {labels} not found (expected the elpv-dataset 'data' folder)")
    out = Path(out)
    record = {"source": str(source), "seed": seed, "train_fraction": train_fraction, "dataset": "elpv", "split": split}
    if (done := _already_done(out, record)) is not None:
        return done
    by_type: dict[str, dict[str, list[str]]] = {}
    for n, line in enumerate(labels.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataError(f"ELPV: {labels} line {n}: expected 'path probability type', got {line!r}")
        path, prob, cell_type = parts[0], float(parts[1]), parts[2]
        kind = "normal" if prob == 0.0 else "defective" if prob == 1.0 else None
        if kind is not None:
            by_type.setdefault(cell_type, {"normal": [], "defective": []})[kind].append(path)
    counts = {}
    for cell_type, groups in sorted(by_type.items()):
        if split == "units":
            train, test_good, defective = _split_by_units(groups, train_fraction, seed)
        else:
            train, test_good = split_normals(groups["normal"], train_fraction, seed)
            defective = sorted(groups["defective"])
        random.Random(seed).shuffle(defective)
        defective = sorted(defective[: len(test_good)])
        for part, folder, names in (
            ("train", "good", train),
            ("test", "good", test_good),
            ("test", "defective", defective),
        ):
            for name in names:
                _copy(source / name, out / cell_type / part / folder / Path(name).name)
        counts[cell_type] = {"train": len(train), "test_good": len(test_good), "test_defective": len(defective)}
    return _finish(out, record | {"counts": counts, "left_out": "probabilities 1/3 and 2/3"})


def _polygon_mask(annotation: dict, size: tuple[int, int]) -> Image.Image | None:
    """The union of the annotation's polygons as an L image (0/255) of ``size`` (W, H); None without any."""
    shapes = [s for s in annotation.get("shapes", []) if len(s.get("points", [])) >= 3]
    if not shapes:
        return None
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for s in shapes:
        draw.polygon([(float(x), float(y)) for x, y in s["points"]], fill=255)
    return mask


def convert_bsdata(source: Path, out: Path, train_fraction: float = 0.8, seed: int = 0) -> dict:
    """BSData (module docstring) from a clone ``source`` of the public repository into ``out`` (MVTec layout,
    one category ``ball_screw``, masks ``ground_truth/pitting/<stem>_mask.png``)."""
    source = Path(source)
    index = source / "image_data.json"
    if not index.is_file():
        raise DataError(f"BSData: {index} not found (expected a clone of the BSData repository)")
    out = Path(out)
    record = {"source": str(source), "seed": seed, "train_fraction": train_fraction, "dataset": "bsdata"}
    if (done := _already_done(out, record)) is not None:
        return done
    normal: list[str] = []
    defective: list[tuple[str, dict]] = []
    for entry in json.loads(index.read_text())["images"]:
        if int(entry.get("type", 0)) != 2:
            continue
        name, ann = entry["filename"], entry.get("annotations")
        if not ann:
            normal.append(name)
            continue
        annotation = json.loads((source / "label" / ann).read_text())
        if any(len(s.get("points", [])) >= 3 for s in annotation.get("shapes", [])):
            defective.append((name, annotation))
        else:  # annotated, but no pitting polygon
            normal.append(name)
    cat = out / "ball_screw"
    train, test_good = split_normals(normal, train_fraction, seed)
    for split, names in (("train", train), ("test", test_good)):
        for name in names:
            _copy(source / "data" / name, cat / split / "good" / name)
    for name, annotation in sorted(defective, key=lambda t: t[0]):
        image = source / "data" / name
        with Image.open(image) as im:
            size = im.size
        mask = _polygon_mask(annotation, size)
        assert mask is not None  # defective: at least one polygon
        _copy(image, cat / "test" / "pitting" / name)
        (cat / "ground_truth" / "pitting").mkdir(parents=True, exist_ok=True)
        mask.save(cat / "ground_truth" / "pitting" / f"{Path(name).stem}_mask.png")
    counts = {"ball_screw": {"train": len(train), "test_good": len(test_good), "test_defective": len(defective)}}
    return _finish(out, record | {"counts": counts, "left_out": "BSD type 1 (no normal images)"})


def _yolo_polygons(label_file: Path, size: tuple[int, int]) -> Image.Image | None:
    """The union of a YOLO segmentation label's polygons (``class x1 y1 x2 y2 ...``, coordinates normalised to
    [0, 1]) as an L image (0/255) of ``size`` (W, H); None for an empty label (a good image)."""
    polygons = []
    for line in label_file.read_text().splitlines():
        values = line.split()[1:]
        if len(values) >= 6:
            xy = [float(v) for v in values[: len(values) // 2 * 2]]
            polygons.append([(xy[i] * size[0], xy[i + 1] * size[1]) for i in range(0, len(xy), 2)])
    if not polygons:
        return None
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for polygon in polygons:
        draw.polygon(polygon, fill=255, outline=255)
    return mask


def convert_kolektorsdd(source: Path, out: Path, train_fraction: float = 0.8, seed: int = 0) -> dict:
    """KolektorSDD (module docstring) from a clone ``source`` of ``stoy95536/KolektorSDD_Yolov8_Datasets`` into
    ``out`` (MVTec layout, one category ``commutator``, masks ``ground_truth/crack/<stem>_mask.png``)."""
    source = Path(source)
    images = sorted((source / "Datasets" / "images").glob("*/*.jpg"))
    if not images:
        raise DataError(f"KolektorSDD: no {source}/Datasets/images/*/*.jpg (expected a clone of the repository)")
    out = Path(out)
    record = {"source": str(source), "seed": seed, "train_fraction": train_fraction, "dataset": "kolektorsdd"}
    if (done := _already_done(out, record)) is not None:
        return done
    normal: list[str] = []
    defective: list[tuple[Path, Image.Image]] = []
    for image in images:
        label = source / "Datasets" / "labels" / image.parent.name / f"{image.stem}.txt"
        if not label.is_file():
            raise DataError(f"KolektorSDD: {label} missing (every image has a label file, empty when good)")
        with Image.open(image) as im:
            size = im.size
        mask = _yolo_polygons(label, size)
        if mask is None:
            normal.append(str(image.relative_to(source)))
        else:
            defective.append((image, mask))
    cat = out / "commutator"
    train, test_good = split_normals(normal, train_fraction, seed)
    for split, names in (("train", train), ("test", test_good)):
        for name in names:
            _copy(source / name, cat / split / "good" / Path(name).name)
    for image, mask in defective:
        _copy(image, cat / "test" / "crack" / image.name)
        (cat / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
        mask.save(cat / "ground_truth" / "crack" / f"{image.stem}_mask.png")
    counts = {"commutator": {"train": len(train), "test_good": len(test_good), "test_defective": len(defective)}}
    return _finish(out, record | {"counts": counts, "left_out": "none"})


#: name -> (converter, whether it needs --source)
PUBLIC_SETS: dict[str, tuple[Callable[..., dict], bool]] = {
    "elpv": (convert_elpv, False),
    "elpv_units": (functools.partial(convert_elpv, split="units"), False),
    "bsdata": (convert_bsdata, True),
    "kolektorsdd": (convert_kolektorsdd, True),
}
