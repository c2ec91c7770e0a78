"""Digest of a run's outputs, to prove that a refactor changes no result (issue #23).

``python tools/output_digest.py OUTPUT_DIR > digest.json`` hashes every file a `dpdiff demo` / `test` writes
that carries a result: results.json (timing and environment keys removed), image_scores.csv, the map arrays,
every PNG (overlays, figures), the model weights and the training log; then ``--compare A.json B.json``
lists what differs. Timings, absolute paths and the HTML page (which embeds timings) are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

#: keys whose values change from run to run without the results changing
VOLATILE = ("time", "seconds", "_s", "per_s", "fps", "date", "host", "path", "root", "output", "version", "pid")
SKIP_SUFFIXES = (".html", ".log", ".lock", ".pt")


def _volatile(key: str) -> bool:
    k = key.lower()
    return any(v in k for v in VOLATILE)


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not _volatile(k)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _safetensors_payload(path: Path) -> bytes:
    """Tensors and metadata, not the header's byte layout (its key order may vary between writes)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        parts = [json.dumps(f.metadata() or {}, sort_keys=True).encode()]
        parts += [k.encode() + f.get_tensor(k).tobytes() for k in sorted(f.keys())]
    return b"".join(parts)


def _npz_payload(path: Path, prefix: str) -> bytes:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        parts = []
        for k in sorted(z.files):
            a = z[k]
            raw = str(a.tolist()).replace(prefix, "<OUT>").encode() if a.dtype.kind == "U" else a.tobytes()
            parts.append(k.encode() + raw)
    return b"".join(parts)


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of the result files under ``folder``; the folder's own absolute path is replaced by
    ``<OUT>`` in text (image paths in CSVs and JSON), so two runs written to different folders compare."""
    prefix = str(folder.resolve())
    out = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix in SKIP_SUFFIXES or "/data/" in f"/{path.relative_to(folder)}":
            continue
        rel = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            payload = _safetensors_payload(path)
        elif path.suffix == ".npz":
            payload = _npz_payload(path, prefix)
        elif path.suffix == ".json":
            try:
                text = path.read_text().replace(prefix, "<OUT>")
                payload = json.dumps(_clean(json.loads(text)), sort_keys=True).encode()
            except ValueError:
                payload = path.read_bytes()
        elif path.suffix == ".csv" and "train_log" in path.name:
            # drop the wall-clock columns of the training log
            lines = path.read_text().splitlines()
            head = lines[0].split(",") if lines else []
            keep = [i for i, h in enumerate(head) if not _volatile(h)]
            payload = "\n".join(",".join(r.split(",")[i] for i in keep) for r in lines).encode()
        elif path.suffix in (".csv", ".md", ".txt"):
            payload = path.read_text().replace(prefix, "<OUT>").encode()
        else:
            payload = path.read_bytes()
        out[rel] = hashlib.sha256(payload).hexdigest()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        for k in diff:
            print(f"differs: {k} ({'missing in B' if k not in b else 'missing in A' if k not in a else 'content'})")
        print(f"{len(a)} files in A, {len(b)} in B, {len(diff)} differ")
        return 1 if diff else 0
    json.dump(digest(Path(args.folder)), sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
