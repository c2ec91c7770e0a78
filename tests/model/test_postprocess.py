"""Eq. (24) image scores: the summed-area box filter equals avg_pool2d (stride 1) + max."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpdiff.model.postprocess import image_scores, postprocess


def reference(maps: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return maps.flatten(1).max(1).values
    return F.avg_pool2d(maps.unsqueeze(1), kernel_size=k, stride=1).flatten(1).max(1).values


def _maps(kind: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return torch.rand(shape, generator=g)
    if kind == "normal":
        return torch.randn(shape, generator=g) * 3 - 1
    # anomaly-map-like: large offset, sparse bright blobs
    x = torch.rand(shape, generator=g) ** 8 * 100
    return F.avg_pool2d(x.unsqueeze(1), 5, stride=1, padding=2).squeeze(1) + 50.0


@pytest.mark.parametrize("kind", ["uniform", "normal", "blobs"])
@pytest.mark.parametrize(
    "shape,k",
    [
        ((3, 64, 64), 16),
        ((2, 64, 48), 7),
        ((4, 33, 20), 1),
        ((2, 40, 40), 2),
        ((2, 40, 40), 40),
        ((1, 17, 31), 5),
        ((2, 128, 128), 32),
    ],
)
def test_image_scores_match_avg_pool(kind, shape, k):
    maps = _maps(kind, shape)
    got, want = image_scores(maps, k), reference(maps, k)
    assert got.shape == want.shape == (shape[0],) and got.dtype == maps.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_image_scores_float64_and_half_inputs():
    maps = _maps("blobs", (2, 32, 32)).double()
    torch.testing.assert_close(image_scores(maps, 8), reference(maps, 8), rtol=1e-12, atol=0)
    half = maps.to(torch.bfloat16)
    got = image_scores(half, 8)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference(half.float(), 8), rtol=1e-2, atol=0)


def test_image_scores_pool_larger_than_map_is_clamped():
    """avg_pool2d raises for a kernel larger than the map; the kernel is clamped to the map's side."""
    maps = _maps("uniform", (3, 12, 20))
    with pytest.raises(RuntimeError):
        reference(maps, 16)
    torch.testing.assert_close(
        image_scores(maps, 16), F.avg_pool2d(maps.unsqueeze(1), (12, 16), stride=1).flatten(1).max(1).values
    )
    torch.testing.assert_close(image_scores(maps, 100), maps.mean(dim=(1, 2)))  # the whole map


def test_image_scores_pool_size_zero_or_one_is_plain_max():
    maps = _maps("normal", (2, 9, 9))
    for k in (0, 1):
        assert torch.equal(image_scores(maps, k), maps.flatten(1).max(1).values)


def test_image_scores_single_peak_location_independent():
    """A single bright box is found wherever it lies, including at the borders."""
    for r, c in [(0, 0), (48, 48), (0, 48), (23, 7)]:
        maps = torch.zeros(1, 64, 64)
        maps[0, r : r + 16, c : c + 16] = 2.0
        assert image_scores(maps, 16).item() == pytest.approx(2.0, rel=1e-6)
        assert image_scores(maps, 32).item() == pytest.approx(0.5, rel=1e-6)


def test_image_scores_nonfinite_propagate_like_avg_pool():
    maps = _maps("uniform", (3, 20, 20))
    maps[1, 3, 4] = float("inf")
    maps[2, 10, 10] = float("nan")
    got, want = image_scores(maps, 4), reference(maps, 4)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got[0], want[0])


def test_image_scores_rejects_wrong_rank():
    with pytest.raises(ValueError, match="B, H, W"):
        image_scores(torch.rand(8, 8), 4)


def test_postprocess_uses_pooled_max():
    token_maps = _maps("uniform", (2, 8, 8))
    maps, scores = postprocess(token_maps, 64, 2.0, 16)
    assert maps.shape == (2, 64, 64)
    torch.testing.assert_close(scores, reference(maps, 16), rtol=1e-5, atol=1e-7)


def test_top_percent_scores_average_the_highest_pixels():
    from dpdiff.model.postprocess import top_percent_scores

    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :5] = torch.arange(1.0, 6.0)  # top 5 % of 100 pixels = the 5 values 1..5
    maps[1] = 7.0
    got = top_percent_scores(maps, 5.0)
    assert torch.allclose(got, torch.tensor([3.0, 7.0]))
    assert torch.allclose(top_percent_scores(maps, 0.1), torch.tensor([5.0, 7.0]))  # at least one pixel
    with pytest.raises(ValueError, match="top_percent"):
        top_percent_scores(maps, 0.0)


def test_postprocess_rejects_an_unknown_image_score_rule():
    from dpdiff.model.postprocess import postprocess

    with pytest.raises(ValueError, match="image_score"):
        postprocess(torch.rand(1, 4, 4), 16, 0.0, 4, image_score="median")
    maps, scores = postprocess(torch.rand(2, 4, 4), 16, 1.0, 4, image_score="top_percent_mean", top_percent=1.0)
    assert maps.shape == (2, 16, 16) and scores.shape == (2,)


@pytest.mark.parametrize("size, sigma", [(64, 4.0), ((48, 80), 2.0), (32, 0.0)])
def test_smooth_upsample_is_upsampling_then_blurring(size, sigma):
    """The fused operator (two matrix products) equals bilinear upsampling followed by the reflect-padded
    Gaussian, to float rounding, for square and non-square outputs and without smoothing."""
    from dpdiff.model.postprocess import gaussian_blur, smooth_upsample, upsample_maps

    token_maps = torch.rand(3, 8, 6, generator=torch.Generator().manual_seed(0)) * 5
    want = gaussian_blur(upsample_maps(token_maps, size), sigma)
    got = smooth_upsample(token_maps, size, sigma)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
