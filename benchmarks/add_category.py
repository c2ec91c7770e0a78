"""Add categories to a trained unified model (issue #25, ``dpdiff train --init-from RUN``): forgetting, new-category
accuracy and time against training from scratch, with the shipped CPU preset (``lite0_cpu``).

    python benchmarks/add_category.py                          # synthetic 8 -> 8+2 and ELPV mono -> +poly (resumable)
    python benchmarks/add_category.py --datasets synthetic --old 8 --new 2 --add-steps 750
    python benchmarks/add_category.py --quick                  # smoke run: 2 -> 2+1 tiny synthetic categories

Per dataset, three trainings on the same cached backbone tokens (``_accuracy_harness.Bench``, one feature cache):

* ``scratch N``: the preset from scratch on the N old categories; scored on them = the old categories *before*;
* ``added +M``: ``train.init_from`` = that run, the M new categories mixed with a replay of the old ones
  (``train.replay_fraction`` of every batch, all old training images), ``--add-steps`` steps (default: the
  library's default budget, ``train.steps // ADD_STEPS_DIVISOR``); scored on the old categories (*after*: the
  forgetting is after - before) and on the new ones;
* ``scratch N+M``: the preset from scratch on all categories, the reference for the new categories (and the old).

Every run is scored on the same test set (all N+M categories) with the preset's inference, and each group's metrics
are the mean over its categories of I-AUROC, P-AUROC and mAD (all seven metrics are stored). Times: ``train_s`` is
the training loop (``config.json``), ``wall_s`` the whole ``train()`` call as this script ran it (features from
the cache, so no backbone pass). Goal (issue #25): new within 1 point of ``scratch N+M``, old within 0.5 of
``scratch N``, in a quarter of ``scratch N+M``'s time.

Resumable: one run folder per training (``train(..., resume=True)`` continues a stopped one), one JSON per scored
row (``Bench.cached``, keyed by the weights). Writes ``benchmarks/results/add_category.{json,md}`` (``--quick``:
under the output folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _accuracy_harness import PRESET, Bench
from _common import RESULTS, ROOT, inference_settings, pct

from dpdiff.config import Config, load_config
from dpdiff.experiments.compare import dpdiff_score_features
from dpdiff.metrics import add_mean_row, compute_metrics
from dpdiff.model.checkpoint import load_model, read_run_config
from dpdiff.training.init_from import ADD_STEPS_DIVISOR, add_category_config
from dpdiff.utils.io import atomic_write_json, atomic_write_text
from dpdiff.workflows.train import train

log = logging.getLogger("add_category")
METRICS = ("I-AUROC", "P-AUROC", "mAD")
#: Real sets with several categories (converted by benchmarks/real_datasets.py): name -> (old, new) categories.
REAL_SETS = {"elpv": (["mono"], ["poly"]), "elpv_units": (["mono"], ["poly"])}
#: Issue #25's goal: new within 1 point of scratch N+M, old within 0.5 of before, in a quarter of the time.
GOAL = {"new_within": 0.01, "old_within": 0.005, "time_fraction": 0.25}


def _dataset(name: str, out: Path, preset: Config, args) -> tuple[Path, list[str], list[str]]:
    """(root, old categories, new categories) of a dataset name."""
    if name in REAL_SETS:
        root = Path(args.real_data) / name
        if not (root / "done.json").is_file():
            raise SystemExit(
                f"{name} not converted at {root}: run `python benchmarks/real_datasets.py {name} --output {root}`"
            )
        return root, *REAL_SETS[name]
    if name != "synthetic":
        raise SystemExit(f"--datasets: unknown dataset {name!r} (synthetic, {', '.join(REAL_SETS)})")
    from dpdiff.data.synthetic import ensure_synthetic_dataset

    cats = ensure_synthetic_dataset(
        out / "synthetic_data",
        args.old + args.new,
        train_per_category=args.synthetic_train,
        test_good_per_category=args.synthetic_test_good,
        test_defect_per_category=args.synthetic_test_defect,
        image_size=preset.backbone.image_size,
        seed=0,
    )[: args.old + args.new]  # prefix-stable: the first N are the old ones
    return out / "synthetic_data", cats[: args.old], cats[args.old :]


def _added_run(bench: Bench, old_run: Path, new: list[str], steps: int, out: Path) -> tuple[Path, float]:
    """The run adding ``new`` to ``old_run`` through the library's own path (``train.init_from``, images read and
    their tokens taken from the bench's feature cache); (run folder, wall seconds of the train() calls so far)."""
    run = out / "runs" / f"added_{steps}_steps"
    cfg = add_category_config(
        old_run,
        steps=steps,
        overrides={
            "data.root": str(bench.root),
            "data.categories": new,
            "data.format": "mvtec",
            "train.feature_cache": True,
            "train.cache_dir": str(bench.cache.root),
            "train.device": "cpu",
        },
    )
    memo = run / "wall_s.json"
    wall = float(json.loads(memo.read_text())["wall_s"]) if memo.is_file() else 0.0
    done = (run / "config.json").is_file() and int(read_run_config(run)[1].get("step", -1)) >= steps
    if not done:
        resume = (run / "train_state.pt").is_file()
        log.info("[%s] adding %s to %s (%d steps)%s", bench.name, new, old_run.name, steps, " (resumed)" * resume)
        t0 = time.perf_counter()
        train(cfg, run, overwrite=not resume, resume=resume)
        wall += time.perf_counter() - t0
        atomic_write_json(memo, {"wall_s": wall})
    return run, wall


