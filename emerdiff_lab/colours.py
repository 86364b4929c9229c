"""One colour language for every picture: classes in colours that read as what they are, k-means
masks in colours no class has, and a legend wherever classes are shown.

- **Classes** (ground truth, and masks drawn in the colour of the class they were matched to):
  :data:`CLASS_COLOURS`, ToyWorld's classes in the order of
  :data:`emerdiff_lab.toyworld.CLASS_NAMES` (sky blue, mountain slate, water blue-green, sand
  yellow, grass green, tree dark green, rock grey, house brick, fence wood). Other datasets'
  ids 0-8 take the same colours (they are only distinct colours there); higher ids the VOC
  palette.
- **No class** (a spare mask the matching left over): black, :data:`NO_CLASS_COLOUR`; no mask
  colour is black.
- **Masks** (k-means ids, before any matching): :data:`MASK_COLOURS`, vivid unnatural hues
  (magenta, violet, orange, blue, ...) chosen at least :data:`MIN_MASK_CLASS_DISTANCE` (RGB
  distance) from every class colour, from black and from the explorer's cyan selection, so that
  a picture of masks is never mistaken for a picture of classes. Beyond twelve masks the hues
  repeat, lightened.
"""

from __future__ import annotations

import html

import numpy as np
import torch

CLASS_COLOURS = np.array([
    (120, 190, 240),   # sky: sky blue
    (110, 95, 150),    # mountain: slate
    (20, 140, 150),    # water: blue-green
    (240, 215, 110),   # sand: yellow
    (95, 180, 60),     # grass: green
    (25, 95, 35),      # tree: dark green
    (170, 170, 170),   # rock: grey
    (185, 65, 50),     # house: brick red
    (200, 145, 80),    # fence: wood
], dtype=np.uint8)
NO_CLASS_COLOUR = (0, 0, 0)
SELECTION_COLOUR = (0, 255, 255)  # the explorer's selected cells
MASK_COLOURS = np.array([
    (255, 0, 200),     # magenta
    (140, 0, 255),     # violet
    (255, 130, 0),     # orange
    (0, 80, 255),      # blue
    (255, 255, 0),     # yellow
    (255, 150, 220),   # pink
    (75, 0, 130),      # indigo
    (255, 0, 0),       # red
    (80, 255, 160),    # spring green
    (255, 255, 255),   # white
    (150, 0, 90),      # plum
    (0, 0, 140),       # navy
], dtype=np.uint8)
MIN_MASK_CLASS_DISTANCE = 80


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def class_colours(labels, mapping=None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in the class palette.

    With ``mapping`` ((P,) cluster -> class, -1 unmatched: ``HungarianResult.mapping``, or
    :func:`emerdiff_lab.plotting.matched_mapping`) ``labels`` are cluster ids, each drawn in the
    colour of its class, so that a prediction and its ground truth share colours; unmatched
    clusters are :data:`NO_CLASS_COLOUR`.
    """
    from .io import colorize

    ids = _numpy(labels).astype(np.int64)
    if mapping is not None:
        mapping = np.asarray(mapping, dtype=np.int64)
        if ids.size and ids.max() >= len(mapping):
            raise ValueError(f"labels go up to {ids.max()} but the mapping has {len(mapping)} "
                             f"entries")
        ids = mapping[ids]
    out = colorize(np.where(ids >= 0, ids, 0))
    known = (ids >= 0) & (ids < len(CLASS_COLOURS))
    out[known] = CLASS_COLOURS[ids[known]]
    out[ids < 0] = NO_CLASS_COLOUR
    return out


def mask_colour(index: int) -> tuple[int, int, int]:
    """The colour of k-means mask ``index``: :data:`MASK_COLOURS`, lightened on each lap."""
    base = MASK_COLOURS[index % len(MASK_COLOURS)].astype(np.float64)
    lap = index // len(MASK_COLOURS)
    mixed = base + (255 - base) * min(0.6, 0.3 * lap)
    return tuple(int(round(c)) for c in mixed)


def mask_colours(masks) -> np.ndarray:
    """(h, w) k-means mask ids -> (h, w, 3) uint8 in the mask palette."""
    ids = _numpy(masks).astype(np.int64)
    table = np.array([mask_colour(i) for i in range(int(ids.max(initial=0)) + 1)],
                     dtype=np.uint8)
    return table[ids]


def class_entries(ids, names=None, *, unmatched: bool = False) -> list[tuple[str, tuple]]:
    """Legend entries (name, rgb) for the class ``ids`` (in order), ``names`` indexed by id
    (None: "class i"), plus "no class" when ``unmatched``."""
    entries = []
    for i in sorted({int(i) for i in ids if 0 <= int(i) < 255}):
        name = names[i] if names is not None and i < len(names) else f"class {i}"
        entries.append((name, tuple(int(c) for c in class_colours(np.array([[i]]))[0, 0])))
    if unmatched:
        entries.append(("no class (unmatched mask)", NO_CLASS_COLOUR))
    return entries


def mask_entries(count: int) -> list[tuple[str, tuple]]:
    return [(f"mask {i}", mask_colour(i)) for i in range(count)]


def legend_html(entries, *, title: str = "", css: str = "edl-legend",
                selected: str | None = None) -> str:
    """A row of swatches with their names, for an ``ipywidgets.HTML`` (``selected``: the
    entry drawn with a frame)."""
    items = []
    for name, rgb in entries:
        frame = "2px solid #00bcd4" if name == selected else "1px solid #555"
        items.append(
            f'<span class="edl-swatch" style="display:inline-flex;align-items:center;'
            f'margin:0 8px 2px 0;white-space:nowrap"><span style="display:inline-block;'
            f'width:12px;height:12px;background:{_hex(rgb)};border:{frame};margin-right:3px">'
            f'</span>{html.escape(name)}</span>')
    head = f"<b>{html.escape(title)}</b> " if title else ""
    return f'<div class="{css}" style="line-height:1.4;font-size:12px">{head}{"".join(items)}</div>'


def add_legend(target, entries, *, title: str | None = None, ncol: int | None = None,
               **kwargs):
    """A matplotlib legend of coloured patches on ``target`` (axes or figure)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(rgb) / 255, edgecolor="0.3", label=name)
               for name, rgb in entries]
    options = {"fontsize": 8, "title": title, "title_fontsize": 8, "frameon": False,
               "ncol": ncol or min(len(handles), 5)} | kwargs
    return target.legend(handles=handles, **options)
