"""What evaluation and prediction keep for the figures drawn afterwards: overlay maps and the report's data.

The engine fills these objects while it scores (``dpdiff.workflows.evaluate``, ``dpdiff.workflows.predict``,
``dpdiff.workflows.report_inputs``); ``dpdiff.viz`` draws them. This module imports neither of the two, so the
engine never imports viz and viz never runs a model.

* :class:`OverlayItem`: one overlay PNG to draw (image path, anomaly map, ground truth, colour scale).
* :class:`ReportData` (``EVAL/report_data.npz``): per category the maps of the worst false positives and
  false negatives, the colour scale, and the "probe" test images; with :class:`ProbeOutputs`, the model
  outputs on the probes that the report shows (prototype similarity maps, paper Fig. 8; a sample of tokens
  before and after the diffusion reconstruction for the t-SNE, Fig. 7). Memory stays bounded by
  ``examples_per_category`` maps per category.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpdiff.utils.errors import DataError
from dpdiff.utils.io import atomic_write_bytes
from dpdiff.utils.run_files import REPORT_DATA_FILE

__all__ = [
    "ANOMALOUS_TOKEN_FRACTION",
    "PROTO_CATEGORIES",
    "REPORT_DATA_FILE",
    "TSNE_MAX_IMAGES",
    "TSNE_MAX_TOKENS",
    "OverlayItem",
    "PathMap",
    "ProbeOutputs",
    "ReportData",
    "TokenSample",
    "overlay_picks",
    "pack_mask",
    "select_probes",
    "token_labels",
    "token_sample",
    "unpack_mask",
]

DATA_FORMAT_VERSION = 2  # 2: + the probe outputs; version 1 files (no probe outputs) are still read
#: A token is "anomalous" when the ground truth covers at least this fraction of its patch and "normal"
#: when it covers none of it; tokens in between (defect boundaries) are left out of the t-SNE.
ANOMALOUS_TOKEN_FRACTION = 0.25
#: Tokens in the t-SNE sample (anomalous tokens first, up to half of it).
TSNE_MAX_TOKENS = 1000
#: Categories shown in the prototype-similarity section (one defective and one normal image each).
PROTO_CATEGORIES = 4
#: Probe images run through the model at most (spread over the categories).
TSNE_MAX_IMAGES = 48


def pack_mask(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, bool).reshape(-1))


def unpack_mask(packed: np.ndarray, size: int | tuple[int, int] | list[int]) -> np.ndarray:
    """The bool mask of :func:`pack_mask` at ``size`` (a square side or (H, W))."""
    h, w = _hw(size)
    return np.unpackbits(packed, count=h * w).astype(bool).reshape(h, w)


def _hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


class PathMap:
    """Test image paths recorded under ``data_root``, re-rooted under ``new_root`` when the data moved."""

    def __init__(self, data_root: str, new_root: str | None):
        self.old = Path(data_root) if data_root else None
        self.new = Path(new_root) if new_root else None

    def __call__(self, path: str) -> Path:
        p = Path(path)
        if self.new is not None and self.old is not None:
            try:
                return self.new / p.relative_to(self.old)
            except ValueError:
                pass
        return p

    def existing(self, path: str) -> Path:
        """The re-rooted path; FileNotFoundError naming it when it is not a file."""
        p = self(path)
        if not p.is_file():
            raise FileNotFoundError(f"test image {p} not found (the data moved? pass --data NEW_ROOT)")
        return p


# ---------------------------------------------------------------------------------------------------- overlays
@dataclass
class OverlayItem:
    """One overlay PNG: ``image`` shown at ``size`` px (a square side or (H, W); cut to ``roi``, the region of
    interest ``[x0, y0, x1, y1]`` of ``data.roi``, first) with ``map`` on top (colour scale ``vmin..vmax``),
    the ground-truth contour of ``mask`` when given; written to ``file`` (relative to the output folder)."""

    image: str
    map: np.ndarray
    file: str
    size: int | tuple[int, int]
    vmin: float
    vmax: float
    title: str
    mask: np.ndarray | None = None
    roi: list | None = None


def overlay_picks(labels: np.ndarray, scores: np.ndarray, n: int) -> list[int]:
    """The images of a category drawn as overlays: the ``n`` most anomalous defective images and the
    ``max(1, n // 2)`` highest-scoring normal ones (the likely false positives)."""
    bad, good = np.where(labels == 1)[0], np.where(labels == 0)[0]
    return [int(i) for i in bad[np.argsort(-scores[bad])][:n]] + [
        int(i) for i in good[np.argsort(-scores[good])][: max(1, n // 2)]
    ]


# ---------------------------------------------------------------------------------------------------- probes
@dataclass
class TokenSample:
    """Tokens of the probe images for the t-SNE: standardised tokens ``before`` and ``after`` one DDIM
    reconstruction (K, C), their ``labels`` (1 anomalous, 0 normal) and ``categories``; ``images``: probe
    images sampled from; ``seed``: of the sampling (and of the t-SNE)."""

    before: np.ndarray
    after: np.ndarray
    labels: np.ndarray
    categories: np.ndarray
    images: int
    seed: int


@dataclass
class ProbeOutputs:
    """The model outputs on the probe images that the report shows. ``index``: positions in
    ``ReportData.probes`` in the order they ran; ``sim_local``/``sim_global`` (U, h, w): each token's highest
    cosine similarity to the image's local/global prototypes (None without them); ``tokens``: the t-SNE
    sample, or None with ``note`` saying why."""

    index: list[int]
    sim_local: np.ndarray | None
    sim_global: np.ndarray | None
    tokens: TokenSample | None
    note: str = ""


def token_labels(masks: np.ndarray, grid: tuple[int, int], threshold: float = ANOMALOUS_TOKEN_FRACTION) -> np.ndarray:
    """(B, S, S) bool masks -> (B, h*w) token labels: 1 anomalous (the mask covers >= ``threshold`` of the
    token's patch), 0 normal (covers none of it), -1 boundary (in between; left out of the t-SNE)."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.asarray(masks, np.float32))[:, None]
    frac = F.adaptive_avg_pool2d(m, grid)[:, 0].flatten(1).numpy()
    out = np.full(frac.shape, -1, np.int64)
    out[frac <= 0.0] = 0
    out[frac >= threshold] = 1
    return out


def token_sample(
    x0: np.ndarray,
    x0_hat: np.ndarray,
    masks: np.ndarray,
    categories: list[str],
    grid: tuple[int, int],
    max_tokens: int = TSNE_MAX_TOKENS,
    seed: int = 0,
) -> tuple[TokenSample | None, str]:
    """Up to ``max_tokens`` tokens of the probe images ((B, N, C) before/after, (B, S, S) masks): the anomalous
    ones first (at most half), the rest normal, drawn with ``seed``. (None, why) with fewer than 10 tokens."""
    h, w = grid
    labels = token_labels(masks, (h, w))  # (B, N)
    cats = np.repeat(np.array(categories), labels.shape[1])
    labels = labels.reshape(-1)
    x0 = x0.reshape(-1, x0.shape[-1])
    xh = x0_hat.reshape(-1, x0_hat.shape[-1])
    rng = np.random.default_rng(seed)
    anom = np.where(labels == 1)[0]
    norm = np.where(labels == 0)[0]
    n_anom = min(len(anom), max_tokens // 2)
    pick = np.concatenate(
        [
            rng.choice(anom, n_anom, replace=False) if n_anom else np.zeros(0, np.int64),
            rng.choice(norm, min(len(norm), max_tokens - n_anom), replace=False),
        ]
    )
    pick.sort()
    if len(pick) < 10:
        return None, f"t-SNE left out: only {len(pick)} tokens in the probe images"
    return TokenSample(
        x0[pick].astype(np.float32),
        xh[pick].astype(np.float32),
        labels[pick],
        cats[pick],
        images=len(categories),
        seed=int(seed),
    ), ""


# ---------------------------------------------------------------------------------------------------- report data
@dataclass
class ReportData:
    """Keeps, per category, what the report shows: the maps of the ``examples_per_category`` worst false
    positives and false negatives, the category's colour scale, and the probe images (paths, labels,
    masks) for the prototype maps and the t-SNE; ``probe_outputs`` once the model has run on them. Feed it
    each category's arrays as evaluate scores them. ``maps_recomputed``: the maps were recomputed after the
    evaluation (``dpdiff report`` without ``report_data.npz``). ``map_size``: (Hm, Wm) of the maps and masks (one
    int: a square); ``roi``: ``data.roi`` (the images are cut to it before the maps are laid on them)."""

    map_size: int | tuple[int, int]
    data_root: str = ""
    examples_per_category: int = 2
    probes_defective: int = 2
    probes_normal: int = 1
    examples: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    scales: dict = field(default_factory=dict)
    probe_outputs: ProbeOutputs | None = None
    maps_recomputed: bool = False
    roi: list | None = None

    def select(self, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Indices of (the worst false positives, the worst false negatives, the probe images)."""
        good, bad = np.where(labels == 0)[0], np.where(labels == 1)[0]
        k = int(self.examples_per_category)
        fp = good[np.argsort(-scores[good], kind="stable")][:k]  # highest-scoring normal images
        fn = bad[np.argsort(scores[bad], kind="stable")][:k]  # lowest-scoring defective images
        # probes: the clearest defects (highest scores) and a typical normal image (median score)
        probe_idx = [int(i) for i in bad[np.argsort(-scores[bad], kind="stable")][: self.probes_defective]]
        if good.size and self.probes_normal > 0:
            order = good[np.argsort(scores[good], kind="stable")]
            mid = len(order) // 2
            probe_idx += [int(i) for i in order[max(0, mid - self.probes_normal // 2) :][: self.probes_normal]]
        return fp, fn, probe_idx

    def add_category(
        self, category: str, samples, maps, scores: np.ndarray, masks, scale: tuple[float, float] | None = None
    ) -> None:
        """``maps`` (N, S, S) and ``masks`` (N, S, S) bool: the category's arrays (or anything indexable by
        the selected positions, with ``scale`` = (vmin, vmax) then given)."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.array([int(s.label) for s in samples])
        good, bad = np.where(labels == 0)[0], np.where(labels == 1)[0]
        if scale is None:  # the colour scale of eval/overlays: min .. 99.9th percentile of the category's maps
            finite = maps if np.isfinite(maps).all() else maps[np.isfinite(maps)]
            scale = (float(np.min(finite)), float(np.percentile(finite, 99.9))) if finite.size else (0.0, 1.0)
        self.scales[category] = (float(scale[0]), float(scale[1]))
        fp, fn, probe_idx = self.select(labels, scores)
        for kind, picks in (("fp", fp), ("fn", fn)):
            for rank, i in enumerate(picks):
                other = scores[bad] if kind == "fp" else scores[good]
                # fp: share of defective images scoring below it; fn: share of normal images scoring above it
                frac = (
                    float(np.mean(other < scores[i]) if kind == "fp" else np.mean(other > scores[i]))
                    if other.size
                    else float("nan")
                )
                self.examples.append(
                    {
                        "category": category,
                        "kind": kind,
                        "rank": rank,
                        "image": str(Path(samples[i].image_path).absolute()),
                        "defect": samples[i].defect,
                        "label": int(labels[i]),
                        "score": float(scores[i]),
                        "beyond": frac,
                        "map": np.array(maps[i], dtype=np.float32),
                        "mask": pack_mask(masks[i]),
                    }
                )
        for i in probe_idx:
            self.probes.append(
                {
                    "category": category,
                    "image": str(Path(samples[i].image_path).absolute()),
                    "defect": samples[i].defect,
                    "label": int(labels[i]),
                    "score": float(scores[i]),
                    "mask": pack_mask(masks[i]),
                }
            )

    def probe_masks(self, index: list[int]) -> np.ndarray:
        """(len(index), Hm, Wm) bool ground truth of the probes at ``index``."""
        s = self.map_size
        if not index:
            return np.zeros((0, *_hw(s)), bool)
        return np.stack([unpack_mask(self.probes[k]["mask"], s) for k in index])

    # -------------------------------------------------------------------------------------------- npz
    def save(self, path: Path) -> Path:
        """Write ``report_data.npz`` atomically."""
        buf = io.BytesIO()
        np.savez_compressed(buf, allow_pickle=True, **_to_arrays(self))
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> ReportData:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: it is written by `dpdiff test`; evaluate the run again "
                f"(dpdiff test RUN --overwrite) to rebuild the report"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            meta = json.loads(str(d["meta_json"]))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: unreadable report data ({e}); evaluate the run again") from e
        if meta.get("format_version") not in (1, DATA_FORMAT_VERSION):
            raise DataError(
                f"{path}: report data format {meta.get('format_version')}, this version reads "
                f"1 and {DATA_FORMAT_VERSION}; evaluate the run again"
            )
        return _from_arrays(cls, d, meta)


def select_probes(data: ReportData) -> tuple[list[int], list[int]]:
    """(probes shown with prototype maps: one defective + one normal image of each of the first
    ``PROTO_CATEGORIES`` categories, probes run through the model: those, then the others round-robin over
    the categories, ``TSNE_MAX_IMAGES`` at most)."""
    cats: dict[str, list[int]] = {}
    for i, p in enumerate(data.probes):
        cats.setdefault(p["category"], []).append(i)
    proto = []
    for idx in list(cats.values())[:PROTO_CATEGORIES]:
        proto += [i for i in idx if data.probes[i]["label"] == 1][:1] + [
            i for i in idx if data.probes[i]["label"] == 0
        ][:1]
    rest = []
    for j in range(max((len(v) for v in cats.values()), default=0)):  # round-robin over the categories
        rest += [v[j] for v in cats.values() if j < len(v) and v[j] not in proto]
    use = (proto + rest)[: max(TSNE_MAX_IMAGES, len(proto))]
    return proto, use


# ---------------------------------------------------------------------------------------------------- npz layout
# (column, numpy dtype in the file or None for strings) of the example and probe rows
_EXAMPLE_KEYS = (
    ("category", None),
    ("kind", None),
    ("image", None),
    ("defect", None),
    ("rank", np.int64),
    ("label", np.int64),
    ("score", np.float64),
    ("beyond", np.float64),
)
_PROBE_KEYS = (("category", None), ("image", None), ("defect", None), ("label", np.int64), ("score", np.float64))
_PYTHON_TYPE = {None: str, np.int64: int, np.float64: float}


def _rows(d: dict, prefix: str, keys) -> list[dict]:
    """The rows saved as ``<prefix><column>`` arrays, back as dicts of Python values."""
    n = len(d[f"{prefix}image"])
    return [{k: _PYTHON_TYPE[t](d[f"{prefix}{k}"][i]) for k, t in keys} for i in range(n)]


def _column(rows: list[dict], key: str, dtype=None) -> np.ndarray:
    a = np.array([r[key] for r in rows])
    return a.astype(dtype) if dtype is not None else (a if len(rows) else np.array([], dtype=str))


def _to_arrays(data: ReportData) -> dict[str, np.ndarray]:
    h, w = _hw(data.map_size)
    maps = np.stack([e["map"] for e in data.examples]) if data.examples else np.zeros((0, h, w), np.float32)
    finite = maps[np.isfinite(maps)]
    if not finite.size or float(np.abs(finite).max()) < 6e4:
        maps = maps.astype(np.float16)  # half the size; float32 kept for maps beyond float16's range
    nbytes = (h * w + 7) // 8

    def packed(rows):
        return np.stack([r["mask"] for r in rows]) if rows else np.zeros((0, nbytes), np.uint8)

    cats = sorted(data.scales)
    po = data.probe_outputs
    meta = {
        "format_version": DATA_FORMAT_VERSION,
        "map_size": h if h == w else [h, w],
        "data_root": data.data_root,
        "examples_per_category": data.examples_per_category,
        "categories": cats,
        "probe_outputs": None
        if po is None
        else {
            "note": po.note,
            "tokens": None if po.tokens is None else {"images": po.tokens.images, "seed": po.tokens.seed},
        },
    }
    if data.roi is not None:
        meta["roi"] = list(data.roi)
    arrays = {
        "meta_json": np.array(json.dumps(meta)),
        "ex_map": maps,
        "ex_mask": packed(data.examples),
        "probe_mask": packed(data.probes),
        "cat_name": np.array(cats) if cats else np.array([], dtype=str),
        "cat_vmin": np.array([data.scales[c][0] for c in cats], np.float64),
        "cat_vmax": np.array([data.scales[c][1] for c in cats], np.float64),
    }
    arrays |= {f"ex_{k}": _column(data.examples, k, t) for k, t in _EXAMPLE_KEYS}
    arrays |= {f"probe_{k}": _column(data.probes, k, t) for k, t in _PROBE_KEYS}
    if po is not None:
        arrays["po_index"] = np.array(po.index, np.int64)
        for key in ("sim_local", "sim_global"):
            if getattr(po, key) is not None:
                arrays[f"po_{key}"] = np.asarray(getattr(po, key), np.float32)
        if po.tokens is not None:
            t = po.tokens
            arrays |= {"po_before": t.before, "po_after": t.after, "po_labels": t.labels, "po_categories": t.categories}
    return arrays


def _from_arrays(cls, d: dict, meta: dict) -> ReportData:
    size = meta["map_size"]
    data = cls(
        map_size=int(size) if isinstance(size, int) else (int(size[0]), int(size[1])),
        data_root=meta.get("data_root", ""),
        examples_per_category=int(meta.get("examples_per_category", 2)),
        roi=meta.get("roi"),
    )
    for i, row in enumerate(_rows(d, "ex_", _EXAMPLE_KEYS)):
        data.examples.append(row | {"map": d["ex_map"][i].astype(np.float32), "mask": d["ex_mask"][i]})
    for i, row in enumerate(_rows(d, "probe_", _PROBE_KEYS)):
        data.probes.append(row | {"mask": d["probe_mask"][i]})
    data.scales = {
        str(n): (float(a), float(b)) for n, a, b in zip(d["cat_name"], d["cat_vmin"], d["cat_vmax"], strict=True)
    }
    po = meta.get("probe_outputs")
    if po is not None:
        tokens = None
        if po.get("tokens") is not None:
            tokens = TokenSample(
                d["po_before"],
                d["po_after"],
                d["po_labels"],
                d["po_categories"],
                images=int(po["tokens"]["images"]),
                seed=int(po["tokens"]["seed"]),
            )
        data.probe_outputs = ProbeOutputs(
            [int(i) for i in d["po_index"]], d.get("po_sim_local"), d.get("po_sim_global"), tokens, po.get("note", "")
        )
    return data
