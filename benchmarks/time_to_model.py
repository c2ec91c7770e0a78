"""The ``time_to_model`` row of ``benchmarks/results/speed.json`` (issue #22): wall minutes from MTD's images to a
trained model on 2 CPU cores, with that model's accuracy, for the shipped preset (0.3: masked-token training, the
token bank and the image Gaussian) and the former one (0.2: every token, no bank, no Gaussian).

    python benchmarks/accuracy.py --datasets mtd --rows short --no-extra-trainings
    python benchmarks/time_to_model.py          # reads what that run measured, adds the row to speed.json

Minutes = the backbone pass over MTD's 762 training images (``speed.json`` ``training.cache.cold_get_s``, measured
by ``benchmarks/speed.py`` through the feature cache ``dpdiff train`` uses) + the training itself (``train_s`` of
the accuracy run: ``dpdiff.workflows.train.train`` on those features, 3000 steps, 2 threads; other jobs may have
shared the machine, so the minutes at ``speed.py``'s quiet ``Trainer.step`` rate are given too). The accuracy is the
model's in ``benchmarks/accuracy.py``'s protocol (mean over MTD's 5 categories). The shipped preset adds what
``dpdiff train`` builds after the last step (the token bank and the image Gaussian: ``build_s`` of the run's
``scoring_files_settings.json``, measured by the accuracy harness). Nothing is re-measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import ROOT

from dpdiff.utils.io import atomic_write_json

#: name -> (accuracy row file, [(steps, token_keep)] of its 3000 steps, for the estimate at the quiet step rate, the
#: run folder whose scoring files it builds after training, or None)
ROWS = {
    "shipped preset (lite0_cpu 0.3: token_keep=0.5, last 300 of 3000 steps every token; token bank, image Gaussian)": (
        "dpdiff__shipped_preset.json",
        [(2700, 0.5), (300, 1)],
        "preset",
    ),
    "former preset (0.2: 3000 steps, every token)": ("former_preset_as_shipped.json", [(3000, 1)], None),
}
KEYS = ("I-AUROC", "I-AP", "P-AUROC", "P-AP", "P-AUPRO", "mAD")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=str(ROOT / "runs" / "accuracy" / "mtd" / "rows"))
    ap.add_argument("--speed", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    args = ap.parse_args()
    speed = json.loads(Path(args.speed).read_text())
    extract_s = float(speed["training"]["cache"]["cold_get_s"])
    out = {}
    step_rate = {  # steps/s of Trainer.step on 2 threads, measured by speed.py on a quiet machine
        keep: float(speed["training"]["trainer_step"][f"token_keep={keep}, threads=2"]["steps_per_s"])
        for keep in (1, 0.5)
    }
    for name, (file, phases, run) in ROWS.items():
        metrics = json.loads((Path(args.rows) / file).read_text())["metrics"]
        build_s = 0.0
        if run is not None:
            memo = Path(args.rows).parent / "runs" / run / "scoring_files_settings.json"
            build_s = float(json.loads(memo.read_text())["build_s"])
        train_s = float(metrics["train_s"]) + build_s
        quiet_s = sum(steps / step_rate[keep] for steps, keep in phases) + build_s
        out[name] = {
            "wall_minutes": round((extract_s + train_s) / 60, 2),
            "wall_minutes_at_the_quiet_step_rate": round((extract_s + quiet_s) / 60, 2),
            "feature_extraction_s": round(extract_s, 1),
            "train_s": round(train_s, 1),
            "of_which_token_bank_and_image_gaussian_s": round(build_s, 1),
            **{k: round(100 * metrics[k], 1) for k in KEYS},
        }
        print(name, out[name])
    speed["time_to_model"] = {
        "data": "MTD (5 categories, 762 training images), 2 CPU threads",
        "source": "benchmarks/accuracy.py (train_s, metrics) + benchmarks/speed.py (feature extraction)",
        "goal_minutes": 10,
        "rows": out,
    }
    atomic_write_json(Path(args.speed), speed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
