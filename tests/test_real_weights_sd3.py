"""Checks on real SD3 / SD3.5 weights; skipped unless a model is named.

    EMERDIFF_REAL_SD3=stabilityai/stable-diffusion-3.5-medium EMERDIFF_DEVICE=cuda \
        pytest -m real_weights tests/test_real_weights_sd3.py

(or stabilityai/stable-diffusion-3-medium-diffusers, or a folder written by the pipeline's
``save_pretrained``; the repositories are gated: accept the licence and log in first.
EMERDIFF_SD3_SIZE sets the image side, default 512; EMERDIFF_DTYPE defaults to bfloat16).
T5-XXL alone is about 9 GB in bfloat16; the encoders are released after the empty prompt is
encoded, so that the transformer (4.5 GB for 3.5-medium) and the VAE stay resident.

The mechanics are tested on the tiny random-weight MM-DiT (tests/test_sd3.py); whether
EmerDiff's maps mean anything on SD3.5, with our choice of block (``num_layers // 2``, its joint
attention) and the offset after ``to_out`` on the image tokens, is what these tests ask. This
project's own environment has no SD3 weights, so they have not run here (docs/architectures.md
keeps the two apart).
"""

import os

import numpy as np
import pytest
import torch

import emerdiff_lab as edl
from tolerances import assert_close
from voc_check import emerdiff_and_bilinear_miou, joint_offset_scale

MODEL = os.environ.get("EMERDIFF_REAL_SD3")
pytestmark = [pytest.mark.real_weights,
              pytest.mark.skipif(not MODEL, reason="set EMERDIFF_REAL_SD3 to a hub id (e.g. "
                                                   "stabilityai/stable-diffusion-3.5-medium) or "
                                                   "folder with SD3 / SD3.5 weights")]


@pytest.fixture(scope="module")
def sd3():
    model = edl.load_model(MODEL, device=os.environ.get("EMERDIFF_DEVICE"),
                           dtype=os.environ.get("EMERDIFF_DTYPE", "bfloat16"))
    model.architecture.release_text_encoders(model, prompts=("",))
    return model


@pytest.fixture(scope="module")
def size():
    return int(os.environ.get("EMERDIFF_SD3_SIZE", 512))


def test_sd3_loads_with_its_layers_and_time(sd3, size):
    assert sd3.architecture.name == "sd3" and sd3.native_image_size == 1024
    middle = len(sd3.unet.transformer_blocks) // 2
    assert edl.resolve_layers(sd3.unet, size) == (f"transformer_blocks.{middle}.attn",) * 2
    time = sd3.architecture.modulation_time(sd3, sd3.default_config)
    assert abs(time.snapped_sigma - 0.4384) < 1e-3 and time.steps_left == 11
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    features = edl.extract_features(sd3, image, sd3.default_config)
    width = sd3.unet.config.num_attention_heads * sd3.unet.config.attention_head_dim
    assert features.shape == (size // 16, size // 16, width) and torch.isfinite(features).all()


def test_flow_replay_is_exact_on_real_sd3(sd3, size):
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    inv = edl.invert(sd3, image, sd3.default_config, progress=False)
    rel = 1e-5 if sd3.dtype == torch.float32 else 1e-2
    assert_close(edl.reconstruct(sd3, inv), inv.latents, rel=rel, what="SD3 latents")
    assert torch.isfinite(sd3.decode(inv.latents[-1:])).all()


def test_activation_scale_at_the_modulation_layer(sd3, size):
    """Prints what the offset is added to and the gate that scales it (docs: the AdaLN gate)."""
    layer, rms, gate = joint_offset_scale(sd3, size)
    print(f"{layer}: attention output rms {rms:.4g}, mean |gate_msa| {gate:.4g}")
    assert np.isfinite(rms) and rms > 0 and gate > 0


def test_sd3_segmentation_is_better_than_chance_on_voc(sd3, voc14, size):
    """On a few VOC photos EmerDiff on SD3 scores at least the bilinear upsampling of its own
    low-resolution masks (the open question of docs/architectures.md)."""
    scores = emerdiff_and_bilinear_miou(sd3, voc14, sd3.default_config, size)
    print(size, scores)
    assert sum(scores["emerdiff"]) >= sum(scores["bilinear"])
