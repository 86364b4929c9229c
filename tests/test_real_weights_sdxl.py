"""Checks on real SDXL weights; skipped unless a model is named.

    EMERDIFF_REAL_SDXL=stabilityai/stable-diffusion-xl-base-1.0 EMERDIFF_DEVICE=cuda \
        pytest -m real_weights tests/test_real_weights_sdxl.py

The mechanics are tested on the tiny random-weight SDXL (tests/test_architectures.py); whether
EmerDiff's maps mean anything on SDXL is what these tests ask. This project's own environment
has no SDXL weights, so they have not run here (docs/architectures.md keeps the two apart).
"""

import os

import numpy as np
import pytest
import torch

import emerdiff_lab as edl
from tolerances import LATENT_REL, assert_close

MODEL = os.environ.get("EMERDIFF_REAL_SDXL")
pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not MODEL, reason="set EMERDIFF_REAL_SDXL to a hub id or folder "
                                                   "with SDXL weights")]


@pytest.fixture(scope="module")
def sdxl():
    return edl.load_model(MODEL, device=os.environ.get("EMERDIFF_DEVICE"),
                          dtype=os.environ.get("EMERDIFF_DTYPE", "float16"))


def test_sdxl_loads_with_its_layers(sdxl):
    assert sdxl.architecture.name == "sdxl" and sdxl.native_image_size == 1024
    assert edl.resolve_layers(sdxl.unet, 1024) == (
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2")
    image = edl.load_image(edl.sample_images()["chelsea"], size=1024)
    features = edl.extract_features(sdxl, image, sdxl.default_config)
    assert features.shape == (32, 32, 1280) and torch.isfinite(features).all()


def test_inversion_is_exact_on_real_sdxl(sdxl):
    image = edl.load_image(edl.sample_images()["chelsea"], size=1024)
    inv = edl.invert(sdxl, image, sdxl.default_config, progress=False)
    rel = LATENT_REL if sdxl.dtype == torch.float32 else 1e-2
    assert_close(edl.reconstruct(sdxl, inv), inv.latents, rel=rel, what="SDXL latents")
    # the float32 VAE (force_upcast) decodes without overflow
    assert torch.isfinite(sdxl.decode(inv.latents[-1:])).all()


@pytest.mark.parametrize("size", [1024, 512])
def test_sdxl_segmentation_is_better_than_chance_on_voc(sdxl, voc14, size):
    """On a few VOC photos EmerDiff on SDXL scores at least the bilinear upsampling of its own
    low-resolution masks, at the native 1024 px and at 512 px."""
    from PIL import Image

    from emerdiff_lab.evaluation.metrics import hungarian_miou

    cfg = sdxl.default_config
    scores = {"emerdiff": [], "bilinear": []}
    for image_path in sorted((voc14 / "images").glob("*.jpg"))[:4]:
        gt = torch.from_numpy(np.array(Image.open(voc14 / "labels" / f"{image_path.stem}.png")))
        seg = edl.segment(sdxl, image_path, cfg, image_size=size, progress=False)
        naive = edl.images.labels_to_original(
            edl.upsample_bilinear(seg.lowres_labels, size), edl.prepare_image(image_path, size))
        scores["emerdiff"].append(hungarian_miou(seg.labels, gt).miou)
        scores["bilinear"].append(hungarian_miou(naive, gt).miou)
    print(size, scores)
    assert sum(scores["emerdiff"]) >= sum(scores["bilinear"])
