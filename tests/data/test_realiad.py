"""Real-IAD / Real-IAD Variety readers: fixtures in the exact layouts, object ids, S1/S2/S3 subsets."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from image_files import write_box_mask, write_image  # tests/data/image_files.py
from PIL import Image

from dpdiff.data.readers import LayoutError, detect_format, list_categories_for, load_samples
from dpdiff.data.readers.realiad import (
    find_json_dir,
    group_by_object,
    list_categories,
    list_variety_categories,
    load_realiad,
    load_realiad_variety,
    object_id,
    object_scores,
)
from dpdiff.data.readers.realiad_layout import match_categories, normalize_category
from dpdiff.data.readers.realiad_variety_splits import S1, S2, S3, SUBSETS, subset_categories
from dpdiff.data.types import Sample

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper" / "DPDiff-AD.txt"


def _img(path: Path, size=(16, 16)):
    write_image(path, size, (100, 100, 100), "RGB")


def _mask255(path: Path, size=(16, 16)):
    """Real-IAD masks are 0/255 PNGs."""
    write_box_mask(path, size, slice(4, 8), slice(4, 8))


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
        "audiojack/OK/S0001",
        "audiojack/NG/BX/S0001",
        "audiojack/NG/AK/S0001",
        "toy_brick/NG/HS/S0003",
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
    assert [s.image_path.name for s in load_realiad(flat, None, "test")] == [
        s.image_path.name for s in load_realiad(realiad_root, ["toy_brick"], "test")
    ]


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
        test += _object(
            cat_dir, "NG/Deformation/S000002", "S000002_C{v}_ng", ".png", masked_views=(1,), mask_suffix="_mask"
        )
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
    seg = text[text.index("S1 Categories (30 Classes)") : text.index("Appendix B More Quantitative")]
    parts = re.split(r"S[123] Categories \(\d+ Classes\)", seg)[1:]
    lists = [[x.strip().rstrip(".") for x in re.split(r",\s*", p.strip()) if x.strip()] for p in parts]
    assert lists == [list(S1), list(S2), list(S3)]


# ------------------------------------------------------------------ Real-IAD: prefix, JSON folders, training rows


def test_empty_prefix_paths_start_with_the_category(tmp_path):
    """meta.prefix "" (official loader: os.path.join(image_dir, "", image_path)) with image paths
    that start with the category folder: read relative to realiad_<res>/ itself."""
    root = tmp_path / "Real-IAD"
    img_root = root / "realiad_1024"
    train = _object(img_root, "audiojack/OK/S0002", "audiojack_0002_OK_C{v}_20231021130235", ".jpg")
    test = _object(img_root, "audiojack/OK/S0001", "audiojack_0001_OK_C{v}_20231021130111", ".jpg")
    test += _object(
        img_root, "audiojack/NG/BX/S0001", "audiojack__0001_NG_BX_C{v}_20231023111538", ".jpg", masked_views=(1,)
    )
    for e in train + test:
        e["category"] = "audiojack"
        if e["image_path"].startswith("audiojack/NG/"):
            e["anomaly_class"] = "BX"
    _write_json(root / "realiad_jsons" / "audiojack.json", "audiojack", train, test, prefix="")
    samples = load_realiad(root, None, "test")
    assert len(samples) == 10 and [s.label for s in samples] == [0] * 5 + [1, 0, 0, 0, 0]
    assert all(s.image_path.is_file() for s in samples)
    assert samples[5].image_path == img_root / "audiojack/NG/BX/S0001/audiojack__0001_NG_BX_C1_20231023111538.jpg"
    assert samples[5].mask_path == samples[5].image_path.with_suffix(".png")
    assert {object_id(s) for s in samples} == {"audiojack/OK/S0001", "audiojack/NG/BX/S0001"}
    assert len(load_realiad(root, None, "train")) == 5


def test_prefix_set_and_category_relative_paths_still_work(realiad_root):
    # the usual case: prefix "<cat>/", paths relative to the category folder (fixture default)
    doc = json.loads((realiad_root / "realiad_jsons/realiad_jsons/toy_brick.json").read_text())
    assert doc["meta"]["prefix"] == "toy_brick/" and not doc["test"][0]["image_path"].startswith("toy_brick")
    assert all(s.image_path.is_file() for s in load_realiad(realiad_root, ["toy_brick"], "test"))


def test_variant_json_folders_next_to_realiad_jsons(realiad_root, tmp_path):
    """Tencent's README: realiad_jsons/, realiad_jsons_sv/, realiad_jsons_fuiad_0.x/ side by side in the root."""
    root = tmp_path / "readme_layout"
    root.mkdir()
    (root / "realiad_1024").symlink_to(realiad_root / "realiad_1024")
    src = realiad_root / "realiad_jsons"
    (root / "realiad_jsons").mkdir()
    (root / "realiad_jsons" / "audiojack.json").write_text((src / "realiad_jsons" / "audiojack.json").read_text())
    (root / "realiad_jsons_sv").mkdir()
    (root / "realiad_jsons_sv" / "audiojack.json").write_text((src / "realiad_jsons_sv" / "audiojack.json").read_text())
    assert detect_format(root) == "realiad"
    assert find_json_dir(root) == root / "realiad_jsons"
    assert find_json_dir(root, "realiad_jsons_sv") == root / "realiad_jsons_sv"
    assert len(load_realiad(root, None, "test")) == 15
    assert len(load_realiad(root, None, "test", json_dir="realiad_jsons_sv")) == 2


