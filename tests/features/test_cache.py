"""Feature cache: hits, misses, invalidation, crash safety, memory mapping, drop-in for training."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dpdiff.features.cache as cache_mod
from dpdiff.backbones import build_backbone, build_vit
from dpdiff.data.dataset import ImageDataset
from dpdiff.data.types import Sample
from dpdiff.features import channel_statistics, extract_features, tokens_from_maps
from dpdiff.features.cache import FeatureCache, FeatureStore, weights_sha256

torch.set_num_threads(min(2, torch.get_num_threads()))
SIZE = 64
TINY_VIT = dict(patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1e-5)


def _write_image(path: Path, seed: int, wh=(48, 40)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    out = []
    for i in range(6):
        p = folder / f"{i:03d}.png"
        _write_image(p, i)
        out.append(Sample(p, None, 0, "good", "tile"))
    return out


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("tf_efficientnet_lite0", image_size=SIZE)


class Counter:
    """Counts the images a backbone sees (forward pre-hook); optionally raises at a given call."""

    def __init__(self, module: torch.nn.Module, fail_at_call: int | None = None):
        self.images, self.calls, self.fail_at_call = 0, 0, fail_at_call
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            raise RuntimeError("simulated crash during extraction")
        self.images += args[0].shape[0]

    def remove(self):
        self.handle.remove()


def direct(backbone, samples, size=SIZE, batch_size=4) -> torch.Tensor:
    ds = ImageDataset(samples, size, backbone.mean, backbone.std, load_masks=False)
    return extract_features(backbone, ds, batch_size, "cpu")


def assert_same_maps(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to fp16 rounding (a different batch composition may flip the last bit)."""
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-3, atol=2e-3)


def visible_files(key_dir: Path) -> list[str]:
    return sorted(p.name for p in key_dir.iterdir() if p.name not in ("key.json", ".lock"))


# ---------------------------------------------------------------------------------------- hits / misses
def test_first_call_extracts_second_call_hits_and_values_match_direct(tmp_path, samples, lite0):
    counter = Counter(lite0)
    try:
        store = FeatureCache(tmp_path / "cache").get(lite0, {"name": "lite0"}, samples, SIZE, batch_size=4)
        assert counter.images == 6
        counter.images = 0
        cache2 = FeatureCache(tmp_path / "cache")  # a new run: nothing in memory
        store2 = cache2.get(lite0, {"name": "lite0"}, samples, SIZE, batch_size=4)
        assert counter.images == 0 and cache2.last_extracted == 0
    finally:
        counter.remove()
    ref = direct(lite0, samples)
    assert isinstance(store, FeatureStore) and store.shape == tuple(ref.shape) == (6, 152, 4, 4)
    assert store[:].dtype == torch.float16
    assert torch.equal(store[:], ref) and torch.equal(store2[:], ref)


