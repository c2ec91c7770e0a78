"""A griffe extension for the API reference (mkdocs.yml, mkdocstrings ``extensions``): dpdiff's docstrings are
written with Sphinx roles (``:class:`~dpdiff.config.Config```, ``:func:`fit```) and reST's ``::`` before a
literal block, which Markdown would show as they are. Before the docstrings are rendered, a role becomes a code
span of its target (``~`` keeps the last dotted name, as in Sphinx) and a paragraph's closing ``::`` becomes
``:`` (the indented block after it is already a code block in Markdown). The source files are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.M)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def markdown_docstring(text: str) -> str:
    """``text`` with Sphinx roles as code spans and a line-final ``::`` as ``:``."""
    return _LITERAL_MARKER.sub(":", _ROLE.sub(_role, text))


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`markdown_docstring`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
