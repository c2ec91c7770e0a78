"""Real-IAD / Real-IAD Variety on-disk layout: JSON folders, category names, name normalisation.

Shared by :mod:`dpdiff.data.readers.realiad` (the readers) and :mod:`dpdiff.data.readers.realiad_variety_splits`
(the paper's S1/S2/S3 subsets), so that neither imports the other's module at run time (no import
cycle). The public names are re-exported by :mod:`dpdiff.data.readers.realiad`.

JSON folders (looked up under the dataset root, in order)::

    Real-IAD:         realiad_jsons/<cat>.json                     (Tencent README: realiad_jsons.zip
                                                                    extracted into the root)
                      realiad_jsons/realiad_jsons/<cat>.json       (the zip extracted into a folder of
                                                                    its own: anomalib, Dinomaly)
                      realiad_jsons_sv/, realiad_jsons_fuiad_0.{0,1,2,4}/   next to realiad_jsons/
                                                                    (Tencent README), or inside it;
                                                                    chosen with json_dir=
    Real-IAD Variety: realiadvariety_jsons/[<wrapper>/]<cat>.json  (also realiad_variety_jsons/,
                      Real-IAD_Variety_jsons/, realiad_jsons/)

Category names. Public lists of the 160 Real-IAD Variety folders spell some names with hyphens or
joined words (``D-sub-connector``, ``chip-inductor``, ``lilypad_led``) where the DPDiff-AD paper
writes ``D_sub_connector``, ``chip_inductor``, ``lily_pad_led``. :func:`normalize_category` maps
both to one key (lower case, hyphens, underscores and white space removed) and
:func:`match_categories` resolves requested names to the names on disk through it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dpdiff.data.readers.layout import LayoutError, expect_dir
from dpdiff.utils.errors import DataError

__all__ = [
    "REALIAD",
    "VARIETY",
    "find_json_dir",
    "json_categories",
    "list_categories",
    "list_variety_categories",
    "normalize_category",
    "closest_categories",
    "match_categories",
]


@dataclass(frozen=True)
class _Variant:
    name: str
    image_prefix: str  # image folder is <root>/<image_prefix><resolution>
    json_tops: tuple[str, ...]  # candidate JSON folders under <root>, in order


REALIAD = _Variant("Real-IAD", "realiad_", ("realiad_jsons",))
VARIETY = _Variant(
    "Real-IAD Variety",
    "realiadvariety_",
    ("realiadvariety_jsons", "realiad_variety_jsons", "Real-IAD_Variety_jsons", "realiad_jsons"),
)


# ----------------------------------------------------------------------------- JSON folder


def _has_json(d: Path) -> bool:
    return d.is_dir() and any(p.suffix.lower() == ".json" and not p.name.startswith(".") for p in d.iterdir())


def _descend(top: Path) -> Path | None:
    """``top`` if it holds *.json, else its single (or same-named) sub-folder holding *.json."""
    if _has_json(top):
        return top
    if not top.is_dir():
        return None
    subs = sorted(
        (p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_json(p)), key=lambda p: p.name
    )
    if len(subs) == 1:
        return subs[0]
    for s in subs:  # realiad_jsons/realiad_jsons next to realiad_jsons_sv, realiad_jsons_fuiad_0.x
        if s.name == top.name:
            return s
    if subs:
        raise LayoutError(
            f"{str(top)!r} holds several JSON folders {[s.name for s in subs]}; choose one with json_dir=",
            top,
        )
    return None


def find_json_dir(root: Path, json_dir: Path | str | None = None, variety: bool = False) -> Path:
    """The folder of per-category JSONs (see the module docstring for the search order).

    ``json_dir``: absolute, or relative to ``root`` or to the default JSON folder (so
    ``json_dir="realiad_jsons_sv"`` finds ``<root>/realiad_jsons_sv`` - the Tencent README layout,
    next to ``realiad_jsons/`` - and ``<root>/realiad_jsons/realiad_jsons_sv``).
    """
    variant = VARIETY if variety else REALIAD
    root = expect_dir(Path(root), f"({variant.name} root)")
    if json_dir is not None:
        jd = Path(json_dir)
        cands = [jd] if jd.is_absolute() else [root / jd] + [root / t / jd for t in variant.json_tops]
        for c in cands:
            found = _descend(c)
            if found is not None:
                return found
        raise LayoutError(
            f"expected JSON folder {str(cands[0])!r} with <category>.json files for {variant.name}", cands[0]
        )
    for top in variant.json_tops:
        found = _descend(root / top)
        if found is not None:
            return found
    first = root / variant.json_tops[0]
    raise LayoutError(
        f"expected {str(first)!r} or {str(first / variant.json_tops[0])!r} holding <category>.json files "
        f"for {variant.name} (or pass json_dir=)",
        first,
    )


def json_categories(json_dir: Path) -> list[str]:
    """Stems of the visible ``*.json`` files of ``json_dir``, sorted."""
    return sorted(
        p.stem for p in Path(json_dir).iterdir() if p.suffix.lower() == ".json" and not p.name.startswith(".")
    )


def list_categories(root: Path, json_dir: Path | str | None = None) -> list[str]:
    """Real-IAD categories: the stems of the JSON files, sorted."""
    return json_categories(find_json_dir(root, json_dir, variety=False))


def list_variety_categories(root: Path, json_dir: Path | str | None = None) -> list[str]:
    """Real-IAD Variety categories: the stems of the JSON files, sorted."""
    return json_categories(find_json_dir(root, json_dir, variety=True))


# ----------------------------------------------------------------------------- category names

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_category(name: str) -> str:
    """The key two spellings of one category share: lower case, hyphens/underscores/spaces removed.

    ``"D_sub_connector"``, ``"D-sub-connector"`` and ``"d sub connector"`` give ``"dsubconnector"``;
    ``"lily_pad_led"`` and ``"lilypad_led"`` give ``"lilypadled"``.
    """
    return _SEPARATORS.sub("", str(name)).lower()


def closest_categories(name: str, available: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` names of ``available`` closest to ``name`` (compared by :func:`normalize_category`)."""
    by_key: dict[str, list[str]] = {}
    for a in available:
        by_key.setdefault(normalize_category(a), []).append(a)
    keys = difflib.get_close_matches(normalize_category(name), list(by_key), n=n, cutoff=0.5)
    return [a for k in keys for a in by_key[k]][:n]


