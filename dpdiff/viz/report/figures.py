"""The report's figures, drawn from :class:`~dpdiff.figure_data.ReportData` arrays and the test images.

* :func:`example_figures`: the worst false positives/negatives (image, ground-truth contour, anomaly map),
* :func:`proto_figures`: local/global prototype similarity maps (paper Fig. 8),
* :func:`tsne_figures`: t-SNE of tokens before and after the reconstruction (paper Fig. 7),
* :func:`loss_figures`: the training loss curves.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpdiff.data.geometry import eval_image_array
from dpdiff.figure_data import ANOMALOUS_TOKEN_FRACTION, PathMap, ReportData, select_probes, unpack_mask
from dpdiff.utils.io import atomic_write_text, slugify
from dpdiff.utils.progress import progress
from dpdiff.utils.run_files import LOSS_CURVES
from dpdiff.viz.curves import plot_loss_history
from dpdiff.viz.overlay import CONTOUR_RGB, compose_overlay, mask_boundary
from dpdiff.viz.report.images import heat_blend, labelled_panels, png_bytes, resize_map, resize_mask, upsample_grid

__all__ = ["Figure", "example_figures", "loss_figures", "proto_figures", "tsne_figures"]


@dataclass
class Figure:
    file: str  # path relative to the HTML file's folder
    png: bytes
    caption: str
    alt: str


def _example_caption(e: dict) -> str:
    what = "false positive" if e["kind"] == "fp" else "false negative"
    note = ""
    if math.isfinite(e["beyond"]):
        if e["kind"] == "fp":
            note = f"scores above {100 * e['beyond']:.0f}% of the category's defective images"
        else:
            note = f"scores below {100 * e['beyond']:.0f}% of the category's normal images"
    return (
        f"{what} #{e['rank'] + 1}: {e['category']} / {e['defect']} / {Path(e['image']).name}, "
        f"score {e['score']:.4g}" + (f" ({note})" if note else "")
    )


def example_figures(data: ReportData, rel: str, paths: PathMap, size: int | tuple[int, int]) -> list[Figure]:
    """One figure per false positive/negative; sets each example's ``png`` (its file)."""
    figs = []
    for e in progress(data.examples, desc="report: false positives/negatives", leave=False):
        img = eval_image_array(paths.existing(e["image"]), size, data.roi)
        amap = resize_map(e["map"], size)
        mask = resize_mask(unpack_mask(e["mask"], data.map_size), size) if e["kind"] == "fn" else None
        vmin, vmax = data.scales.get(e["category"], (None, None))
        canvas = compose_overlay(
            img, amap, mask=mask, vmin=vmin, vmax=vmax, title=f"{e['category']}/{e['defect']} score={e['score']:.4g}"
        )
        name = (
            f"{e['kind']}_{slugify(e['category'])}_{e['rank']}_{slugify(e['defect'])}_"
            f"{slugify(Path(e['image']).stem)}.png"
        )
        what = "false positive" if e["kind"] == "fp" else "false negative"
        figs.append(
            Figure(
                f"{rel}/{name}",
                png_bytes(canvas),
                _example_caption(e),
                f"{what} {e['category']} {Path(e['image']).name}",
            )
        )
        e["png"] = f"{rel}/{name}"
    return figs


def proto_figures(data: ReportData, rel: str, paths: PathMap, size: int | tuple[int, int]) -> list[Figure]:
    """Image (+ ground truth), L-Proto and G-Proto similarity maps of one defective and one normal probe of
    each of the first categories."""
    po = data.probe_outputs
    if po is None:
        raise ValueError("prototype maps need the model outputs on the probe images (ReportData.probe_outputs)")
    figs = []
    for k in progress(select_probes(data)[0], desc="report: prototype maps", leave=False):
        p, i = data.probes[k], po.index.index(k)
        cat = p["category"]
        img = eval_image_array(paths.existing(p["image"]), size, data.roi)
        mask = resize_mask(unpack_mask(p["mask"], data.map_size), size)
        edge = mask_boundary(mask) if mask.any() else None
        first = img.copy()
        if edge is not None:
            first[edge] = CONTOUR_RGB
        panels, labels = [first], ["image" + (" + ground truth" if edge is not None else "")]
        for sims, lab in ((po.sim_local, "L-Proto"), (po.sim_global, "G-Proto")):
            if sims is None:
                continue
            sm = upsample_grid(sims[i], size)
            lo, hi = float(sm.min()), float(sm.max())
            panels.append(heat_blend(img, sm, lo, hi, edge))
            labels.append(f"{lab} cos {lo:.2f}..{hi:.2f}")
        state = "anomalous" if p["label"] else "normal"
        canvas = labelled_panels(panels, labels, title=f"{cat}/{p['defect']} ({state})")
        name = f"proto_{slugify(cat)}_{state}_{slugify(p['defect'])}_{slugify(Path(p['image']).stem)}.png"
        cap = (
            f"{cat}: {state} image {Path(p['image']).name} (score {p['score']:.4g}); max cosine similarity "
            f"of each token to the local (L-Proto) and global (G-Proto) prototypes, colour scale per map"
        )
        figs.append(Figure(f"{rel}/{name}", png_bytes(canvas), cap, f"prototype similarity {cat} {state}"))
    return figs


