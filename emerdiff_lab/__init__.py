"""emerdiff_lab: EmerDiff (Namekata et al., ICLR 2024) as a composable, Jupyter-first toolkit.

Unsupervised, training-free, image-resolution segmentation from a pretrained Stable Diffusion:
perturb one region of a 16x16 feature map during denoising and see which pixels change.

    import emerdiff_lab as edl
    model = edl.load_model("tiny")          # offline, random weights; or a hub id / folder
    seg = edl.segment(model, "photo.jpg", image_size=256)
    seg.labels                              # (H, W) int64
"""

from .assembly import assemble, gaussian_blur, prepare_maps, upsample_bilinear
from .compilation import compile_model
from .config import EmerDiffConfig
from .features import extract_features, kmeans_masks, mask_embeddings
from .images import PreparedImage, load_image, prepare_image, sample_images
from .inversion import Inversion, invert, reconstruct
from .layers import resolve_layers
from .models import EmerDiffModel, from_pipeline, load_model
from .modulation import (Perturbation, ReferencePass, perturb, pixel_change_maps,
                         record_reference)
from .segmentation import Segmentation, segment
from .toyworld import sample
from .wordmaps import WordMaps, word_heat_maps

__version__ = "0.1.0"

__all__ = [
    "EmerDiffConfig", "EmerDiffModel", "Inversion", "Perturbation", "PreparedImage",
    "Segmentation", "assemble", "compile_model", "extract_features", "from_pipeline",
    "gaussian_blur", "invert", "kmeans_masks", "load_image", "load_model", "mask_embeddings",
    "perturb", "pixel_change_maps", "prepare_image", "prepare_maps", "reconstruct",
    "record_reference", "ReferencePass", "resolve_layers", "sample", "sample_images", "segment",
    "upsample_bilinear", "word_heat_maps", "WordMaps",
]
