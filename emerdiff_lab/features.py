"""Stage 1: low-resolution semantic features, their k-means masks and the masks' embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .config import EmerDiffConfig
from .core import EmerDiffModel
from .finite import check_finite, overflow_cause
from .images import model_pixels
from .inversion import unet_predict
from .layers import check_image_size, validate_layer
from .processors import AttentionControl, installed_processors


def layer_names(model: EmerDiffModel, cfg: EmerDiffConfig, image_size: int) -> tuple[str, str]:
    """``(feature_layer, modulation_layer)`` of ``cfg``; where None, the model architecture's
    default layers (by structure; see :func:`emerdiff_lab.resolve_layers`)."""
    feature_default, modulation_default = model.architecture.default_layers(model, image_size)
    feature = cfg.feature_layer or feature_default
    modulation = cfg.modulation_layer or modulation_default
    validate_layer(model.unet, feature, argument="feature_layer")
    validate_layer(model.unet, modulation, argument="modulation_layer")
    return feature, modulation


@torch.no_grad()
def extract_features(model: EmerDiffModel, image, cfg: EmerDiffConfig | None = None, *,
                     image_size: int | None = None,
                     latent: torch.Tensor | None = None) -> torch.Tensor:
    """Query vectors of the feature layer for ``image`` noised to ``cfg.feature_timestep``.

    One UNet call with ``cfg.prompt`` (no guidance); the noise is seeded with ``cfg.seed``.
    ``latent`` (C, h, w), the image's ``model.encode`` output if already computed, saves one
    VAE encode.

    Returns:
        (h, w, C) float32 on the model's device; (16, 16, 1280) for SD 1.x at 512 px, the patch
        grid (32, 32, 1152) for PixArt at 512 px, the image tokens' queries (32, 32, 1536) for
        SD3.5-medium at 512 px.
    """
    cfg = cfg or model.default_config
    pixels = model_pixels(image, image_size, model.native_image_size)
    size = pixels.shape[-1]
    check_image_size(model.unet, size, model.vae_scale_factor,
                     geometry=model.architecture.geometry(model))
    if not 0 <= cfg.feature_timestep < model.scheduler.config.num_train_timesteps:
        raise ValueError(f"feature_timestep must lie in [0, "
                         f"{model.scheduler.config.num_train_timesteps}), got "
                         f"{cfg.feature_timestep}")
    feature_layer, _ = layer_names(model, cfg, size)
    x0 = model.encode(pixels[None]) if latent is None else latent[None].to(model.device).float()
    generator = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    # DDPM: the scheduler's add_noise at t_f; flow: (1 - sigma) x0 + sigma eps at t_f's sigma
    noisy, t = model.architecture.feature_input(model, x0, noise, cfg)
    control = AttentionControl(capture_layers=frozenset({feature_layer}))
    with installed_processors(model.unet, [feature_layer], control):
        unet_predict(model, noisy, t, model.condition(cfg.prompt))
    query = control.captured[feature_layer][0].float()        # (tokens, C)
    check_finite(query, f"the features at {feature_layer}",
                 overflow_cause(model.dtype, "the UNet (or the VAE encoder)"))
    latent_h, latent_w = x0.shape[-2:]
    stride = model.architecture.geometry(model).layer_downsample(feature_layer)
    return query.reshape(latent_h // stride, latent_w // stride, -1)


def kmeans_masks(features: torch.Tensor, k: int = 30, seed: int = 0,
                 normalization: str = "l2", n_init: int = 10) -> torch.Tensor:
    """k-means of the (h, w, C) feature vectors into at most ``k`` low-resolution masks.

    Args:
        features: (h, w, C) features from :func:`extract_features`.
        k: number of clusters; must not exceed h * w.
        seed: scikit-learn's ``random_state``.
        normalization: "l2" (our default) normalises each vector first; "none" does not.
        n_init: k-means restarts (scikit-learn's ``n_init``).

    Returns:
        (h, w) int64 labels in [0, k'), k' <= k. Where the features hold fewer than ``k``
        distinct vectors (a uniform image), empty clusters are dropped and labels renumbered:
        ``labels.max() + 1`` is the number of masks found, not an error.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        raise ValueError(f"features must be a (h, w, C) tensor, got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    h, w, _ = features.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h * w:
        raise ValueError(f"num_masks (k) must be an integer in [1, {h * w}] for a {h}x{w} feature "
                         f"map, got {k!r}")
    if normalization not in ("l2", "none"):
        raise ValueError(f"normalization must be 'l2' or 'none', got {normalization!r}")
    vectors = features.reshape(h * w, -1).float()
    if normalization == "l2":
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    data = vectors.cpu().double().numpy()
    with warnings.catch_warnings():
        # Fewer distinct points than clusters is reported through the result, not a warning.
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(data)
    _, compact = np.unique(labels, return_inverse=True)
    return torch.from_numpy(compact.reshape(h, w).astype(np.int64))


def mask_embeddings(features: torch.Tensor, lowres_labels: torch.Tensor) -> torch.Tensor:
    """Mean feature inside each mask: (h, w, C), (h, w) labels in [0, K) -> (K, C) float32."""
    if features.shape[:2] != lowres_labels.shape:
        raise ValueError(f"features {tuple(features.shape)} and labels "
                         f"{tuple(lowres_labels.shape)} must share (h, w)")
    flat = features.reshape(-1, features.shape[-1]).float()
    labels = lowres_labels.reshape(-1).to(flat.device)
    count = int(labels.max()) + 1
    sums = torch.zeros(count, flat.shape[1], device=flat.device).index_add_(0, labels, flat)
    sizes = torch.bincount(labels, minlength=count).clamp(min=1).unsqueeze(1)
    return sums / sizes
