"""The one inference pipeline (dpdiff/inference/detector.py): Detector is exactly the Scorer's token scores +
postprocess on the dataset's preprocessing, for every kind of image input, and the report's probe
(dpdiff/workflows/report_inputs.py) is the same model calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dpdiff.data.dataset import ImageDataset
from dpdiff.data.types import Sample
from dpdiff.experiments import compare
from dpdiff.experiments.benchmark import random_model
from dpdiff.features import build_backbone_from_config
from dpdiff.inference.detector import Detector, score_dataset
from dpdiff.model.postprocess import postprocess
from dpdiff.scoring.noise import CommonNoise, IndependentNoise
from dpdiff.scoring.scorer import Scorer, ScoringSettings, map_size
from dpdiff.workflows.evaluate import protocol_description
from dpdiff.workflows.report_inputs import probe

N_IMAGES, HEIGHT, WIDTH, BATCH = 5, 70, 90, 3  # non-square images (resized to 64 px), batches of 3 + 2
MAP_SIZE = 48  # evaluation resolution != input size


@pytest.fixture(scope="module")
def backbone(tiny_config):
    return build_backbone_from_config(tiny_config())  # EfficientNet-Lite0, packaged weights


def make_detector(backbone, tiny_config, common_noise: bool) -> Detector:
    cfg = tiny_config().override(
        {
            "evaluation.resolution": MAP_SIZE,
            "inference.ensemble": 2,
            "inference.ddim_steps": 2,
            "inference.batch_size": BATCH,
            "inference.seed": 7,
            "inference.common_noise": common_noise,
        }
    )
    grid = tuple(backbone.grid_size(cfg.backbone.image_size))
    return Detector(backbone, random_model(backbone.out_channels, grid, cfg, "cpu", seed=3), cfg, "cpu")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (N_IMAGES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    base[:, 20:40, 30:60] = 255  # a bright patch, so the images are not pure noise
    return list(base)


@pytest.fixture(scope="module")
def image_files(images, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, a in enumerate(images):
        paths.append(folder / f"{i:03d}.png")  # PNG: lossless, the file decodes to the same array
        Image.fromarray(a).save(paths[-1])
    return paths


def by_hand(detector: Detector, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The paper's pipeline written out: resize (PIL bicubic) + normalise, backbone, tokens, Eq. 20-22 via
    the Scorer's token scores with one generator over the batches, Eq. 23-24 via postprocess."""
    cfg, inf, model = detector.cfg, detector.cfg.inference, detector.model
    s = cfg.backbone.image_size
    mean = np.asarray(detector.backbone.mean, np.float32)[:, None, None]
    std = np.asarray(detector.backbone.std, np.float32)[:, None, None]
    x = np.stack(
        [
            (
                np.asarray(Image.fromarray(a).resize((s, s), Image.Resampling.BICUBIC), np.float32).transpose(2, 0, 1)
                / 255.0
                - mean
            )
            / std
            for a in images
        ]
    )
    noise = CommonNoise(inf.seed) if inf.common_noise else IndependentNoise(torch.Generator().manual_seed(inf.seed))
    settings = ScoringSettings(
        inf.noise_step,
        inf.ddim_steps,
        inf.ensemble,
        scoring=inf.scoring,
        ensemble_reduce=inf.ensemble_reduce,
        antithetic=inf.antithetic,
    )
    maps, scores = [], []
    with torch.inference_mode():
        for lo in range(0, len(images), BATCH):
            feats = detector.backbone(torch.from_numpy(x[lo : lo + BATCH]))
            tokens = feats.flatten(2).transpose(1, 2)  # (B, h*w, C)
            token_maps = Scorer(model, settings).token_scores(tokens, noise)
            m, sc = postprocess(
                token_maps,
                MAP_SIZE,
                inf.smoothing_sigma,
                inf.pool_size,
                image_score=inf.image_score,
                top_percent=inf.top_percent,
            )
            maps.append(m)
            scores.append(sc)
    return torch.cat(maps).numpy(), torch.cat(scores).numpy()


@pytest.mark.parametrize("common_noise", [False, True])
def test_detector_is_token_scores_plus_postprocess(backbone, tiny_config, images, common_noise):
    detector = make_detector(backbone, tiny_config, common_noise)
    maps, scores = detector.score_images(images)
    want_maps, want_scores = by_hand(detector, images)
    assert maps.shape == (N_IMAGES, MAP_SIZE, MAP_SIZE) and scores.shape == (N_IMAGES,)
    assert np.array_equal(maps, want_maps) and np.array_equal(scores, want_scores)
    assert float(maps.std()) > 0 and len(set(scores.tolist())) == N_IMAGES  # not a degenerate comparison
    # the noise matters: another seed changes the scores (so the equality above pins the generator use)
    other = make_detector(backbone, tiny_config, common_noise)
    other.cfg.inference.seed = 8
    assert not np.array_equal(other.score_images(images)[1], scores)


def test_every_input_kind_gives_the_same_maps(backbone, tiny_config, images, image_files):
    detector = make_detector(backbone, tiny_config, common_noise=False)
    maps, scores = detector.score_images(image_files)
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in images]
    variants = {
        "PIL images": [Image.fromarray(a) for a in images],
        "uint8 arrays": images,
        "float tensors (3,H,W)": tensors,
        "one (B,3,H,W) tensor": torch.stack(tensors),
        "mixed": [image_files[0], Image.fromarray(images[1]), images[2], torch.stack(tensors[3:])],
        "path strings": [str(p) for p in image_files],
    }
    for name, given in variants.items():
        m, s = detector.score_images(given)
        assert np.array_equal(m, maps) and np.array_equal(s, scores), name
    assert np.array_equal(detector.preprocess(images), detector.preprocess(image_files))