def test_anomalous_training_entries_are_left_out_and_counted(realiad_root, caplog):
    """A FUIAD-style JSON lists NG entries under "train": training never sees them."""
    jd = realiad_root / "realiad_jsons" / "realiad_jsons_fuiad_0.1"
    doc = json.loads((realiad_root / "realiad_jsons/realiad_jsons/audiojack.json").read_text())
    ng = [e for e in doc["test"] if e["anomaly_class"] != "OK"]  # 10 NG views (3 with a mask)
    _write_json(jd / "audiojack.json", "audiojack", doc["train"] + ng, doc["test"])
    with caplog.at_level(logging.WARNING, logger="dpdiff.data"):
        train = load_samples("realiad", realiad_root, ["audiojack"], "train", json_dir="realiad_jsons_fuiad_0.1")
    assert len(train) == 5 and all(s.label == 0 and s.defect == "good" for s in train)
    msgs = [r.getMessage() for r in caplog.records if r.name == "dpdiff.data.readers.realiad"]
    assert len(msgs) == 1 and "left out 10 anomalous training rows" in msgs[0]
    assert str(jd / "audiojack.json") in msgs[0]
    # ng_without_mask does not bring them back into training
    train = load_realiad(
        realiad_root, ["audiojack"], "train", json_dir="realiad_jsons_fuiad_0.1", ng_without_mask="anomaly"
    )
    assert len(train) == 5
    # the test split is untouched, and a clean JSON logs nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dpdiff.data"):
        assert len(load_realiad(realiad_root, ["audiojack"], "test", json_dir="realiad_jsons_fuiad_0.1")) == 15
        load_realiad(realiad_root, None, "train")
    assert not [r for r in caplog.records if "left out" in r.getMessage()]


# ----------------------------------------------------------------------------- Variety names

