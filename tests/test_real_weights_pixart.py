"""Checks on real PixArt-α / PixArt-Σ weights; skipped unless a model is named.

    EMERDIFF_REAL_PIXART=PixArt-alpha/PixArt-XL-2-1024-MS EMERDIFF_DEVICE=cuda \
        pytest -m real_weights tests/test_real_weights_pixart.py

(or PixArt-alpha/PixArt-XL-2-512x512, PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, or a folder
written by the pipeline's ``save_pretrained``; EMERDIFF_PIXART_SIZE sets the image side,
default the model's native size). The T5-XXL encoder is large (about 9 GB in float16).

The mechanics are tested on the tiny random-weight PixArt (tests/test_pixart.py); whether
EmerDiff's maps mean anything on PixArt, with our choice of block (``num_layers // 2``) and the
offset before the output projection, is what these tests ask. This project's own environment
has no PixArt weights, so they have not run here (docs/architectures.md keeps the two apart).
"""

import os

import numpy as np
import pytest
import torch

import emerdiff_lab as edl
from tolerances import LATENT_REL, assert_close

MODEL = os.environ.get("EMERDIFF_REAL_PIXART")
pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not MODEL, reason="set EMERDIFF_REAL_PIXART to a hub id or "
                                                   "folder with PixArt-α or PixArt-Σ weights")]


@pytest.fixture(scope="module")
def pixart():
    return edl.load_model(MODEL, device=os.environ.get("EMERDIFF_DEVICE"),
                          dtype=os.environ.get("EMERDIFF_DTYPE", "float16"))


@pytest.fixture(scope="module")
def size(pixart):
    return int(os.environ.get("EMERDIFF_PIXART_SIZE", pixart.native_image_size))


def test_pixart_loads_with_its_layers(pixart, size):
    assert pixart.architecture.name in ("pixart-alpha", "pixart-sigma")
    assert pixart.native_image_size in (512, 1024)
    assert edl.resolve_layers(pixart.unet, size) == ("transformer_blocks.14.attn2",) * 2
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    features = edl.extract_features(pixart, image, pixart.default_config)
    assert features.shape == (size // 16, size // 16, 1152) and torch.isfinite(features).all()


def test_inversion_is_exact_on_real_pixart(pixart, size):
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    inv = edl.invert(pixart, image, pixart.default_config, progress=False)
    rel = LATENT_REL if pixart.dtype == torch.float32 else 1e-2
    assert_close(edl.reconstruct(pixart, inv), inv.latents, rel=rel, what="PixArt latents")
    assert torch.isfinite(pixart.decode(inv.latents[-1:])).all()


def test_pixart_segmentation_is_better_than_chance_on_voc(pixart, voc14, size):
    """On a few VOC photos EmerDiff on PixArt scores at least the bilinear upsampling of its
    own low-resolution masks (the open question of docs/architectures.md: does the default
    block, with the offset before ``to_out``, give maps that add anything?)."""
    from PIL import Image

    from emerdiff_lab.evaluation.metrics import hungarian_miou

    cfg = pixart.default_config
    scores = {"emerdiff": [], "bilinear": []}
    for image_path in sorted((voc14 / "images").glob("*.jpg"))[:4]:
        gt = torch.from_numpy(np.array(Image.open(voc14 / "labels" / f"{image_path.stem}.png")))
        seg = edl.segment(pixart, image_path, cfg, image_size=size, progress=False)
        naive = edl.images.labels_to_original(
            edl.upsample_bilinear(seg.lowres_labels, size), edl.prepare_image(image_path, size))
        scores["emerdiff"].append(hungarian_miou(seg.labels, gt).miou)
        scores["bilinear"].append(hungarian_miou(naive, gt).miou)
    print(size, scores)
    assert sum(scores["emerdiff"]) >= sum(scores["bilinear"])