def _score(bench: Bench, run: Path, groups: dict[str, list[str]]) -> dict:
    """``run`` scored on the whole test set with the preset's inference: per group, the mean over its categories of
    every metric, and each category's row."""
    model, cfg, payload = load_model(run, bench.device)
    detector = bench.detector(run, bench.backbone, model, cfg)
    maps, scores = (x.numpy() for x in dpdiff_score_features(detector, bench.test_feats))
    per_category = {}
    for c in sorted({c for cats in groups.values() for c in cats}):
        sel = bench.cats == c
        per_category[c] = compute_metrics(
            scores[sel], bench.labels[sel], maps[sel], bench.masks[sel], mask_known=bench.mask_known[sel]
        )
    rows = add_mean_row(dict(per_category))
    out = {g: add_mean_row({c: rows[c] for c in cats})["mean"] for g, cats in groups.items()}
    return (
        rows["mean"]  # over every category: what Bench.cached logs
        | out
        | {"per_category": {c: rows[c] for c in per_category}, "train_s": float(payload.get("train_s", 0.0))}
    )


def run_dataset(name: str, args, preset: Config, out: Path) -> dict:
    root, old, new = _dataset(name, out / name, preset, args)
    steps = args.steps or preset.train.steps
    add_steps = args.add_steps or max(1, steps // ADD_STEPS_DIVISOR)
    everything = Bench(name, root, old + new, preset, out / name, steps)  # features of all categories, cached
    before = Bench(f"{name}_old", root, old, preset, out / f"{name}_old", steps)  # the same feature cache
    shipped = inference_settings(preset)
    groups = {"old": old, "new": new}

    def scored(row: str, run: Path) -> dict:
        key = shipped | {"weights": everything.weights_digest(run)}
        return everything.cached(row, lambda: _score(everything, run, groups), key)

    t0 = time.perf_counter()
    scratch_old = before.trained("from scratch", {})
    scratch_old_wall = time.perf_counter() - t0
    added, added_wall = _added_run(everything, scratch_old, new, add_steps, out / name)
    scratch_all = everything.trained("from scratch", {})
    rows = {
        f"scratch N={len(old)} (old: before)": scored("scratch_old", scratch_old),
        f"added +{len(new)} ({add_steps} steps)": scored(f"added_{add_steps}", added),
        f"scratch N+M={len(old) + len(new)} (reference)": scored("scratch_all", scratch_all),
    }
    rows[f"added +{len(new)} ({add_steps} steps)"]["wall_s"] = added_wall
    if scratch_old_wall > 1.0:  # trained now (not reused): a wall time of this run
        rows[f"scratch N={len(old)} (old: before)"]["wall_s"] = scratch_old_wall
    return {
        "rows": rows,
        "verdict": _verdict(*rows.values()),
        "protocol": {
            "data": str(root),
            "old_categories": old,
            "new_categories": new,
            "train_images": {"old": len(before.train_samples), "all": len(everything.train_samples)},
            "test_images": len(everything.test_samples),
            "scratch_steps": steps,
            "add_steps": add_steps,
            "replay": "all old training images, train.replay_fraction of every batch",
            "replay_fraction": preset.train.replay_fraction,
            "preset": PRESET,
            "torch_threads": torch.get_num_threads(),
        },
    }


def _verdict(before: dict, added: dict, reference: dict) -> dict:
    """The deltas behind issue #25's goal: old after - before, new added - scratch N+M (fractions), time ratio."""
    out: dict = {"forgetting": {}, "new_vs_scratch": {}}
    for k in METRICS:
        b, a, r = before["old"].get(k), added["old"].get(k), None
        out["forgetting"][k] = None if a is None or b is None else a - b
        a, r = added["new"].get(k), reference["new"].get(k)
        out["new_vs_scratch"][k] = None if a is None or r is None else a - r
    out["time_ratio"] = added["train_s"] / reference["train_s"] if reference["train_s"] else None
    ok = [
        all(v is None or v >= -GOAL["old_within"] for v in out["forgetting"].values()),
        all(v is None or v >= -GOAL["new_within"] for v in out["new_vs_scratch"].values()),
        out["time_ratio"] is not None and out["time_ratio"] <= GOAL["time_fraction"],
    ]
    out["goal_met"] = {"old": ok[0], "new": ok[1], "time": ok[2]}
    return out


def _delta(x) -> str:
    return "\u2014" if x is None else f"{100 * x:+.1f}"


def write_results(summary: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "add_category.json", summary)
    lines = [
        "# Adding categories to a trained model (`dpdiff train --init-from`)",
        "",
        "Shipped preset `lite0_cpu`; every run scored on all categories' test images with the preset's inference; "
        "old/new: mean over the old/new categories (%). Times on this machine's CPU (training loop, features cached).",
        "",
    ]
    for ds, r in summary.items():
        p = r["protocol"]
        lines += [
            f"## {ds}: {len(p['old_categories'])} -> +{len(p['new_categories'])} categories "
            f"({p['train_images']['all']} train / {p['test_images']} test images; scratch {p['scratch_steps']} "
            f"steps, add {p['add_steps']})",
            "",
            "| row | "
            + " | ".join(f"old {k}" for k in METRICS)
            + " | "
            + " | ".join(f"new {k}" for k in METRICS)
            + " | train s |",
            "|---|" + "---:|" * (2 * len(METRICS) + 1),
        ]
        for name, m in r["rows"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(pct(m["old"].get(k)) for k in METRICS)
                + " | "
                + " | ".join(pct(m["new"].get(k)) for k in METRICS)
                + f" | {m['train_s']:.0f} |"
            )
        v = r["verdict"]
        ratio = "\u2014" if v["time_ratio"] is None else f"{v['time_ratio']:.2f}"
        lines += [
            "",
            "Forgetting (old after - before, points): "
            + ", ".join(f"{k} {_delta(v['forgetting'][k])}" for k in METRICS)
            + "; new vs scratch N+M: "
            + ", ".join(f"{k} {_delta(v['new_vs_scratch'][k])}" for k in METRICS)
            + f"; time added / scratch N+M: {ratio}. Goal (old >= -0.5, new >= -1, time <= 0.25) met: "
            + ", ".join(f"{k} {'yes' if ok else 'no'}" for k, ok in v["goal_met"].items())
            + ".",
            "",
        ]
    atomic_write_text(folder / "add_category.md", "\n".join(lines))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(ROOT / "runs" / "add_category"))
    ap.add_argument("--datasets", default="synthetic,elpv", help=f"synthetic and/or {', '.join(REAL_SETS)}")
    ap.add_argument("--real-data", default=str(ROOT / "runs" / "real_data"), help="converted sets (real_datasets.py)")
    ap.add_argument("--old", type=int, default=8, help="synthetic: N old categories")
    ap.add_argument("--new", type=int, default=2, help="synthetic: M categories added")
    ap.add_argument("--synthetic-train", type=int, default=32)
    ap.add_argument("--synthetic-test-good", type=int, default=8)
    ap.add_argument("--synthetic-test-defect", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="steps of the trainings from scratch (default: preset)")
    ap.add_argument(
        "--add-steps", type=int, default=None, help=f"steps of the add run (default: steps // {ADD_STEPS_DIVISOR})"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 -> +1 synthetic categories, 30 steps")
    ap.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.datasets, args.old, args.new, args.steps = "synthetic", 2, 1, args.steps or 30
        args.synthetic_train, args.synthetic_test_good, args.synthetic_test_defect = 8, 4, 8
    preset = load_config(PRESET)
    out = Path(args.output) / ("quick" if args.quick else "")
    results = Path(args.results) if args.results else (out / "summary" if args.quick else RESULTS)
    path = results / "add_category.json"
    summary = json.loads(path.read_text()) if path.is_file() and not args.quick else {}
    torch.manual_seed(0)
    np.random.seed(0)
    for name in (d.strip() for d in args.datasets.split(",") if d.strip()):
        summary[name] = run_dataset(name, args, preset, out)
        write_results(summary, results)  # after each dataset: a stopped run keeps what it finished
        log.info("wrote %s", results / "add_category.json")
    print((results / "add_category.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