def test_score_images_is_what_evaluation_computes(backbone, tiny_config, image_files):
    """evaluate/predict score an ImageDataset through score_dataset: the same numbers as score_images."""
    detector = make_detector(backbone, tiny_config, common_noise=False)
    ds = ImageDataset(
        [Sample(p, None, 0, "good", "x") for p in image_files],
        64,
        detector.backbone.mean,
        detector.backbone.std,
        mask_size=detector.map_size,
    )
    maps, scores, labels, masks, _ = score_dataset(detector, ds, BATCH, "test", seed=detector.cfg.inference.seed)
    m, s = detector.score_images(image_files)
    assert np.array_equal(maps, m) and np.array_equal(scores, s)
    assert masks.shape == (N_IMAGES, MAP_SIZE, MAP_SIZE) and not masks.any() and not labels.any()


def test_predict_is_score_images_with_decisions(backbone, tiny_config, image_files):
    """predict decodes each image once and scores it as score_images does (common noise: batch-independent);
    a prediction carries the model's map and the map at the image's own size."""
    detector = make_detector(backbone, tiny_config, common_noise=True)
    maps, scores = detector.score_images(image_files)
    preds = detector.predict(image_files, batch_size=2)
    # other batch sizes (5 vs 2+2+1) change the matrix products' blocking: equal up to float rounding only
    np.testing.assert_allclose([p.score for p in preds], scores, rtol=1e-5)
    np.testing.assert_allclose(np.stack([p.model_map for p in preds]), maps, rtol=1e-5, atol=1e-6)
    assert [p.image for p in preds] == [str(f) for f in image_files]
    assert all(p.anomaly_map.shape == (HEIGHT, WIDTH) for p in preds)
    assert preds[0].is_anomalous is None  # uncalibrated: scores only


def test_one_map_size_rule(backbone, tiny_config):
    detector = make_detector(backbone, tiny_config, common_noise=True)
    assert detector.map_size == map_size(detector.cfg) == (MAP_SIZE, MAP_SIZE)  # (Hm, Wm)
    assert protocol_description(detector.cfg)["evaluation_resolution"] == MAP_SIZE  # a square: one int, as before
    assert compare.map_size is map_size  # the comparison uses the same function, not a copy
    assert map_size(tiny_config()) == (64, 64)  # default: the input size


def test_probe_is_the_same_model_calls(backbone, tiny_config, image_files):
    detector = make_detector(backbone, tiny_config, common_noise=True)
    shown = probe(detector, image_files)
    m, s = detector.score_images(image_files)
    assert np.array_equal(shown.maps, m) and np.array_equal(shown.scores, s)
    model, inf = detector.model, detector.cfg.inference
    h, w = model.grid_size
    one_draw = Scorer(model, ScoringSettings(inf.noise_step, inf.ddim_steps))  # one independent draw per image
    noise = IndependentNoise(torch.Generator().manual_seed(inf.seed))
    batch = torch.from_numpy(detector.preprocess(image_files))
    with torch.inference_mode():
        for lo in range(0, N_IMAGES, BATCH):
            tokens = detector.backbone(batch[lo : lo + BATCH]).flatten(2).transpose(1, 2)
            x0, x0_hat = one_draw.reconstruct(tokens, noise)
            assert np.array_equal(shown.x0[lo : lo + BATCH], x0.numpy())
            assert np.array_equal(shown.x0_hat[lo : lo + BATCH], x0_hat[0].numpy())
            p_local, p_global = model.prototypes(x0)
            for got, protos in ((shown.sim_local, p_local), (shown.sim_global, p_global)):
                cos = F.cosine_similarity(x0[:, :, None], protos[:, None], dim=-1)  # (B, N, M)
                want = cos.max(-1).values.view(-1, h, w).numpy()
                np.testing.assert_allclose(got[lo : lo + BATCH], want, atol=1e-5)
    assert shown.x0.shape == shown.x0_hat.shape == (N_IMAGES, h * w, model.in_dim)
    assert not np.array_equal(shown.x0, shown.x0_hat)
    without = probe(detector, image_files, with_maps=False)
    assert without.maps is None and np.array_equal(without.x0_hat, shown.x0_hat)


def test_bad_inputs_are_named(backbone, tiny_config, images):
    detector = make_detector(backbone, tiny_config, common_noise=True)
    normalised = torch.from_numpy(detector.preprocess(images[:1]))
    with pytest.raises(ValueError, match=r"\[0, 1\].*Detector.scorer"):
        detector.score_images(normalised)  # an already normalised batch goes to the scorer, through the backbone
    with pytest.raises(ValueError, match="uint8"):
        detector.preprocess([images[0].astype(np.float64)])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        detector.preprocess([torch.zeros(4, 8, 8)])
    with pytest.raises(TypeError, match="image 1: expected a path"):
        detector.preprocess([images[0], 42])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        detector.preprocess(["nope.png"])
    with pytest.raises(ValueError, match="no images"):
        detector.score_images([])
    scorer = detector.scorer()
    with torch.inference_mode():  # the normalised batch, scored directly
        maps, scores = scorer.score_features(detector.features(normalised), scorer.noise_source())
    assert maps.shape == (1, MAP_SIZE, MAP_SIZE) and torch.isfinite(scores).all()
