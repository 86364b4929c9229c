"""From pixel-change maps to labels, and the paper's naive baseline (bilinear upsampling)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (K, H, W) maps; ``sigma`` in pixels (0 returns a copy).

    The kernel reaches 3 sigma each side; borders are reflected so that edges are not darkened.
    """
    maps = _check_maps(maps).float()
    if sigma == 0:
        return maps.clone()
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0 pixels, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, min(maps.shape[-2:]) - 1) if min(maps.shape[-2:]) > 1 else 0
    if radius == 0:
        return maps.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]                                               # (K, 1, H, W)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def prepare_maps(maps: torch.Tensor, blur_sigma: float = 4.0,
                 normalize: bool = False) -> torch.Tensor:
    """The maps the argmax compares: blurred, and optionally each divided by its own maximum.

    Args:
        maps: (K, H, W) raw pixel-change maps.
        blur_sigma: Gaussian sigma in pixels (0: no blur).
        normalize: divide each map by its maximum (our ablation option; off in the paper).

    Returns:
        (K, H, W) float32.
    """
    maps = gaussian_blur(maps, blur_sigma)
    if normalize:
        maps = maps / maps.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return maps


def assemble(maps: torch.Tensor, blur_sigma: float = 4.0, normalize: bool = False) -> torch.Tensor:
    """Labels from pixel-change maps: each pixel goes to the mask that changes it most.

    Args:
        maps: (K, H, W) raw pixel-change maps from :func:`emerdiff_lab.pixel_change_maps`.
        blur_sigma, normalize: see :func:`prepare_maps`.

    Returns:
        (H, W) int64 in [0, K). Ties go to the lowest mask index.
    """
    return prepare_maps(maps, blur_sigma, normalize).argmax(dim=0)


def upsample_bilinear(lowres_labels: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The paper's naive "SD" baseline: k-means masks upsampled bilinearly to image resolution.

    Each mask's one-hot map is upsampled bilinearly and every pixel takes the mask with the
    largest upsampled value.

    Args:
        lowres_labels: (h, w) int64 in [0, K).
        size: output side, or (H, W).

    Returns:
        (H, W) int64 in [0, K).
    """
    if not isinstance(lowres_labels, torch.Tensor) or lowres_labels.ndim != 2:
        raise ValueError(f"lowres_labels must be an (h, w) integer tensor, got "
                         f"{getattr(lowres_labels, 'shape', type(lowres_labels).__name__)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    num_masks = int(lowres_labels.max()) + 1
    one_hot = F.one_hot(lowres_labels.long(), num_masks).permute(2, 0, 1).float()
    upsampled = F.interpolate(one_hot[None], size=size, mode="bilinear", align_corners=False)[0]
    return upsampled.argmax(dim=0)


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"maps must be a (K, H, W) tensor with K >= 1, got "
                         f"{getattr(maps, 'shape', type(maps).__name__)}")
    return maps
