"""``docs/configuration.md``, generated from the field declarations of :mod:`dpdiff.config`.

Every key (``section.key``) with its type (in the words of the validation messages), its default, its allowed
values (the ``choices`` tuple of :mod:`dpdiff.choices`, or the numeric bounds) and its ``help`` text. Regenerate
after changing a declaration::

    .venv/bin/python -m dpdiff.config_docs            # writes docs/configuration.md
    .venv/bin/python -m dpdiff.config_docs --check    # exit 1 if the file is not current

tests/test_config_docs.py fails while the committed file differs from :func:`config_reference`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from dpdiff.config import LOCATION, RUNTIME, TEST_TIME, Config
from dpdiff.config_checks import bounds_text, field_hints, type_text

#: The generated file in a source checkout (the repository's docs/ folder).
REFERENCE_FILE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
#: The command that regenerates :data:`REFERENCE_FILE`.
REGENERATE = ".venv/bin/python -m dpdiff.config_docs"

_ROLE_NOTES = {RUNTIME: "run-time", LOCATION: "location"}

_INTRO = f"""\
# Configuration reference

<!-- Generated from the declarations in dpdiff/config.py by `{REGENERATE}`: edit those, not this file. -->

Every key a preset or YAML file may set (`section:` then `key: value`), also from the command line with
`--set section.key=value`. The defaults are those of `dpdiff.config.Config()`; the packaged presets
(`dpdiff/configs/*.yaml`) change some of them. Every value is checked on load (type, allowed values, range);
"choice" marks a value the paper leaves open (docs/method.md).

Sections marked *test-time* change the scores, never the trained weights; keys marked *run-time* (where and
how a computation runs) change neither; keys marked *location* say where an input lives (the same files
elsewhere give the same run).
"""


def _yaml_text(value: Any) -> str:
    """A default as YAML writes it: ``null``, ``true``, ``{}``, ``[2, 3]``, plain text and numbers."""
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _allowed(meta: Mapping[str, Any]) -> str:
    choices = meta.get("choices")
    if choices is not None:
        return ", ".join(f"`{c}`" for c in choices)
    return bounds_text(meta)


def _section(name: str, section: Any, meta: Mapping[str, Any]) -> list[str]:
    """The heading and the table of one section (``section``: its dataclass)."""
    test_time = " (*test-time*)" if meta.get("role") == TEST_TIME else ""
    lines = [f"## `{name}`{test_time}", "", meta["help"][:1].upper() + meta["help"][1:] + ".", ""]
    lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    hints, defaults = field_hints(section), section()
    for f in fields(section):
        note = _ROLE_NOTES.get(f.metadata.get("role", ""))
        text = f.metadata["help"] + (f" (*{note}*)" if note else "")
        row = (
            f"`{name}.{f.name}`",
            type_text(hints[f.name]),
            f"`{_yaml_text(getattr(defaults, f.name))}`",
            _allowed(f.metadata),
            text,
        )
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines + [""]


def config_reference() -> str:
    """The text of ``docs/configuration.md``: one table per section of :class:`~dpdiff.config.Config`."""
    lines = [_INTRO]
    for f in fields(Config):
        lines += _section(f.name, f.default_factory, f.metadata)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m dpdiff.config_docs [--output PATH] [--check]``: write (or check) the reference."""
    parser = argparse.ArgumentParser(prog="python -m dpdiff.config_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not current; write nothing")
    args = parser.parse_args(argv)
    text = config_reference()
    if args.check:
        current = args.output.is_file() and args.output.read_text(encoding="utf-8") == text
        if not current:
            print(f"{args.output} is not current; regenerate it with `{REGENERATE}`", file=sys.stderr)
        return 0 if current else 1
    if not args.output.parent.is_dir():
        parser.error(f"no folder {args.output.parent} (not a source checkout?): give --output")
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


__all__ = ["REFERENCE_FILE", "REGENERATE", "config_reference", "main"]


if __name__ == "__main__":
    raise SystemExit(main())
