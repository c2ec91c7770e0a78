"""Procedural many-category anomaly-detection dataset with planted defects.

Used by ``dpdiff demo``, ``dpdiff scale`` and by tests: it needs no download, is written in the
MVTec-AD layout (readable by :mod:`dpdiff.data.readers.mvtec`) and is deterministic (same ``seed`` -> same
bytes).

Categories are combinations of factors, so several hundred are distinct (not recoloured copies):

* textures: pattern (``stripes``, ``woven``, ``leather``, ``grid`` (perforated metal), ``plates``
  (tread plates), ``wood``, ``marble``, ``tiles``, ``dots``, ``terrazzo``, ``bricks``, ``knurled``)
  x structural variant (three per pattern, :data:`VARIANTS`: e.g. woven plain / twill / basket,
  bricks running / stack / English bond) x colour palette (:data:`PALETTES`) x scale (coarse / fine);
* objects: shape (``nut``, ``chip``, ``washer``, ``gear``, ``screw``, ``capsule``, ``cap``,
  ``bracket``, ``knob``, ``tag``) x material (metal, plastic, rubber, glossy paint, wood) x
  background (dark, light, PCB, cloth) x layout (one, two or four instances) x colour palette.

The first five categories are the original hand-tuned ``synth_stripes``, ``synth_nut``,
``synth_leather``, ``synth_chip``, ``synth_grid`` (the demo uses the first four). Later ones follow a
fixed most-different-first order (:func:`category_specs`): every category differs from every other
in at least two factors (never a recoloured copy), every pattern/shape is used before any is
repeated, and every fourth one is a texture. The order is prefix-stable, so the first N categories
of a larger dataset are exactly the N-category dataset (nested subsets, as the paper's S1 in S2 in
S3); the names and factors do not depend on the seed, the continuous parameters (frequencies, sizes,
angles) do.

Within-class variation: pose (shift, rotation; objects), translation/phase and angle jitter
(textures), light direction, brightness gain, low-frequency illumination and pixel noise. Noise
fields are random crops (offset + flips) of fixed per-size noise banks rather than fresh upsampled
noise: that, windowed defect/object rendering and a minimal PNG writer make generation fast
(``benchmarks/synthetic_speed.py`` measures it).

Defect types (test folders, :data:`DEFECT_TYPES`): ``scratch`` (thin smooth curve of different
intensity), ``hole`` (dark or bright irregular ellipse), ``stain`` (colour-shifted smooth blob),
``missing_part`` (region replaced by the background / substrate), ``foreign_object`` (small patch of
a different texture), ``crack`` (thin jagged branching dark line), ``color_deviation`` (a region
re-coloured in another hue, texture kept) and ``shape_deviation`` (objects: the outline bulges or is
dented; textures: a local swirl of the pattern with bump shading). Defects lie on the object for
object categories and cover 0.3 %-5 % of the image (scratches and cracks 0.1 %-5 %). The mask is
exactly the set of pixels the defect changed: the defect is drawn on the noise-free image, every
pixel of the region is changed by at least :data:`MIN_CHANGE` (in [0, 1] units, on some channel),
then the same noise is added to the clean and the defective image, so pixels outside the mask are
bit-identical to the defect-free rendering (see :func:`render_sample`).

Geometry (``image_size=(height, width)``, ``max_defect_fraction``): images may be wide or tall, as from a
line camera. Coordinates are in units of half the short side, so a wide image shows more of a texture along its
long side and objects keep their size in pixels on a wider background; a defect keeps its size in pixels and so
covers a smaller fraction of a wide image. ``max_defect_fraction`` shrinks every defect so that none covers more
than that fraction of the image (e.g. 0.005: small defects on large images; :func:`defect_area_bounds`). The
defaults (a square, default defect sizes) give the same bytes as before these options existed.

Modules: :mod:`~dpdiff.data.synthetic.categories` (factors, order, parameters),
:mod:`~dpdiff.data.synthetic.scenes` (textures, nut, chip), :mod:`~dpdiff.data.synthetic.objects` (parametric
objects), :mod:`~dpdiff.data.synthetic.defects` (defects, :func:`render_sample`),
:mod:`~dpdiff.data.synthetic.writer` (the dataset on disk); helpers in :mod:`~dpdiff.data.synthetic._common`.
"""

from __future__ import annotations

from dpdiff.data.synthetic.categories import (
    BACKGROUNDS,
    FAMILIES,
    LAYOUTS,
    MATERIALS,
    PALETTES,
    PATTERNS,
    SHAPES,
    VARIANTS,
    CategorySpec,
    category_specs,
)
from dpdiff.data.synthetic.defects import (
    DEFECT_MIN_AREA,
    DEFECT_TYPES,
    MAX_AREA,
    MIN_AREA,
    MIN_CHANGE,
    defect_area_bounds,
    render_sample,
)
from dpdiff.data.synthetic.writer import ensure_synthetic_dataset, generate_synthetic_dataset, read_marker

__all__ = [
    "FAMILIES",
    "PATTERNS",
    "SHAPES",
    "MATERIALS",
    "BACKGROUNDS",
    "LAYOUTS",
    "PALETTES",
    "VARIANTS",
    "DEFECT_TYPES",
    "MIN_CHANGE",
    "MIN_AREA",
    "MAX_AREA",
    "DEFECT_MIN_AREA",
    "CategorySpec",
    "category_specs",
    "render_sample",
    "defect_area_bounds",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "read_marker",
]
