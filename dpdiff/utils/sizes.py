"""Image sizes written as one int (a square side) or ``[height, width]``: the one reading of both forms.

A bottom-layer module (imports nothing from dpdiff but ``dpdiff.utils.errors``): the configuration checks, the
backbones and the image geometry (``dpdiff.data.geometry``) all read sizes with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dpdiff.utils.errors import ConfigError

__all__ = ["as_hw", "hw_json", "hw_text"]


def as_hw(size: int | Sequence[int], key: str = "image_size") -> tuple[int, int]:
    """``256`` -> ``(256, 256)``; ``[64, 128]`` -> ``(64, 128)`` (height, width). Anything else (a list of
    another length, a non-positive side, a float or bool) is a ConfigError naming ``key``."""
    if isinstance(size, bool):
        raise ConfigError(f"{key}: expected an int or [height, width], got {size!r}")
    if isinstance(size, int):
        sides: tuple = (size, size)
    elif isinstance(size, Sequence) and not isinstance(size, (str, bytes)) and len(size) == 2:
        sides = tuple(size)
    else:
        raise ConfigError(f"{key}: expected an int or [height, width], got {size!r}")
    # numpy integers are ints too; bools and floats are not sizes
    if not all(hasattr(v, "__index__") and not isinstance(v, bool) for v in sides):
        raise ConfigError(f"{key}: sides must be integers, got {size!r}")
    h, w = (int(v) for v in sides)
    if h < 1 or w < 1:
        raise ConfigError(f"{key}: sides must be >= 1, got {size!r}")
    return h, w


def hw_json(hw: Sequence[int]) -> int | list[int]:
    """How a size is written in results files and metadata: the side of a square as one int (as before
    non-square inputs existed, so those files stay as they were), else ``[height, width]``."""
    h, w = int(hw[0]), int(hw[1])
    return h if h == w else [h, w]


def hw_text(hw: Sequence[int]) -> str:
    """``(64, 128)`` -> ``"64x128"`` (height x width), ``(256, 256)`` -> ``"256^2"`` (as the protocol text was)."""
    h, w = int(hw[0]), int(hw[1])
    return f"{h}^2" if h == w else f"{h}x{w}"