# The 160 Real-IAD Variety folder names as spelled in a third-party list (a public AnomalyCLIP-style
# loader's ``generate_class_info('Real-IAD-Variety')``): hyphens and joined words where the paper
# writes underscores. Comma-separated, as one name holds a space ("slipper- model").
THIRD_PARTY_VARIETY_NAMES = tuple(
    (
        "2pin_block_plug, 3_adapter, 3pin_aviation_connector, 4_wire_stepping_motor, D-sub-connector, DVD_switch,"
        " LED_indicator, PLCC_socket, VR_joystick, access_card, accurate_detection_switch, aircraft_model_head,"
        " angled_toggle_switch, audio_jack_socket, bag_buckle, ball_pin, balun_transformer, battery,"
        " battery_holder_connector, battery_socket_connector, bend_connector, blade_switch, blue_light_switch,"
        " bluetooth_module, boost_converter_module, bread_model, brooch_clasp_accessory, button_battery_holder,"
        " button_motor, button_switch, car_door_lock_switch, ceramic_fuse, ceramic_wave_filter, charging_port,"
        " chip-inductor, circuit_breaker, circular_aviation_connector, common-mode-choke, common-mode-filter,"
        " connector, connector_housing-female, console_switch, crimp_st_cable_mount_box, dc_jack, dc_power_connector,"
        " detection_switch, duckbill_circuit_breaker, earphone_audio_unit, effect_transistor,"
        " electronic_watch_movement, ethernet-connector, ferrite_bead, ffc_connector_plug, flow_control_valve,"
        " flower_copper_shape, flower_velvet_fabric, fork-crimp-terminal, fuse_cover, fuse_holder, gear, gear_motor,"
        " green-ring-filter, hairdryer_switch, hall_effect_sensor, headphone_jack-female, headphone_jack_socket,"
        " hex_plug, humidity_sensor, ingot_buckle, insect_metal_parts, inverter_connector, jam_jar_model,"
        " joystick_switch, kfc_push-key_switch, knob-cap, laser_diode, lattice_block_plug, lego-pin-connector-plate,"
        " lego-propeller, lego-reel, lego-technical-gear, lego-turbine, lighting_connector, lilypad_led, limit-switch,"
        " lithium_battery_plug, littel-fuse, little_cow_model, lock, long-zipper, meteor_hammer_arrowhead,"
        " miniature_laser_module, miniature_lifting_motor, miniature_motor, miniature_stepper_motor,"
        " mobile_charging_connector, model_steering_module, monitor_socket, motor_bracket, motor_gear_reducer,"
        " motor_plug, mouse_socket, multi_function_switch, nylon_ball_head, optical_fiber_outlet, pencil_sharpener,"
        " pinboard_connector, pitch_connector, pneumatic_elbow, pot_core, potentiometer, power_bank_module,"
        " power_inductor, power_jack, power_strip_socket, pulse_transformer, purple-clay-pot, push_button_switch,"
        " push_in_terminal, recorder_switch, rectangular-connector-accessories, red_terminal, retaining_ring,"
        " rheostat, rotary_position_sensor, round_twist_switch, self-lock_switch, shelf_support_module,"
        " side_press_switch, side_release_buckle, silicon_cell_sensor, sim_card_reader, single-pole_potentiometer,"
        " single_switch, slide_switch, slipper- model, small_leaf, smd_receiver_module, solderless_adapter,"
        " spherical_airstone, spring_antenna, square_terminal, steering_T-head, steering_wheel, suction-cup,"
        " telephone_spring_switch, tension_snap_release_clip, thumbtack, thyristor, toy-tire, traceless_hair_clip,"
        " travel_switch, travel_switch_green, tubular_key_switch, vacuum_switch, vehicle_harness_conductor,"
        " vertical-adjustable-resistor, vibration_motor, volume_potentiometer, wireless_receiver_module"
    ).split(", ")
)


def _json_only_root(tmp_path: Path, names) -> Path:
    jd = tmp_path / "rv" / "realiadvariety_jsons" / "Real-IAD_Variety_jsons"
    jd.mkdir(parents=True)
    for n in names:
        (jd / f"{n}.json").write_text('{"meta": {}, "train": [], "test": []}')
    return tmp_path / "rv"


def test_third_party_spelling_differs_as_reported():
    assert len(THIRD_PARTY_VARIETY_NAMES) == 160 == len({normalize_category(n) for n in THIRD_PARTY_VARIETY_NAMES})
    on_list = set(THIRD_PARTY_VARIETY_NAMES)
    assert [sum(n not in on_list for n in s) for s in (S1, S2, S3)] == [1, 7, 20]
    assert "D-sub-connector" in on_list and "lilypad_led" in on_list and "lily_pad_led" in S3


