"""Decision thresholds (dpdiff/inference/calibration.py): the conformal quantile gives the false-alarm rate asked for,
F1 thresholds split the classes, calibration.json round-trips and is ignored for another model, and on synthetic
data a calibrated tiny model's false-alarm rate on new normal images is within the binomial tolerance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dpdiff.inference.calibration import (
    Calibration,
    Thresholds,
    f1_threshold,
    fpr_threshold,
    fpr_thresholds,
    hold_out_for_calibration,
    min_normal_images,
    read_calibration,
    write_calibration,
)
from dpdiff.inference.detector import Detector
from dpdiff.utils.errors import ConfigError, DataError
from dpdiff.utils.run_files import CALIBRATION_FILE
from dpdiff.workflows.train import train


# ---------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("fpr, need", [(0.01, 99), (0.05, 19), (0.1, 9), (0.2, 4), (0.5, 1)])
def test_fewest_images_that_can_set_a_rate(fpr, need):
    assert min_normal_images(fpr) == need
    fpr_threshold(np.arange(need, dtype=float) + 1.0, fpr)  # enough
    with pytest.raises(DataError, match=f"needs at least {need} normal images, got {need - 1}"):
        fpr_threshold(np.arange(need - 1, dtype=float) + 1.0, fpr)


@pytest.mark.parametrize("n, fpr", [(99, 0.01), (40, 0.05), (120, 0.1), (25, 0.2)])
def test_conformal_threshold_holds_the_rate_on_new_samples(n, fpr):
    """Exchangeable scores: P(new > threshold) = (n + 1 - k) / (n + 1), in [fpr - 1/(n+1), fpr]. Checked by
    simulation: 100000 calibrations of n samples, one new sample each, within 4 sigma of the binomial mean
    (the function itself on the first 300, the same order statistic vectorised on the rest)."""
    rng = np.random.default_rng(0)
    trials = 100_000
    calibration = rng.lognormal(size=(trials, n))
    new = rng.lognormal(size=trials)
    threshold, expected = fpr_threshold(calibration[0], fpr)
    k = int(np.searchsorted(np.sort(calibration[0]), threshold)) + 1  # the rank the function picked
    thresholds = np.sort(calibration, axis=1)[:, k - 1]
    assert all(fpr_threshold(c, fpr)[0] == t for c, t in zip(calibration[:300], thresholds[:300], strict=True))
    rate = float(np.mean(new > thresholds))
    assert expected == pytest.approx((n + 1 - k) / (n + 1))
    assert fpr - 1.0 / (n + 1) - 1e-12 <= expected <= fpr + 1e-12
    assert abs(rate - expected) <= 4 * math.sqrt(expected * (1 - expected) / trials)


def test_fpr_thresholds_refuse_non_finite_and_set_the_pixel_threshold_on_pixels():
    rng = np.random.default_rng(1)
    maps = rng.random((20, 8, 8)).astype(np.float32) + 0.1
    t = fpr_thresholds(maps.max(axis=(1, 2)), maps, 0.1, pixel_fpr=0.05)
    assert t.method == "fpr" and t.num_images == 20 and t.target_fpr == 0.1
    assert t.details["target_pixel_fpr"] == 0.05  # the pixel threshold's own rate, not the image rate
    assert abs(float((maps > t.pixel).mean()) - 0.05) < 0.01  # 1280 pixels: the rate on the pixels themselves
    assert float((maps > fpr_thresholds(maps.max(axis=(1, 2)), maps, 0.1).pixel).mean()) <= 0.001 + 1e-9
    with pytest.raises(DataError, match="non-finite"):
        fpr_threshold(np.array([1.0] * 30 + [np.nan]), 0.1)


def test_f1_threshold_separates_the_classes_at_the_gap():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold, f1 = f1_threshold(scores, labels)
    assert f1 == 1.0 and threshold == pytest.approx(0.6)
    noisy = np.array([0.1, 0.5, 0.3, 0.4, 1.0, 1.1])  # one anomaly (0.4) below a normal image (0.5)
    threshold, f1 = f1_threshold(noisy, labels)
    decided = noisy > threshold
    tp = int((decided & (labels == 1)).sum())
    assert f1 == pytest.approx(2 * tp / (decided.sum() + labels.sum()))  # F1 of the decision "score > threshold"
    with pytest.raises(DataError, match="both normal and anomalous"):
        f1_threshold(scores, np.zeros(6))


def test_hold_out_is_per_category_seeded_and_disjoint():
    samples = [SimpleNamespace(category=c, image_path=f"{c}/{i}") for c in "ab" for i in range(10)]
    samples += [SimpleNamespace(category="c", image_path="c/0")]  # one image: never held out
    kept, held = hold_out_for_calibration(samples, 0.3, seed=4)
    assert sorted(s.image_path[0] for s in held) == ["a"] * 3 + ["b"] * 3
    assert {s.image_path for s in kept} | {s.image_path for s in held} == {s.image_path for s in samples}
    assert not {s.image_path for s in kept} & {s.image_path for s in held}
    assert kept == [s for s in samples if s in kept]  # training order kept
    assert hold_out_for_calibration(samples, 0.3, seed=4) == (kept, held)
    assert hold_out_for_calibration(samples, 0.3, seed=5)[1] != held
    assert hold_out_for_calibration(samples, 0.0, seed=4) == (samples, [])


def test_calibration_file_round_trip_and_fingerprint(tmp_path, caplog):
    t = Thresholds(2.0, 1.5, "fpr", 120, 0.01, {"expected_image_fpr": 0.0083})
    cal = Calibration({"weights_sha256": "abc", "settings": {"x": 1}}).with_thresholds(t)
    cal = cal.with_thresholds(Thresholds(3.0, None, "f1", 40), "screw")
    path = write_calibration(tmp_path / CALIBRATION_FILE, cal)
    back = read_calibration(path, {"weights_sha256": "abc", "settings": {"x": 1}})
    assert back.overall == t and back.per_category["screw"].image == 3.0 and back.per_category["screw"].pixel is None
    assert back.thresholds("screw").image == 3.0 and back.thresholds("nut") == t and back.thresholds() == t
    assert read_calibration(path, {"weights_sha256": "other", "settings": {"x": 1}}) is None
    assert "other model weights" in caplog.text
    assert read_calibration(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        read_calibration(tmp_path / "bad.json")
    d = json.loads(path.read_text())
    d["global"]["image_threshold"] = -1.0
    (tmp_path / "neg.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match="positive"):
        read_calibration(tmp_path / "neg.json")


# ---------------------------------------------------------------------------------------------- a tiny trained model
N_CALIBRATE, N_MEASURE, TARGET_FPR = 120, 120, 0.2


@pytest.fixture(scope="module")
def normal_data(tmp_path_factory, tiny_dataset) -> Path:
    root = tmp_path_factory.mktemp("calib") / "data"
    tiny_dataset(root, num_categories=1, train_per_category=8, test_good_per_category=N_CALIBRATE + N_MEASURE)
    return root


@pytest.fixture(scope="module")
def run(normal_data, tmp_path_factory, tiny_config, train_tiny_run) -> Path:
    return train_tiny_run(normal_data, tmp_path_factory, tiny_config, "calib_run")


def test_false_alarm_rate_on_new_normal_images_is_the_target(run, normal_data):
    """Calibrate on 120 normal synthetic images at 20 %, count false alarms on 120 others.

    Bound: the threshold is the k-th of n = 120 scores (k = ceil(121 * 0.8) = 97), so the false-alarm rate of
    the calibrated detector is Beta(n + 1 - k, k) distributed over calibration sets (mean 24/121 = 0.198), and
    the alarms among M = 120 new images Beta-binomial: variance M a b (a + b + M) / ((a + b)^2 (a + b + 1)) with
    a = 24, b = 97, which adds the threshold's own sampling error to the binomial Binomial(M, p) one. We accept
    mean +- 3 sigma of it: [5.4, 42.2] alarms. A median threshold (50 %) or the maximum (0 %) fails."""
    good = sorted((normal_data / "synth_stripes" / "test" / "good").glob("*.png"))
    assert len(good) == N_CALIBRATE + N_MEASURE
    order = np.random.default_rng(0).permutation(len(good))
    calibrate_on = [good[i] for i in order[:N_CALIBRATE]]
    measure_on = [good[i] for i in order[N_CALIBRATE:]]
    detector = Detector.load(run)
    t = detector.calibrate(calibrate_on, target_fpr=TARGET_FPR)
    alarms = sum(p.is_anomalous for p in detector.predict(measure_on))
    n, m = N_CALIBRATE, N_MEASURE
    k = math.ceil((n + 1) * (1 - TARGET_FPR))
    a, b = n + 1 - k, k
    mean = m * a / (a + b)
    sd = math.sqrt(m * a * b * (a + b + m) / ((a + b) ** 2 * (a + b + 1)))
    assert mean - 3 * sd <= alarms <= mean + 3 * sd, (alarms, mean, sd)
    # on the calibration images themselves exactly n - k are above the threshold
    assert sum(p.is_anomalous for p in detector.predict(calibrate_on)) == n - k
    assert t.details["expected_image_fpr"] == pytest.approx(a / (n + 1))
    assert json.loads((run / CALIBRATION_FILE).read_text())["global"]["image_threshold"] == t.image


def test_too_few_normal_images_is_a_clear_error_and_keeps_the_file(run, normal_data):
    good = sorted((normal_data / "synth_stripes" / "test" / "good").glob("*.png"))
    detector = Detector.load(run)
    detector.calibrate(good[:40], target_fpr=0.1)
    before = (run / CALIBRATION_FILE).read_bytes()
    with pytest.raises(DataError, match=r"needs at least 99 normal images, got 40.*raise the target"):
        detector.calibrate(good[:40], target_fpr=0.01)
    assert (run / CALIBRATION_FILE).read_bytes() == before  # nothing already written is lost
    assert Detector.load(run).thresholds().target_fpr == 0.1


def test_labelled_set_gives_f1_thresholds(run, normal_data):
    detector = Detector.load(run)
    t = detector.calibrate(labelled=normal_data, category="synth_stripes", save=False)
    assert t.method == "f1" and t.pixel is not None and 0 < t.details["image_f1"] <= 1
    assert detector.thresholds("synth_stripes") == t
    assert (
        not (run / "calibration.json").exists()
        or json.loads((run / CALIBRATION_FILE).read_text()).get("per_category", {}).get("synth_stripes") is None
    )  # save=False wrote nothing


def test_training_holds_out_and_calibrates(normal_data, tmp_path, tiny_config):
    cfg = tiny_config(normal_data).override({"train.calibration_fraction": 0.5, "train.calibration_fpr": 0.2})
    run = train(cfg, tmp_path / "run")
    held = json.loads((run / CALIBRATION_FILE).read_text())
    assert held["global"]["num_images"] == 4 and held["global"]["target_fpr"] == 0.2  # half of 8 images
    assert held["per_category"]["synth_stripes"]["num_images"] == 4
    assert json.loads((run / "config.json").read_text())["num_train_images"] == 4
    assert Detector.load(run).calibrated
    too_few = tiny_config(normal_data).override({"train.calibration_fraction": 0.5})  # 1 % needs 99 images
    with pytest.raises(ConfigError, match="needs at least 99"):
        train(too_few, tmp_path / "run2")
    assert not (tmp_path / "run2" / "model.safetensors").exists()  # refused before training
