"""Convert public real data sets into the MVTec layout for ``benchmarks/accuracy.py`` (issue #21).

    pip install elpv-dataset                                    # ELPV ships as a PyPI package (CC BY-NC-SA 4.0)
    python benchmarks/real_datasets.py elpv --output runs/real_data/elpv
    git clone https://github.com/2Obe/BSData /tmp/BSData         # BSData (CC BY-SA 4.0)
    python benchmarks/real_datasets.py bsdata --source /tmp/BSData --output runs/real_data/bsdata
    git clone https://github.com/stoy95536/KolektorSDD_Yolov8_Datasets /tmp/KolektorSDD   # CC BY-NC-SA 4.0
    python benchmarks/real_datasets.py kolektorsdd --source /tmp/KolektorSDD --output runs/real_data/kolektorsdd

The split (fixed seed, never a defective image in training) and the sources are documented in
``dpdiff.data.public_sets``; the data are never committed. A finished conversion is not redone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dpdiff.data.public_sets import PUBLIC_SETS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(PUBLIC_SETS))
    ap.add_argument("--source", help="the downloaded copy (BSData: the repository clone; ELPV: the package's data)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-fraction", type=float, default=0.8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert, needs_source = PUBLIC_SETS[args.dataset]
    if needs_source and not args.source:
        ap.error(f"{args.dataset} needs --source (a local copy of the data)")
    record = convert(args.source, Path(args.output), train_fraction=args.train_fraction, seed=args.seed)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
