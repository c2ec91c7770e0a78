"""BTAD reader: a fixture tree in the layout of the BTAD download, written by the test.

BTAD (``btad.zip``) as users download it::

    01/train/ok/0000.bmp   01/test/ok/0000.bmp   01/test/ko/0000.bmp   01/ground_truth/ko/0000.png
    02/... images .png, masks .png
    03/... images .bmp, masks .bmp

Mask file names equal the image stem (no ``_mask`` suffix).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from image_files import write_box_mask  # tests/data/image_files.py
from PIL import Image

from dpdiff.data.readers import FORMATS, LayoutError, detect_format, list_categories_for, load_samples
from dpdiff.data.readers.btad import KO_DEFECT, find_btad_mask, list_categories, load_btad

SIZE = (24, 20)  # tiny, not square (the readers must not care)
#: category -> (image extension, mask extension), as in the BTAD download
LAYOUT = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
N_TRAIN, N_TEST_OK, N_TEST_KO = 4, 2, 2


def _img(path: Path, value: int, rng: np.random.Generator):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.clip(rng.normal(value, 12, (SIZE[1], SIZE[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(a, "RGB").save(path)


def _mask(path: Path, i: int):
    write_box_mask(path, SIZE, slice(3 + i, 9 + i), slice(4, 12))


def make_btad_tree(root: Path) -> Path:
    """01 and 02 with PNG masks, 03 with BMP masks; ko images carry a bright patch where the mask is."""
    rng = np.random.default_rng(0)
    for c, (img_ext, mask_ext) in LAYOUT.items():
        base = 60 + 40 * int(c)
        for i in range(N_TRAIN):
            _img(root / c / "train" / "ok" / f"{i:04d}{img_ext}", base, rng)
        for i in range(N_TEST_OK):
            _img(root / c / "test" / "ok" / f"{i:04d}{img_ext}", base, rng)
        for i in range(N_TEST_KO):
            p = root / c / "test" / "ko" / f"{i:04d}{img_ext}"
            _img(p, base, rng)
            im = np.asarray(Image.open(p)).copy()
            im[3 + i : 9 + i, 4:12] = 255
            Image.fromarray(im).save(p)
            _mask(root / c / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", i)
    return root


@pytest.fixture
def btad_root(tmp_path: Path) -> Path:
    return make_btad_tree(tmp_path / "BTAD")


def test_lists_every_category_and_sample(btad_root):
    assert "btad" in FORMATS
    assert detect_format(btad_root) == "btad"
    assert list_categories(btad_root) == ["01", "02", "03"]
    assert list_categories_for("auto", btad_root) == ["01", "02", "03"]

    train = load_samples("btad", btad_root, None, "train")  # all categories in one call
    assert len(train) == 3 * N_TRAIN
    assert [(s.category, s.image_path.name) for s in train] == [
        (c, f"{i:04d}{LAYOUT[c][0]}") for c in ("01", "02", "03") for i in range(N_TRAIN)
    ]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in train)
    assert all(s.image_path.parent == btad_root / s.category / "train" / "ok" for s in train)

    test = load_samples("auto", btad_root, None, "test")
    assert test == load_btad(btad_root, None, "test")
    expected = []
    for c, (img_ext, mask_ext) in LAYOUT.items():
        expected += [(c, f"{i:04d}{img_ext}", 0, "good", None) for i in range(N_TEST_OK)]
        expected += [(c, f"{i:04d}{img_ext}", 1, KO_DEFECT, f"{i:04d}{mask_ext}") for i in range(N_TEST_KO)]
    got = [(s.category, s.image_path.name, s.label, s.defect, s.mask_path.name if s.mask_path else None) for s in test]
    assert got == expected
    for s in test:
        folder = "ko" if s.label else "ok"
        assert s.image_path == btad_root / s.category / "test" / folder / s.image_path.name
        if s.label:
            assert s.mask_path == btad_root / s.category / "ground_truth" / "ko" / s.mask_path.name
            assert s.mask_path.is_file() and s.mask_path.stem == s.image_path.stem
    assert KO_DEFECT == "defect"
    # one category, or a subset, in the same call
    assert [s.category for s in load_samples("btad", btad_root, ["03", "01"], "test")] == ["03"] * 4 + ["01"] * 4
    assert len(load_samples("btad", btad_root, "02", "train")) == N_TRAIN


def test_mvtec_reader_refuses_btad_and_btad_reader_names_the_path(btad_root, tmp_path):
    # the reason the format exists: the MVTec reader looks for train/good
    with pytest.raises(LayoutError, match=r"train/good"):
        load_samples("mvtec", btad_root, None, "train")
    notbtad = tmp_path / "x"
    (notbtad / "01" / "training").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"expected '.*01/train/ok' for BTAD") as e:
        load_samples("btad", notbtad, None, "train")
    assert e.value.path == notbtad / "01" / "train" / "ok"
    with pytest.raises(LayoutError, match=r"04"):
        load_btad(btad_root, ["04"], "test")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['resolution'\] for dataset format 'btad'"):
        load_samples("btad", btad_root, None, "test", resolution=256)


def test_missing_mask_names_both_names_tried(btad_root):
    (btad_root / "03" / "ground_truth" / "ko" / "0001.bmp").unlink()
    with pytest.raises(LayoutError, match=r"0001\.png.*0001\.bmp.*03/test/ko/0001\.bmp") as e:
        load_btad(btad_root, ["03"], "test")
    assert e.value.path == btad_root / "03" / "ground_truth" / "ko" / "0001.png"
    test = load_samples("btad", btad_root, ["03"], "test", allow_missing_masks=True)
    assert [s.mask_path is None for s in test if s.label] == [False, True]
    # names are matched case-insensitively, and a BMP mask is found next to a PNG image
    gt = btad_root / "02" / "ground_truth" / "ko"
    (gt / "0000.png").rename(gt / "0000.PNG")
    mask, tried = find_btad_mask(gt, btad_root / "02" / "test" / "ko" / "0000.png")
    assert mask == gt / "0000.PNG" and [t.name for t in tried] == ["0000.png", "0000.bmp"]


def test_png_and_bmp_masks_load_binary(btad_root):
    from dpdiff.data.dataset import load_mask

    for s in (x for x in load_btad(btad_root, None, "test") if x.label):
        m = load_mask(s.mask_path, 16)
        assert m.dtype == bool and 0 < m.sum() < m.size


def test_cli_accepts_every_registered_format():
    from dpdiff.cli import FORMAT_CHOICES, build_parser

    assert set(FORMAT_CHOICES) == set(FORMATS) | {"auto"}
    args = build_parser().parse_args(["train", "--format", "btad", "--data", "x", "--output", "y"])
    assert args.format == "btad"


@pytest.mark.integration
def test_cli_train_and_test_on_btad_fixture(tmp_path, capsys, tiny_config):
    """`dpdiff train --format btad --data ROOT` trains ONE model on 01/02/03; `dpdiff test` reports each.

    The tiny_config fixture (tests/conftest.py), 2 steps: about 3-4 s on one CPU core, so not marked slow."""
    import yaml

    from dpdiff.cli import main

    root = make_btad_tree(tmp_path / "BTAD")
    cfg = tiny_config().to_dict()
    cfg["data"]["root"] = None
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg_path),
                "--format",
                "btad",
                "--data",
                str(root),
                "--output",
                str(run),
                "--set",
                "train.steps=2",
            ]
        )
        == 0
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["categories"] == ["01", "02", "03"]
    assert main(["test", str(run), "--overlays", "0", "--no-report"]) == 0
    out = capsys.readouterr().out
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["per_category"]) == {"01", "02", "03"}
    for c in ("01", "02", "03"):
        assert f"| {c} |" in out