def test_environment_variable_sets_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DPDIFF_CACHE", str(tmp_path / "elsewhere"))
    assert FeatureCache().root == tmp_path / "elsewhere"
    monkeypatch.delenv("DPDIFF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FeatureCache().root == tmp_path / "xdg" / "dpdiff" / "features"


def test_new_images_go_to_a_new_shard_and_order_follows_samples(tmp_path, samples, lite0):
    cache = FeatureCache(tmp_path / "cache")
    cache.get(lite0, None, samples[:4], SIZE)
    counter = Counter(lite0)
    try:
        order = [samples[5], samples[0], samples[4], samples[2], samples[0]]  # 2 new, one repeated
        store = cache.get(lite0, None, order, SIZE)
        assert counter.images == 2 and cache.last_extracted == 2
    finally:
        counter.remove()
    assert len(store.shards) == 2 and len(store) == 5
    ref = direct(lite0, samples)
    want = ref[[5, 0, 4, 2, 0]]
    assert_same_maps(store[:], want)
    assert_same_maps(store[torch.tensor([4, 0, 1])], want[[4, 0, 1]])


def test_store_indexes_like_a_tensor(tmp_path, samples, lite0):
    store = FeatureCache(tmp_path / "cache").get(lite0, None, samples, SIZE, batch_size=4)
    ref = direct(lite0, samples)
    idx = torch.tensor([5, 0, 0, 3, -1])
    assert torch.equal(store[idx], ref[idx])
    assert torch.equal(store[np.array([2, 1])], ref[[2, 1]])
    assert torch.equal(store[3], ref[3]) and torch.equal(store[-2], ref[-2])
    assert torch.equal(store[torch.tensor(4)], ref[4])
    assert torch.equal(store[1:5], ref[1:5]) and torch.equal(store[::2], ref[::2])
    mask = torch.tensor([True, False, True, False, False, True])
    assert torch.equal(store[mask], ref[mask])
    assert store[torch.tensor([], dtype=torch.long)].shape == (0, 152, 4, 4)
    for bad in (6, -7, torch.tensor([0, 6])):
        with pytest.raises(IndexError):
            store[bad]
    with pytest.raises(IndexError):
        store[torch.tensor([0.0, 1.0])]
    # what train() does with it
    n, c, h, w = store.shape
    batch = tokens_from_maps(store[torch.randint(0, n, (4,))].float())
    assert batch.shape == (4, h * w, c) and batch.dtype == torch.float32
    for a, b in zip(channel_statistics(store, chunk=4), channel_statistics(ref, chunk=4), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(store.to_tensor(chunk=4), ref)


def test_store_is_memory_mapped_not_loaded(tmp_path, samples, lite0):
    store = FeatureCache(tmp_path / "cache").get(lite0, None, samples, SIZE)
    (shard,) = store.shards
    assert isinstance(shard, np.memmap) and not shard.flags.writeable
    assert Path(shard.filename).parent.parent == tmp_path / "cache"
    out = store[[0, 1]]
    out += 1  # a copy: the cache is untouched
    assert torch.equal(store[[0, 1]], direct(lite0, samples[:2]))
    # pickles (e.g. to DataLoader workers) as file paths, and maps again on the other side
    blob = pickle.dumps(store)
    assert len(blob) < store.nbytes // 4
    back = pickle.loads(blob)
    assert isinstance(back.shards[0], np.memmap) and torch.equal(back[:], store[:])


# ---------------------------------------------------------------------------------------- invalidation
def test_changed_mtime_or_size_invalidates_only_that_image(tmp_path, samples, lite0):
    cache = FeatureCache(tmp_path / "cache")
    old = cache.get(lite0, None, samples, SIZE)[:]
    counter = Counter(lite0)
    try:
        # same bytes, new mtime -> re-extracted
        p = samples[1].image_path
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
        store = cache.get(lite0, None, samples, SIZE)
        assert counter.images == 1
        assert_same_maps(store[:], old)
        # new content and size, mtime put back to what the cache holds -> re-extracted (size is in the key)
        counter.images = 0
        p = samples[3].image_path
        st = p.stat()
        _write_image(p, 99, wh=(52, 44))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert p.stat().st_size != st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
        store = cache.get(lite0, None, samples, SIZE)
        assert counter.images == 1
    finally:
        counter.remove()
    new = direct(lite0, samples)
    assert_same_maps(store[3], new[3])
    assert not torch.allclose(store[3].float(), old[3].float(), atol=1e-2)
    assert torch.equal(store[[0, 2, 4, 5]], old[[0, 2, 4, 5]])  # untouched: served from the first shard


def test_missing_image_is_a_clear_error(tmp_path, samples, lite0):
    samples[2].image_path.unlink()
    with pytest.raises(FileNotFoundError, match="002.png"):
        FeatureCache(tmp_path / "cache").get(lite0, None, samples, SIZE)


def test_backbone_options_and_image_size_select_other_entries(tmp_path, samples, lite0):
    cache = FeatureCache(tmp_path / "cache")
    cache.get(lite0, {"name": "a"}, samples, SIZE)
    cache.get(lite0, {"name": "a"}, samples, 96)
    assert cache.last_extracted == 6  # image size
    other_layers = build_backbone("tf_efficientnet_lite0", layers=[1, 3], image_size=SIZE)
    s = cache.get(other_layers, {"name": "a"}, samples, SIZE)
    assert cache.last_extracted == 6 and s.shape[1] == 24 + 112  # layers
    other_stride = build_backbone("tf_efficientnet_lite0", image_size=SIZE, feature_stride=8)
    s = cache.get(other_stride, {"name": "a"}, samples, SIZE)
    assert cache.last_extracted == 6 and s.shape[2:] == (8, 8)  # feature stride
    no_agg = build_backbone("tf_efficientnet_lite0", image_size=SIZE, local_aggregation=False)
    cache.get(no_agg, {"name": "a"}, samples, SIZE)
    assert cache.last_extracted == 6  # any other option of the extractor
    cache.get(lite0, {"name": "b"}, samples, SIZE)
    assert cache.last_extracted == 6  # caller's key
    for bb, size in ((lite0, SIZE), (lite0, 96), (other_layers, SIZE), (other_stride, SIZE)):
        cache.get(bb, {"name": "a"}, samples, size)
        assert cache.last_extracted == 0  # keys are stable: everything above is found again
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 6


def _tiny_vit_weights(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(**TINY_VIT, img_size=28, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def test_weights_change_invalidates_and_hash_is_memoised(tmp_path, samples, monkeypatch):
    w1 = _tiny_vit_weights(tmp_path / "w1.safetensors", 0)
    w2 = _tiny_vit_weights(tmp_path / "w2.safetensors", 1)
    hashed = []
    real = cache_mod._sha256_file
    monkeypatch.setattr(cache_mod, "_sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    cache = FeatureCache(tmp_path / "cache")

    def vit(w):
        return build_vit(TINY_VIT, layers=[2, 3], weights=str(w), image_size=28)

    a = cache.get(vit(w1), None, samples, 28)
    assert cache.last_extracted == 6 and hashed == ["w1.safetensors"]
    b = cache.get(vit(w2), None, samples, 28)
    assert cache.last_extracted == 6 and not torch.equal(a[:], b[:])  # other weights, other features
    hashed.clear()
    cache.get(vit(w1), None, samples, 28)
    assert cache.last_extracted == 0 and hashed == []  # memo: the file is not hashed again
    st = w1.stat()
    os.utime(w1, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))  # touched, same content
    cache.get(vit(w1), None, samples, 28)
    assert hashed == ["w1.safetensors"] and cache.last_extracted == 0
    # same size and mtime but other content would be missed by the memo (documented); the hash itself:
    assert weights_sha256(w1) != weights_sha256(w2)


def test_backbone_without_weights_file_is_keyed_by_its_state_dict(tmp_path, samples, lite0):
    class NoPath(torch.nn.Module):
        mean, std, name = lite0.mean, lite0.std, "nopath"

        def __init__(self, scale):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(float(scale)), requires_grad=False)

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 16) * self.scale

    cache = FeatureCache(tmp_path / "cache")
    cache.get(NoPath(1.0), None, samples, SIZE)
    cache.get(NoPath(2.0), None, samples, SIZE)
    assert cache.last_extracted == 6
    s = cache.get(NoPath(1.0), None, samples, SIZE)
    assert cache.last_extracted == 0 and s.shape == (6, 3, 4, 4)


# ---------------------------------------------------------------------------------------- crash safety
def test_crash_mid_extraction_leaves_no_visible_shard(tmp_path, samples, lite0):
    cache = FeatureCache(tmp_path / "cache")
    counter = Counter(lite0, fail_at_call=2)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            cache.get(lite0, None, samples, SIZE, batch_size=2)
    finally:
        counter.remove()
    (key_dir,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert visible_files(key_dir) == []  # no shard, no index, no temp file
    store = cache.get(lite0, None, samples, SIZE, batch_size=4)
    assert cache.last_extracted == 6 and torch.equal(store[:], direct(lite0, samples))


def test_crash_before_the_index_is_written_hides_the_shard(tmp_path, samples, lite0, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    real = cache_mod.atomic_write_json

    def failing(path, obj, *a, **k):
        if Path(path).name.startswith("shard-"):
            raise OSError("simulated crash while writing the index")
        return real(path, obj, *a, **k)

    monkeypatch.setattr(cache_mod, "atomic_write_json", failing)
    with pytest.raises(OSError, match="simulated"):
        cache.get(lite0, None, samples, SIZE)
    monkeypatch.setattr(cache_mod, "atomic_write_json", real)
    (key_dir,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert visible_files(key_dir) == []
    store = cache.get(lite0, None, samples, SIZE, batch_size=4)
    assert cache.last_extracted == 6 and torch.equal(store[:], direct(lite0, samples))


def test_data_without_index_or_truncated_data_is_never_served(tmp_path, samples, lite0):
    cache = FeatureCache(tmp_path / "cache")
    cache.get(lite0, None, samples, SIZE)
    (key_dir,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    (index,) = key_dir.glob("shard-*.json")
    data = key_dir / index.name.replace(".json", ".npy")
    # hard crash after the data rename, before the index: the data file alone is invisible
    index.unlink()
    cache.get(lite0, None, samples, SIZE)
    assert cache.last_extracted == 6
    # a truncated data file behind a valid index is ignored, not read
    (index2,) = [p for p in key_dir.glob("shard-*.json")]
    data2 = key_dir / index2.name.replace(".json", ".npy")
    with open(data2, "r+b") as fh:
        fh.truncate(data2.stat().st_size // 2)
    store = cache.get(lite0, None, samples, SIZE, batch_size=4)
    assert cache.last_extracted == 6 and torch.equal(store[:], direct(lite0, samples))
    # prune removes the index-less file, the truncated shard, nothing in use
    counts = cache.prune(max_age_s=0)
    assert counts["orphan_data"] == 1 and not data.exists()
    assert counts["broken_shards"] == 1 and not data2.exists() and not index2.exists()
    assert cache.get(lite0, None, samples, SIZE) is not None and cache.last_extracted == 0


def test_prune_drops_shards_whose_images_all_changed(tmp_path, samples, lite0):
    cache = FeatureCache(tmp_path / "cache")
    cache.get(lite0, None, samples[:2], SIZE)
    cache.get(lite0, None, samples[2:], SIZE)
    for s in samples[:2]:
        s.image_path.unlink()
    counts = cache.prune()
    assert counts["dead_shards"] == 1
    assert cache.get(lite0, None, samples[2:], SIZE) is not None and cache.last_extracted == 0


# ---------------------------------------------------------------------------------------- drop-in for train
@pytest.mark.integration
def test_training_on_the_store_equals_training_on_the_tensor(tmp_path, samples, lite0, tiny_config):
    from safetensors.torch import load_file

    from dpdiff.model.checkpoint import MODEL_FILE
    from dpdiff.workflows.train import train

    cfg = tiny_config()
    cfg.backbone.image_size = SIZE
    cfg.train.steps, cfg.train.log_every, cfg.train.checkpoint_every = 2, 1, 2
    cfg.train.device = "cpu"
    store = FeatureCache(tmp_path / "cache").get(lite0, None, samples, SIZE)
    ref = direct(lite0, samples)
    run_a = train(cfg, tmp_path / "a", features=store, samples=samples)
    run_b = train(cfg, tmp_path / "b", features=ref, samples=samples)
    wa, wb = load_file(str(run_a / MODEL_FILE)), load_file(str(run_b / MODEL_FILE))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.integration
def test_train_cli_uses_the_feature_cache(tmp_path, tiny_set_args, tiny_dataset):
    """`dpdiff train --cache-dir` fills the cache once; a second run extracts nothing and trains identically."""
    from dpdiff.cli import main
    from dpdiff.model.checkpoint import load_model

    root = tmp_path / "data"
    tiny_dataset(root, num_categories=1, train_per_category=4, test_good_per_category=1, test_defect_per_category=1)
    common = [
        "--data",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        *tiny_set_args,
        "train.batch_size=2",
        "train.steps=2",
    ]
    assert main(["train", "--output", str(tmp_path / "a"), *common]) == 0
    shards = sorted((tmp_path / "cache").rglob("*.npy"))
    assert shards
    mtimes = [p.stat().st_mtime_ns for p in shards]
    assert main(["train", "--output", str(tmp_path / "b"), *common]) == 0
    assert sorted((tmp_path / "cache").rglob("*.npy")) == shards
    assert [p.stat().st_mtime_ns for p in shards] == mtimes
    a, _, _ = load_model(tmp_path / "a")
    b, _, _ = load_model(tmp_path / "b")
    diffs = {
        k: (x - y).abs().max().item() for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True)
    }
    assert max(diffs.values()) < 1e-6, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
