"""Writing segmentations as images: palette label PNGs and overlays on the photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def label_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (num_colors, 3) uint8, distinct colours for small ids."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colorize(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 RGB with the VOC palette (ids mod 256)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return label_palette()[labels.astype(np.int64) % 256]


def save_label_png(labels: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Writes (H, W) labels in [0, 256) as a palette PNG (pixel value = label id)."""
    from PIL import Image

    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"labels must be (H, W) with ids in [0, 255], got shape {labels.shape} "
                         f"range [{labels.min()}, {labels.max()}]")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(label_palette().reshape(-1).tolist())
    path = Path(path)
    image.save(path)
    return path


def overlay(photo, labels: torch.Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Labels blended over a photo of the same (H, W): (H, W, 3) uint8."""
    photo = np.asarray(photo.convert("RGB") if hasattr(photo, "convert") else photo)
    if photo.dtype != np.uint8:
        photo = (np.clip(photo, 0, 1) * 255).round().astype(np.uint8)
    colors = colorize(labels)
    if colors.shape != photo.shape:
        raise ValueError(f"photo {photo.shape} and labels {colors.shape[:2]} differ in size")
    return (photo * (1 - alpha) + colors * alpha).round().astype(np.uint8)


def save_overlay_png(photo, labels, path: str | Path, alpha: float = 0.5) -> Path:
    """Writes :func:`overlay` of ``labels`` on ``photo`` as an RGB PNG."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(overlay(photo, labels, alpha)).save(path)
    return path
