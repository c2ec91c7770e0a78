"""Real-IAD / Real-IAD Variety readers: fixtures in the exact layouts, object ids, S1/S2/S3 subsets."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpdiff.data.formats import LayoutError, detect_format, list_categories_for, load_samples
from dpdiff.data.mvtec import Sample
from dpdiff.data.realiad import (
    find_json_dir,
    group_by_object,
    list_categories,
    list_variety_categories,
    load_realiad,
    load_realiad_variety,
    object_id,
    object_scores,
)
from dpdiff.data.realiad_variety_splits import S1, S2, S3, SUBSETS, subset_categories

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper" / "DPDiff-AD.txt"


def _img(path: Path, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (100, 100, 100)).save(path)


def _mask255(path: Path, size=(16, 16)):
    """Real-IAD masks are 0/255 PNGs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0]), np.uint8)
    a[4:8, 4:8] = 255
    Image.fromarray(a).save(path)


def _object(cat_dir: Path, rel_dir: str, stem_fmt: str, ext: str, masked_views=(), mask_suffix="") -> list[dict]:
    """Five views C1..C5 of one object; returns the JSON entries (paths relative to cat_dir)."""
    entries = []
    cls = "OK" if rel_dir.startswith("OK") else rel_dir.split("/")[1]
    for v in range(1, 6):
        name = stem_fmt.format(v=v)
        image_rel = f"{rel_dir}/{name}{ext}"
        _img(cat_dir / image_rel)
        mask_rel = None
        if v in masked_views:
            mask_rel = f"{rel_dir}/{name}{mask_suffix}.png"
            _mask255(cat_dir / mask_rel)
        entries.append({"category": cat_dir.name, "anomaly_class": cls, "image_path": image_rel, "mask_path": mask_rel})
    return entries


def _write_json(path: Path, cat: str, train: list, test: list, prefix=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"prefix": prefix if prefix is not None else f"{cat}/", "normal_class": "OK"}
    path.write_text(json.dumps({"meta": meta, "train": train, "test": test}))


@pytest.fixture
def realiad_root(tmp_path: Path) -> Path:
    """realiad_1024/<cat>/{OK,NG/<code>}/S####/..., JSONs as extracted: realiad_jsons/realiad_jsons/<cat>.json."""
    root = tmp_path / "Real-IAD"
    jd = root / "realiad_jsons" / "realiad_jsons"
    # audiojack: double underscore in NG names (as in the real data); sample numbers restart per folder
    cat = root / "realiad_1024" / "audiojack"
    train = _object(cat, "OK/S0002", "audiojack_0002_OK_C{v}_20231021130235", ".jpg")
    test = _object(cat, "OK/S0001", "audiojack_0001_OK_C{v}_20231021130111", ".jpg")
    test += _object(cat, "NG/BX/S0001", "audiojack__0001_NG_BX_C{v}_20231023111538", ".jpg", masked_views=(1, 3))
    test += _object(cat, "NG/AK/S0001", "audiojack__0001_NG_AK_C{v}_20231023111600", ".jpg", masked_views=(2,))
    _write_json(jd / "audiojack.json", "audiojack", train, test)
    # a single-view variant next to the default one
    _write_json(root / "realiad_jsons" / "realiad_jsons_sv" / "audiojack.json", "audiojack", train[:1], test[:2])
    # toy_brick: single underscore
    cat = root / "realiad_1024" / "toy_brick"
    train = _object(cat, "OK/S0258", "toy_brick_0258_OK_C{v}_20231101101010", ".jpg")
    test = _object(cat, "NG/HS/S0003", "toy_brick_0003_NG_HS_C{v}_20231101111111", ".jpg", masked_views=(1, 2, 3, 4, 5))
    _write_json(jd / "toy_brick.json", "toy_brick", train, test)
    return root


def test_realiad_counts_labels_masks(realiad_root):
    assert list_categories(realiad_root) == ["audiojack", "toy_brick"]
    assert find_json_dir(realiad_root) == realiad_root / "realiad_jsons" / "realiad_jsons"
    train = load_realiad(realiad_root, None, "train")
    assert len(train) == 10 and all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in train)

    test = load_realiad(realiad_root, ["audiojack"], "test")
    assert len(test) == 15
    assert [s.label for s in test] == [0] * 5 + [1, 0, 1, 0, 0] + [0, 1, 0, 0, 0]
    assert [s.defect for s in test] == ["good"] * 5 + ["BX"] * 5 + ["AK"] * 5
    for s in test:
        assert s.image_path.is_file() and s.category == "audiojack"
        assert s.image_path.parent.parent.parent.name in ("audiojack", "NG")
        if s.label:
            assert s.mask_path == s.image_path.with_suffix(".png") and s.mask_path.is_file()
            assert np.unique(np.asarray(Image.open(s.mask_path))).tolist() == [0, 255]
        else:
            assert s.mask_path is None