def _single_thread():
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _embed(tokens, perplexity: float) -> dict[str, np.ndarray]:
    from sklearn.manifold import TSNE

    emb = {}
    # one OpenMP thread: sklearn's libgomp next to torch's (two OpenMP runtimes in one process) makes the
    # Barnes-Hut gradient spin-wait; measured 33 s instead of 0.3 s for 96 tokens on a busy 2-core machine
    with _single_thread():
        for key, x in (("before", tokens.before), ("after", tokens.after)):
            emb[key] = TSNE(
                n_components=2, perplexity=perplexity, init="pca", random_state=tokens.seed, max_iter=500
            ).fit_transform(x.astype(np.float32))
    return emb


#: t-SNE marker of each token label: 0 normal, 1 anomalous
_TSNE_STYLES: dict[int, tuple[str, dict]] = {
    0: ("normal", dict(s=6, c="#3b6fb6", alpha=0.5, marker="o")),
    1: ("anomalous", dict(s=40, c="#d62728", alpha=0.85, marker="*")),
}


def _scatter_png(emb: dict[str, np.ndarray], lab: np.ndarray) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(10, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    for j, (key, title) in enumerate(
        (("before", "encoder tokens (before reconstruction)"), ("after", "reconstructed tokens (after)"))
    ):
        ax = fig.add_subplot(1, 2, j + 1)
        e = emb[key]
        for value, (name, style) in _TSNE_STYLES.items():
            sel = lab == value
            if value == 1 and not sel.any():
                continue  # no anomalous token in the sample: no empty legend entry
            ax.scatter(e[sel, 0], e[sel, 1], linewidths=0, label=f"{name} ({int(sel.sum())})", **style)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def tsne_figures(data: ReportData, rel: str, files_dir: Path) -> tuple[list[Figure], str]:
    """(the t-SNE figure, "") of the probe outputs' token sample, also written as ``tsne_tokens.csv``; ([], why)
    without a sample."""
    po = data.probe_outputs
    if po is None:
        raise ValueError("the t-SNE needs the model outputs on the probe images (ReportData.probe_outputs)")
    tokens = po.tokens
    if tokens is None:
        return [], po.note
    lab = np.asarray(tokens.labels)
    err = ((tokens.after - tokens.before) ** 2).sum(-1)
    perplexity = float(min(30.0, max(2.0, (len(lab) - 1) / 3.0)))
    emb = _embed(tokens, perplexity)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["category", "token_label", "reconstruction_error", "before_x", "before_y", "after_x", "after_y"])
    for k in range(len(lab)):
        w.writerow(
            [
                tokens.categories[k],
                "anomalous" if lab[k] else "normal",
                f"{err[k]:.6g}",
                *(f"{v:.5g}" for v in (*emb["before"][k], *emb["after"][k])),
            ]
        )
    atomic_write_text(files_dir / "tsne_tokens.csv", out.getvalue())
    if (lab == 1).any():
        stats = (
            f"mean squared reconstruction error per token: normal {err[lab == 0].mean():.4g}, "
            f"anomalous {err[lab == 1].mean():.4g}"
        )
    else:
        stats = "no anomalous tokens in the sample"
    cap = (
        f"t-SNE (perplexity {perplexity:.0f}, PCA init, seed {tokens.seed}) of {len(lab)} standardised tokens "
        f"of {tokens.images} test images, before and after one DDIM reconstruction (paper Fig. 7). A token is "
        f"anomalous when the ground truth covers at least {ANOMALOUS_TOKEN_FRACTION:.0%} of its patch; "
        f"defect-boundary tokens are left out. {stats}."
    )
    return [
        Figure(f"{rel}/tsne_tokens.png", _scatter_png(emb, lab), cap, "t-SNE of tokens before and after reconstruction")
    ], ""


def loss_figures(history: list[dict], rel: str, files_dir: Path) -> list[Figure]:
    """The training loss curves (written to ``files_dir/loss_curves.png`` at once)."""
    every = int(history[0]["step"])
    p = plot_loss_history(history, files_dir / LOSS_CURVES)
    return [
        Figure(
            f"{rel}/{LOSS_CURVES}",
            p.read_bytes(),
            f"training losses (mean over every {every} steps, {int(history[-1]['step'])} steps; "
            f"total = diffusion + local + global prototype terms, Eq. 19)",
            "training loss curves",
        )
    ]
