"""Check the relative links of Markdown files that MkDocs does not build (README.md, CONTRIBUTING.md, ...).

    python tools/check_md_links.py README.md CONTRIBUTING.md CHANGELOG.md

A link ``[text](path)`` or ``[text](path#anchor)`` must name a file or folder that exists (relative to the
Markdown file), and an anchor into a Markdown file must be one of its headings as GitHub spells them (lower case,
punctuation dropped, spaces as hyphens), since these files are read on GitHub. Links with a scheme (``https:``,
``mailto:``) are not fetched: the check runs offline. Exit status 1 with one line per broken link, else 0.
The pages under docs/ are checked by ``mkdocs build --strict`` (mkdocs.yml ``validation:``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# [text](target) and [text](target "title"), not images' inner brackets; code spans and fences are removed first
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks, inline code removed (links there are examples)."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, _CODE_SPAN.sub("", line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, characters other than letters, digits, ``-``, ``_`` and
    spaces dropped, spaces turned into hyphens (markup such as backticks and emphasis goes first)."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file; a repeated heading gets ``-1``, ``-2``... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        if m := _HEADING.match(line):
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """One message per broken relative link of ``path``, naming the file, line and target."""
    problems = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if _SCHEME.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path.resolve()
            if not dest.exists():
                problems.append(f"{path}:{number}: link to {target!r}: {file_part} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path}:{number}: link to {target!r}: no heading of {dest.name} has anchor #{anchor}")
    return problems


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not files:
        print("usage: check_md_links.py FILE.md [FILE.md ...]", file=sys.stderr)
        return 2
    problems = [p for f in files for p in broken_links(f)]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"check_md_links: {len(files)} files, {len(problems)} broken links")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
