"""Dataset readers, one module per on-disk layout, and the format registry that picks one by name.

::

    from dpdiff.data.readers import load_samples, list_categories_for, detect_format
    train = load_samples("visa", root, None, "train")
    fmt = detect_format(root)            # or load_samples("auto", root, ...)

* :mod:`~dpdiff.data.readers.registry`: the format names -> reader table (:data:`FORMATS`), :func:`load_samples`,
  :func:`list_categories_for`, :func:`detect_format` (formats and detection rules in its docstring);
* :mod:`~dpdiff.data.readers.mvtec` (MVTec-AD and MPDD), :mod:`~dpdiff.data.readers.btad`,
  :mod:`~dpdiff.data.readers.visa`, :mod:`~dpdiff.data.readers.realiad` (Real-IAD and Real-IAD Variety; layout
  and subsets in :mod:`~dpdiff.data.readers.realiad_layout` and :mod:`~dpdiff.data.readers.realiad_variety_splits`),
  :mod:`~dpdiff.data.readers.generic` (normal / abnormal / mask folders);
* :mod:`~dpdiff.data.readers.layout`: what every reader shares (:class:`LayoutError`, path checks, the category
  list, the training-row filter).

Every reader returns a list of :class:`dpdiff.data.types.Sample`.
"""

from __future__ import annotations

from dpdiff.data.readers import registry
from dpdiff.data.readers.registry import *  # noqa: F403 - exactly registry.__all__, listed there once

__all__ = registry.__all__
