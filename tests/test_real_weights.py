"""Checks on real Stable Diffusion weights; skipped unless a model is named.

    EMERDIFF_REAL_MODEL=CompVis/stable-diffusion-v1-4 EMERDIFF_DEVICE=cuda pytest -m real_weights

This project's own environment has no SD weights, so these have not run here.
"""

import os

import numpy as np
import pytest
import torch

import emerdiff_lab as edl
from tolerances import LATENT_REL, assert_close

MODEL = os.environ.get("EMERDIFF_REAL_MODEL")
pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not MODEL, reason="set EMERDIFF_REAL_MODEL to a hub id or "
                                                   "folder with Stable Diffusion weights")]


@pytest.fixture(scope="module")
def real_model():
    return edl.load_model(MODEL, device=os.environ.get("EMERDIFF_DEVICE"),
                          dtype=os.environ.get("EMERDIFF_DTYPE", "float16"))


def test_inversion_is_exact_on_real_weights(real_model):
    image = edl.load_image(edl.sample_images()["chelsea"], size=512)
    cfg = real_model.default_config
    inv = edl.invert(real_model, image, cfg, progress=False)
    # float16 rounds at 1e-3 of the scale per operation; float32 gets the suite's LATENT_REL
    rel = LATENT_REL if real_model.dtype == torch.float32 else 1e-2
    assert_close(edl.reconstruct(real_model, inv), inv.latents, rel=rel, what="latents")


def test_segmentation_is_better_than_chance_on_voc(real_model, voc14):
    """On a few VOC photos EmerDiff scores at least the bilinear baseline of the same masks."""
    from PIL import Image

    from emerdiff_lab.evaluation.metrics import hungarian_miou

    cfg = real_model.default_config
    scores = {"emerdiff": [], "bilinear": []}
    for image_path in sorted((voc14 / "images").glob("*.jpg"))[:4]:
        gt = torch.from_numpy(np.array(Image.open(voc14 / "labels" / f"{image_path.stem}.png")))
        seg = edl.segment(real_model, image_path, cfg, image_size=512, progress=False)
        naive = edl.images.labels_to_original(
            edl.upsample_bilinear(seg.lowres_labels, 512), edl.prepare_image(image_path, 512))
        scores["emerdiff"].append(hungarian_miou(seg.labels, gt).miou)
        scores["bilinear"].append(hungarian_miou(naive, gt).miou)
    print(scores)
    assert sum(scores["emerdiff"]) >= sum(scores["bilinear"])
