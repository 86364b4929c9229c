"""Segmentations to compare EmerDiff with: its own k-means masks brought to image resolution
without the diffusion model (nearest, bilinear), and k-means of colours (no model at all).

All take and return plain tensors: label maps (h, w) or (S, S) int64, images (3, S, S) float in
[0, 1]. On scenes whose classes differ in colour, the colour baselines are the bar a feature-based
method has to clear.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .assembly import upsample_bilinear
from .features import kmeans_masks

__all__ = ["cell_colour_kmeans", "nearest_upsample", "pixel_colour_kmeans", "upsample_bilinear"]


def nearest_upsample(lowres: torch.Tensor, size: int) -> torch.Tensor:
    """(h, w) int64 labels -> (size, size) int64 by nearest neighbour (each cell a block): the
    k-means masks themselves, at image resolution."""
    if lowres.ndim != 2:
        raise ValueError(f"lowres must be (h, w) labels, got shape {tuple(lowres.shape)}")
    return F.interpolate(lowres[None, None].float(), size=(size, size),
                         mode="nearest")[0, 0].long()


def _check_image(pixels: torch.Tensor) -> None:
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"pixels must be a (3, S, S) image in [0, 1], got shape "
                         f"{tuple(pixels.shape)}")


def pixel_colour_kmeans(pixels: torch.Tensor, k: int, seed: int = 0,
                        fit_pixels: int = 8192) -> torch.Tensor:
    """(3, S, S) in [0, 1] -> (S, S) int64: k-means (scikit-learn) of the pixels' RGB colours,
    fitted on at most ``fit_pixels`` seeded random pixels (for speed) and applied to all."""
    from sklearn.cluster import KMeans

    _check_image(pixels)
    data = pixels.detach().cpu().permute(1, 2, 0).reshape(-1, 3).double().numpy()
    rng = np.random.default_rng(seed)
    sample = data[rng.choice(len(data), min(fit_pixels, len(data)), replace=False)]
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(sample)
    return torch.from_numpy(km.predict(data).reshape(pixels.shape[1:]).astype(np.int64))


def cell_colour_kmeans(pixels: torch.Tensor, grid: int, k: int, seed: int = 0) -> torch.Tensor:
    """(3, S, S) -> (S, S) int64: k-means of each cell's mean colour on a ``grid`` x ``grid``
    grid (the feature grid), nearest-upsampled: the colour-only counterpart of the k-means
    masks."""
    _check_image(pixels)
    size = pixels.shape[-1]
    if size % grid:
        raise ValueError(f"image side {size} is not a multiple of the grid {grid}")
    cells = F.avg_pool2d(pixels[None].cpu().float(), size // grid)[0].permute(1, 2, 0)
    return nearest_upsample(kmeans_masks(cells, k=k, seed=seed, normalization="none"), size)
