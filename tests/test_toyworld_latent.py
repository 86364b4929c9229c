"""ToyWorld-latent: scenes whose colours do not give the class away, the packaged VAE + latent
UNet, layer resolution, segment, and a re-run of part of the recorded evaluation."""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emerdiff_lab.toyworld import scenes256
from emerdiff_lab.toyworld.latent_model import IMAGE_SIZE, WEIGHTS_PATH, load_toyworld_latent

RECORDED = (Path(__file__).resolve().parents[1] / "emerdiff_lab" / "toyworld"
            / "recorded_eval_latent.json")
# Scenes of the recorded table re-run here, and how far each method's mean over them may drift.
# Why not exact: k-means and argmax ties can flip with float reductions on another CPU, BLAS or
# thread count; mIoU is in [0, 1], so 0.03 is 3% of the scale, far below the differences the
# table reports.
CI_SCENES = 1
MIOU_ATOL = 0.03


@pytest.fixture(scope="module")
def model():
    return load_toyworld_latent(device="cpu")


def test_scenes_deterministic_labelled_and_noise_free_variant():
    image, labels = scenes256.generate_scene(5)
    again, again_labels = scenes256.generate_scene(np.random.default_rng(5))
    clean, clean_labels = scenes256.generate_scene(5, clean=True)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert labels.shape == (256, 256) and labels.dtype == np.int64
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, again_labels)
    np.testing.assert_array_equal(labels, clean_labels)
    # The noisy render differs from the clean one by sensor noise only (std 0.01 = 2.55 levels).
    noise = image.astype(float) - clean.astype(float)
    assert 1.5 < noise.std() < 4
    assert scenes256.generate_scene(3, 64)[1].shape == (64, 64)
    with pytest.raises(ValueError):
        scenes256.generate_scene(0, 32)


def test_class_colour_varies_across_scenes():
    """A class's mean colour varies between scenes about as much as the palette does: colour
    does not identify the class (the old 64 px scenes' classes had fixed hues)."""
    images, labels = scenes256.generate_batch(range(24), 64)
    for cls in (scenes256.SKY, scenes256.GRASS, scenes256.WATER):
        means = [images[i][labels[i] == cls].mean(0) for i in range(24)
                 if (labels[i] == cls).sum() > 50]
        assert len(means) >= 5
        # Palette colours are uniform in [0.05, 0.95] (std 66 levels per channel); a mix of two
        # of them has std about 47; a fixed-hue class would be near 15.
        assert np.std(means, axis=0).mean() > 30, scenes256.CLASS_NAMES[cls]


def test_packaged_weights_small_float16_and_load_fast():
    import emerdiff_lab as edl

    assert WEIGHTS_PATH.stat().st_size <= 25_000_000
    tick = time.time()
    loaded = edl.load_model("toyworld-latent", device="cpu")
    assert time.time() - tick < 30  # the issue asks for 5 s on an idle machine; CI is shared
    assert loaded.model_id == "toyworld-latent" and not loaded.random_weights
    assert loaded.vae_scale_factor == 4 and loaded.native_image_size == IMAGE_SIZE == 128
    assert loaded.prompt_embeds("").shape == (1, 77, 32)
    assert edl.load_model("toyworld-64").native_image_size == 64  # the pixel-space model


def test_latents_have_about_unit_variance_and_decode(model):
    image, _ = scenes256.generate_scene(scenes256.HELDOUT_SEED_START + 10_000, IMAGE_SIZE)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    latent = model.encode(pixels)
    assert latent.shape == (1, 4, 32, 32)
    # scaling_factor was measured on 16 validation scenes; one scene's std varies around 1.
    assert 0.5 < float(latent.std()) < 2.0
    decoded = model.decode(latent)
    assert decoded.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    # A reconstruction far closer to the image than the image's own mean colour is (measured
    # L1 0.047 against 0.193; the VAE trained at lr 1e-3 got 0.154, worse than 0.5 x 0.193).
    mean_colour = pixels.mean((2, 3), keepdim=True)
    assert float((decoded - pixels).abs().mean()) < 0.5 * float((pixels - mean_colour).abs().mean())


def test_layers_resolved_by_structure_at_16x16(model):
    import emerdiff_lab as edl

    feature, modulation = edl.resolve_layers(model.unet, IMAGE_SIZE, vae_scale_factor=4)
    assert feature.startswith("up_blocks.1.") and modulation.startswith("up_blocks.1.")
    image, _ = scenes256.generate_scene(11, IMAGE_SIZE)
    features = edl.extract_features(model, image, image_size=IMAGE_SIZE)
    assert features.shape[:2] == (16, 16)


def test_random_control_shares_vae_not_unet(model):
    control = load_toyworld_latent(random_weights=True)
    assert control.random_weights and control.model_id != model.model_id
    assert torch.equal(control.vae.decoder.conv_out.weight, model.vae.decoder.conv_out.weight)
    assert not torch.equal(control.unet.conv_in.weight, model.unet.conv_in.weight)


def test_segment_end_to_end(model):
    import emerdiff_lab as edl

    image, _ = scenes256.generate_scene(123, IMAGE_SIZE)
    cfg = model.default_config.replace(num_masks=3, num_inference_steps=10, modulation_timestep=501)
    seg = edl.segment(model, image, cfg, image_size=IMAGE_SIZE, progress=False)
    assert seg.lowres_labels.shape == (16, 16)
    assert seg.labels.shape == (IMAGE_SIZE,) * 2 and seg.diff_maps.shape[1:] == (IMAGE_SIZE,) * 2
    assert 0 <= int(seg.labels.min()) and int(seg.labels.max()) < seg.num_masks <= 3
    assert seg.diff_maps.max() > 0


@pytest.mark.slow
def test_recorded_evaluation_reproduces(model):
    """Re-runs the first test scene of the model card's table for the trained model and the
    random control, and the model-free baselines."""
    from emerdiff_lab.toyworld.evaluation_latent import evaluate

    record = json.loads(RECORDED.read_text())
    assert record["weights_sha256"] == hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest(), \
        "the packaged weights changed: re-run scripts/eval_toyworld_latent.py table --record"
    control = load_toyworld_latent(random_weights=True, seed=record["control_seed"])
    for name, which in (("trained", model), ("random", control)):
        recorded = record["results"][name]
        cfg = model.default_config.__class__.from_dict(recorded["config"])
        now = evaluate(which, CI_SCENES, cfg, start=recorded["start"],
                       baselines=name == "trained", progress=False)
        # every recorded score: each method's mIoU and, once recorded, its boundary F-scores
        for method, values in recorded["per_image"].items():
            expected = float(np.mean(values[:CI_SCENES]))
            assert abs(float(np.mean(now["per_image"][method])) - expected) <= MIOU_ATOL, \
                (name, method)
