"""Scales for difference maps, so that maps meant to be compared can be.

A map scaled to its own maximum always looks bright: a sky cell whose largest change is 0.007
looks like a mask whose largest change is 0.23. Where maps are compared they share one scale
(:data:`SHARED_VMAX`, or the largest of the maps on one figure), carry a colour bar, and print
their own largest change; a change too small for the eye (:func:`below_eye`) gets a sentence
saying so and an amplified view (:func:`amplified`).

Units: the difference map is the L2 distance over RGB of pixels in [0, 1], so 0 to sqrt(3).
"""

from __future__ import annotations

import numpy as np
import torch

# The explorer's shared scale: single-cell changes of the trained ToyWorld model at its default
# setting reach 0.05-0.3 (a whole mask up to about 0.5); above it the map saturates.
SHARED_VMAX = 0.25
# Two maps side by side differ visibly when they differ by a few 8-bit grey levels; below three
# levels I+ and I- look the same.
EYE_STEP = 3 / 255


def _max(x) -> float:
    return float(x.max()) if isinstance(x, torch.Tensor) else float(np.max(x))


def below_eye(largest_change: float) -> bool:
    """Whether a change this large is too small to see between two pictures."""
    return largest_change < EYE_STEP


def eye_note(largest_change: float) -> str:
    """One sentence when ``largest_change`` is below what the eye sees, else ""."""
    if not below_eye(largest_change):
        return ""
    return (f"The largest change, {largest_change:.4f}, is {largest_change * 255:.1f} of 255 "
            f"grey levels: I+ and I- look identical to the eye. The difference map and the "
            f"amplified view show it.")


def amplified(plus: torch.Tensor, minus: torch.Tensor, gain: float | None = None):
    """(3, H, W) ``0.5 + gain * (I- - I+)`` clipped to [0, 1], and the gain (default: the one
    that takes the largest channel difference to half the range)."""
    delta = (minus.detach().float().cpu() - plus.detach().float().cpu())
    if gain is None:
        top = float(delta.abs().max())
        gain = 0.5 / top if top > 0 else 1.0
    return (0.5 + gain * delta).clamp(0, 1), float(gain)


def colorbar_html(vmax: float, *, cmap: str = "inferno", label: str = "",
                  css: str = "edl-colorbar", width: int = 180) -> str:
    """A horizontal colour bar from 0 to ``vmax`` as HTML (for an ``ipywidgets.HTML``)."""
    import matplotlib

    stops = matplotlib.colormaps[cmap](np.linspace(0, 1, 9))[:, :3] * 255
    gradient = ", ".join("rgb({:.0f},{:.0f},{:.0f})".format(*s) for s in stops)
    ticks = "".join(f"<span>{v:.3g}</span>" for v in (0.0, vmax / 2, vmax))
    return (f'<div class="{css}" style="width:{width}px;font-size:11px">'
            f'<div style="height:10px;background:linear-gradient(to right, {gradient});'
            f'border:1px solid #555"></div><div style="display:flex;'
            f'justify-content:space-between">{ticks}</div>'
            f'<div style="text-align:center">{label}</div></div>')


def shared_vmax(*maps) -> float:
    """The largest value over ``maps`` (one scale for a figure's panels); 1e-12 at least."""
    return max([_max(m) for m in maps] + [1e-12])