def match_categories(
    requested: Sequence[str], available: Iterable[str], what: str = "categories", where: str = ""
) -> list[str]:
    """The names of ``available`` matching ``requested`` (same order), through :func:`normalize_category`.

    An exact name wins; otherwise the one available name with the same normalised key is taken.
    Raises :class:`ValueError` listing every requested name that matches nothing (with the closest
    available names) or that matches several available names.
    """
    available = list(available)
    exact = set(available)
    by_key: dict[str, list[str]] = {}
    for a in available:
        by_key.setdefault(normalize_category(a), []).append(a)
    out: list[str] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for name in requested:
        if name in exact:
            out.append(name)
            continue
        hits = by_key.get(normalize_category(name), [])
        if len(hits) == 1:
            out.append(hits[0])
        elif hits:
            ambiguous.append(f"{name!r} (matches {hits})")
        else:
            close = closest_categories(name, available)
            missing.append(f"{name!r} (closest on disk: {close})" if close else repr(name))
    problems = []
    if missing:
        problems.append(f"{len(missing)} {what} are not found{where}: {', '.join(missing)}")
    if ambiguous:
        problems.append(f"{len(ambiguous)} {what} match several names on disk{where}: {', '.join(ambiguous)}")
    if problems:
        raise DataError("; ".join(problems) + " (names are compared ignoring case, hyphens, underscores and spaces)")
    if len(set(out)) != len(out):
        dup = sorted({o for o in out if out.count(o) > 1})
        raise DataError(f"several requested {what} resolve to the same name on disk{where}: {dup}")
    return out