def test_ng_views_without_mask_policy(realiad_root):
    anom = load_realiad(realiad_root, ["audiojack"], "test", ng_without_mask="anomaly")
    assert [s.label for s in anom] == [0] * 5 + [1] * 10
    assert sum(s.mask_path is not None for s in anom) == 3
    drop = load_realiad(realiad_root, ["audiojack"], "test", ng_without_mask="drop")
    assert len(drop) == 8 and all(s.label == (s.defect != "good") for s in drop)
    with pytest.raises(ValueError, match="ng_without_mask"):
        load_realiad(realiad_root, ["audiojack"], "test", ng_without_mask="maybe")


def test_object_ids(realiad_root):
    test = load_realiad(realiad_root, None, "test")
    ids = [object_id(s) for s in test]
    # OK/S0001, NG/BX/S0001 and NG/AK/S0001 are three different objects of audiojack
    assert list(dict.fromkeys(ids)) == [
        "audiojack/OK/S0001", "audiojack/NG/BX/S0001", "audiojack/NG/AK/S0001", "toy_brick/NG/HS/S0003",
    ]
    groups = group_by_object(test)
    assert all(len(v) == 5 for v in groups.values())
    scores = np.arange(len(test), dtype=float)
    oids, labels, oscores = object_scores(test, scores)
    assert oids == list(groups) and labels.tolist() == [0, 1, 1, 1]
    assert oscores.tolist() == [4.0, 9.0, 14.0, 19.0]
    # nested <cat>/<cat> folders and flat copies without a sample folder
    nested = Sample(Path("/d/realiadvariety_raw/lock/lock/NG/Crack/S000011/x_C1_y.png"), None, 1, "Crack", "lock")
    assert object_id(nested) == "lock/NG/Crack/S000011"
    flat = Sample(Path("/x/bad/audiojack__0001_NG_BX_C2_20231023111538.jpg"), None, 1, "bad", "audiojack")
    assert object_id(flat) == "audiojack/audiojack__0001_NG_BX"
    with pytest.raises(ValueError, match="object id"):
        object_id(Sample(Path("/x/000.png"), None, 0, "good", "bottle"))


def test_json_dir_variants(realiad_root, tmp_path):
    sv = load_realiad(realiad_root, ["audiojack"], "test", json_dir="realiad_jsons_sv")
    assert len(sv) == 2
    # flat layout of Tencent's README: <root>/realiad_jsons/<cat>.json
    flat = tmp_path / "flat"
    (flat / "realiad_jsons").mkdir(parents=True)
    (flat / "realiad_1024").symlink_to(realiad_root / "realiad_1024")
    src = realiad_root / "realiad_jsons" / "realiad_jsons" / "toy_brick.json"
    (flat / "realiad_jsons" / "toy_brick.json").write_text(src.read_text())
    assert list_categories(flat) == ["toy_brick"]
    assert [s.image_path.name for s in load_realiad(flat, None, "test")] == \
        [s.image_path.name for s in load_realiad(realiad_root, ["toy_brick"], "test")]


def test_realiad_layout_errors(realiad_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match=re.escape(str(empty / "realiad_jsons"))):
        load_realiad(empty, None, "train")
    with pytest.raises(LayoutError, match=r"realiad_512.*realiad_1024") as e:
        load_realiad(realiad_root, None, "train", resolution=512)
    assert e.value.path == realiad_root / "realiad_512"
    with pytest.raises(LayoutError, match=r"realiad_jsons/zipper\.json"):
        load_realiad(realiad_root, ["zipper"], "test")
    img = realiad_root / "realiad_1024/audiojack/NG/BX/S0001/audiojack__0001_NG_BX_C4_20231023111538.jpg"
    img.unlink()
    with pytest.raises(LayoutError, match=re.escape(str(img))):
        load_realiad(realiad_root, ["audiojack"], "test")
    mask = realiad_root / "realiad_1024/toy_brick/NG/HS/S0003/toy_brick_0003_NG_HS_C2_20231101111111.png"
    mask.unlink()
    with pytest.raises(LayoutError, match="expected mask " + re.escape(repr(str(mask)))):
        load_realiad(realiad_root, ["toy_brick"], "test")