@pytest.mark.parametrize("spelling", ["paper", "third_party"])
@pytest.mark.parametrize("subset", ["S1", "S2", "S3"])
def test_every_subset_name_matches_both_spellings(tmp_path, spelling, subset):
    if spelling == "paper":  # the paper's 100 names plus the 60 other folders
        extra = [
            n for n in THIRD_PARTY_VARIETY_NAMES if normalize_category(n) not in {normalize_category(x) for x in S3}
        ]
        names = list(S3) + extra
    else:
        names = list(THIRD_PARTY_VARIETY_NAMES)
    root = _json_only_root(tmp_path, names)
    assert len(subset_categories("Full", root)) == 160
    got = subset_categories(subset, root)
    assert len(got) == len(SUBSETS[subset])
    assert set(got) <= set(names)  # the on-disk spelling is returned
    assert [normalize_category(g) for g in got] == [normalize_category(n) for n in SUBSETS[subset]]  # paper order
    if spelling == "paper":
        assert got == SUBSETS[subset]
    else:
        assert got[4] == "D-sub-connector"
        if subset == "S3":
            assert "lilypad_led" in got and "littel-fuse" in got


def test_unmatched_subset_name_lists_the_closest_on_disk_names(tmp_path):
    names = [n for n in THIRD_PARTY_VARIETY_NAMES if n not in ("chip-inductor", "D-sub-connector")]
    names.append("chip_inductors")  # a near miss
    root = _json_only_root(tmp_path, names)
    with pytest.raises(ValueError) as e:
        subset_categories("S2", root)
    msg = str(e.value)
    assert msg.startswith("2 categories of subset S2 are not found under")
    assert "'D_sub_connector' (closest on disk: [" in msg
    assert "'chip_inductor' (closest on disk: ['chip_inductors'" in msg
    assert "ignoring case, hyphens, underscores and spaces" in msg


def test_ambiguous_spellings_are_an_error():
    with pytest.raises(
        ValueError, match=r"match several names on disk.*'knob cap' \(matches \['knob-cap', 'knob_cap'\]\)"
    ):
        match_categories(["knob cap"], ["knob-cap", "knob_cap"])
    assert match_categories(["knob_cap"], ["knob-cap", "knob_cap"]) == ["knob_cap"]  # exact name wins


def test_variety_reader_with_hyphenated_folders(tmp_path):
    """JSON and image folder named D-sub-connector: the paper spelling in a subset list resolves to it,
    and a JSON stem spelled differently from its image folder still finds the images."""
    root = tmp_path / "rv"
    jd = root / "realiadvariety_jsons"
    for cat, folder in (("D-sub-connector", "D-sub-connector"), ("chip_inductor", "chip-inductor")):
        cat_dir = root / "realiadvariety_raw" / folder
        train = _object(cat_dir, "OK/S000001", "S000001_C{v}_ok", ".png")
        test = _object(
            cat_dir, "NG/Deformation/S000002", "S000002_C{v}_ng", ".png", masked_views=(1,), mask_suffix="_mask"
        )
        _write_json(jd / f"{cat}.json", cat, train, test, prefix=f"{cat}/")
    assert match_categories(["D_sub_connector", "chip-inductor"], list_variety_categories(root)) == [
        "D-sub-connector",
        "chip_inductor",
    ]
    test = load_realiad_variety(root, None, "test", resolution="raw")
    assert len(test) == 10 and {s.category for s in test} == {"D-sub-connector", "chip_inductor"}
    assert all(s.image_path.is_file() for s in test)
    assert {s.image_path.parts[-5] for s in test if s.category == "chip_inductor"} == {"chip-inductor"}
    with pytest.raises(LayoutError, match=r"D_sub_connector\.json.*did you mean 'D-sub-connector'"):
        load_realiad_variety(root, ["D_sub_connector"], "test", resolution="raw")
