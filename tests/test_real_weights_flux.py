"""Checks on real FLUX.1-dev weights; skipped unless a model is named.

    EMERDIFF_REAL_FLUX=black-forest-labs/FLUX.1-dev EMERDIFF_DEVICE=cuda \
        pytest -m real_weights tests/test_real_weights_flux.py

(or a folder written by ``FluxPipeline.save_pretrained``; the repository is gated: accept the
licence and log in first. EMERDIFF_FLUX_SIZE sets the image side, default 512; EMERDIFF_DTYPE
defaults to bfloat16; EMERDIFF_FLUX_OFFLOAD=model or sequential loads with diffusers' CPU
offload, for GPUs under about 40 GB: docs/architectures.md, "FLUX.1: memory"). FLUX.1-schnell
is not the model these tests are for: it is timestep-distilled to 1-4 steps (docs).

The mechanics are tested on the tiny random-weight model (tests/test_flux.py); whether
EmerDiff's maps mean anything on FLUX.1-dev, with our default block (double-stream block
``num_layers // 2``) and the offset after ``to_out`` on the image tokens, is what these tests
ask. This project's own environment has no FLUX weights and no GPU, so they have not run here.
"""

import os

import numpy as np
import pytest
import torch

import emerdiff_lab as edl
from tolerances import assert_close
from voc_check import emerdiff_and_bilinear_miou, joint_offset_scale

MODEL = os.environ.get("EMERDIFF_REAL_FLUX")
pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not MODEL, reason="set EMERDIFF_REAL_FLUX to a hub id (e.g. "
                                                   "black-forest-labs/FLUX.1-dev) or folder "
                                                   "with FLUX.1 weights")]


@pytest.fixture(scope="module")
def flux():
    model = edl.load_model(MODEL, device=os.environ.get("EMERDIFF_DEVICE"),
                           dtype=os.environ.get("EMERDIFF_DTYPE", "bfloat16"),
                           offload=os.environ.get("EMERDIFF_FLUX_OFFLOAD") or None)
    model.architecture.release_text_encoders(model, prompts=("",))
    return model


@pytest.fixture(scope="module")
def size():
    return int(os.environ.get("EMERDIFF_FLUX_SIZE", 512))


def test_flux_loads_with_its_layers_guidance_and_time(flux, size):
    assert flux.architecture.name == "flux" and flux.native_image_size == 1024
    assert flux.unet.config.guidance_embeds, "these tests are for FLUX.1-dev (see docstring)"
    assert flux.architecture.guidance == 3.5 and flux.architecture.max_sequence_length == 512
    assert edl.resolve_layers(flux.unet, size) == ("transformer_blocks.9.attn",) * 2
    time = flux.architecture.modulation_time(flux, flux.default_config, image_size=size)
    expected = {512: (0.4459, 15), 1024: (0.4412, 10)}.get(size)
    if expected is not None:
        assert abs(time.snapped_sigma - expected[0]) < 1e-3 and time.steps_left == expected[1]
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    features = edl.extract_features(flux, image, flux.default_config)
    assert features.shape == (size // 16, size // 16, 3072) and torch.isfinite(features).all()


def test_flow_replay_is_exact_on_real_flux(flux, size):
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    inv = edl.invert(flux, image, flux.default_config, progress=False)
    rel = 1e-5 if flux.dtype == torch.float32 else 1e-2
    assert_close(edl.reconstruct(flux, inv), inv.latents, rel=rel, what="FLUX latents")
    assert torch.isfinite(flux.decode(inv.latents[-1:])).all()


def test_activation_scale_at_the_modulation_layer(flux, size):
    """Prints what the offset is added to and the gate that scales it (docs: the AdaLN gate)."""
    layer, rms, gate = joint_offset_scale(flux, size)
    print(f"{layer}: attention output rms {rms:.4g}, mean |gate_msa| {gate:.4g}")
    assert np.isfinite(rms) and rms > 0 and gate > 0


def test_flux_segmentation_is_better_than_chance_on_voc(flux, voc14, size):
    """On a few VOC photos EmerDiff on FLUX.1-dev scores at least the bilinear upsampling of
    its own low-resolution masks (the open question of docs/architectures.md)."""
    scores = emerdiff_and_bilinear_miou(flux, voc14, flux.default_config, size)
    print(size, scores)
    assert sum(scores["emerdiff"]) >= sum(scores["bilinear"])