def test_realiad_registry(realiad_root):
    assert detect_format(realiad_root) == "realiad"
    assert list_categories_for("realiad", realiad_root, resolution=1024) == ["audiojack", "toy_brick"]
    a = load_samples("auto", realiad_root, "toy_brick", "test", resolution="1024")
    assert a == load_realiad(realiad_root, ["toy_brick"], "test")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['split_csv'\]"):
        load_samples("realiad", realiad_root, None, "test", split_csv="x")


# ----------------------------------------------------------------------------- Real-IAD Variety


@pytest.fixture
def variety_root(tmp_path: Path) -> Path:
    """realiadvariety_raw/<cat>/ (one category nested <cat>/<cat>), PNG images, *_mask.png masks,
    JSONs under a wrapper folder realiadvariety_jsons/Real-IAD_Variety_jsons/."""
    root = tmp_path / "Real-IAD_Variety"
    jd = root / "realiadvariety_jsons" / "Real-IAD_Variety_jsons"
    for cat, nested in (("2pin_block_plug", True), ("D_sub_connector", False)):
        cat_dir = root / "realiadvariety_raw" / cat / (cat if nested else "")
        train = _object(cat_dir, "OK/S000001", "S000001_C{v}_ok", ".png")
        test = _object(cat_dir, "OK/S000002", "S000002_C{v}_ok", ".png")
        test += _object(cat_dir, "NG/Deformation/S000002", "S000002_C{v}_ng", ".png", masked_views=(1,),
                        mask_suffix="_mask")
        for e in train + test:
            e["category"] = cat
        _write_json(jd / f"{cat}.json", cat, train, test)
    return root


def test_variety_reader(variety_root):
    assert detect_format(variety_root) == "realiad_variety"
    assert list_variety_categories(variety_root) == ["2pin_block_plug", "D_sub_connector"]
    with pytest.raises(LayoutError, match=r"realiadvariety_1024.*realiadvariety_raw"):
        load_realiad_variety(variety_root, None, "train")
    train = load_realiad_variety(variety_root, None, "train", resolution="raw")
    assert len(train) == 10 and all(s.label == 0 for s in train)
    test = load_samples("realiad_variety", variety_root, "Full", "test", resolution="raw")
    assert len(test) == 20 and sum(s.label for s in test) == 2
    nested = [s for s in test if s.category == "2pin_block_plug"]
    assert all("2pin_block_plug/2pin_block_plug/" in s.image_path.as_posix() for s in nested)
    masked = [s for s in test if s.label]
    assert all(s.mask_path.name.endswith("_C1_ng_mask.png") and s.mask_path.is_file() for s in masked)
    assert {object_id(s) for s in nested} == {"2pin_block_plug/OK/S000002", "2pin_block_plug/NG/Deformation/S000002"}
    # the paper subsets are checked against the categories on disk
    with pytest.raises(ValueError, match=r"28 categories of subset S1 are not found"):
        load_realiad_variety(variety_root, "S1", "test", resolution="raw")
    with pytest.raises(LayoutError, match=r"D_SUB_CONNECTOR\.json.*did you mean 'D_sub_connector'"):
        load_realiad_variety(variety_root, ["D_SUB_CONNECTOR"], "test", resolution="raw")


def test_subsets_counts_and_nesting():
    assert (len(S1), len(S2), len(S3)) == (30, 60, 100)
    assert all(len(set(s)) == len(s) for s in (S1, S2, S3))
    # as printed in the paper the lists are nested prefixes of one ordering
    assert set(S1) < set(S2) < set(S3)
    assert list(S2[:30]) == list(S1) and list(S3[:60]) == list(S2)
    assert SUBSETS["S3"] == list(S3) and subset_categories("S2") == list(S2)
    with pytest.raises(ValueError, match="pass root"):
        subset_categories("Full")
    with pytest.raises(ValueError, match="unknown Real-IAD Variety subset"):
        subset_categories("S4")


@pytest.mark.skipif(not PAPER.is_file(), reason=f"paper text not found at {PAPER}")
def test_subsets_match_the_paper_appendix():
    text = PAPER.read_text(encoding="utf-8")
    seg = text[text.index("S1 Categories (30 Classes)"):text.index("Appendix B More Quantitative")]
    parts = re.split(r"S[123] Categories \(\d+ Classes\)", seg)[1:]
    lists = [[x.strip().rstrip(".") for x in re.split(r",\s*", p.strip()) if x.strip()] for p in parts]
    assert lists == [list(S1), list(S2), list(S3)]
