"""ToyWorld: scene generator, packaged model, sampler, and a small re-run of the recorded
evaluation."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emerdiff_lab.toyworld import (
    CLASS_NAMES,
    NUM_CLASSES,
    generate_batch,
    generate_scene,
    load_toyworld,
    sample,
)
from emerdiff_lab.toyworld.model import WEIGHTS_PATH
from tolerances import LATENT_REL, assert_close

RECORDED = Path(__file__).resolve().parents[1] / "emerdiff_lab" / "toyworld" / "recorded_eval.json"
# Scenes of the recorded table re-run here, and how far their mean may drift from the record.
# Why not exact: k-means and argmax ties can flip with float reductions on another CPU/BLAS.
CI_SCENES = 2
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def toyworld():
    return load_toyworld(device="cpu")


def test_channels_last_on_cpu_predicts_what_the_contiguous_layout_predicts(toyworld):
    """ToyWorld's loader stores the UNet channels-last on a CPU (faster there, BENCHMARKS.md);
    the prediction must be the contiguous layout's up to the reduction order."""
    unet = toyworld.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    latents = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    embeds = toyworld.prompt_embeds("").expand(3, -1, -1)
    with torch.no_grad():
        nhwc = unet(latents, 481, encoder_hidden_states=embeds).sample
        unet.to(memory_format=torch.contiguous_format)
        try:
            nchw = unet(latents, 481, encoder_hidden_states=embeds).sample
        finally:
            unet.to(memory_format=torch.channels_last)
    assert_close(nhwc, nchw, rel=LATENT_REL, what="noise prediction")


def test_scene_is_deterministic_and_exactly_labelled():
    image, labels = generate_scene(7)
    again_image, again_labels = generate_scene(np.random.default_rng(7))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert labels.shape == (64, 64) and labels.dtype == np.int64
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(generate_scene(8)[0], image)
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    for size in (32, 128):
        assert generate_scene(3, size)[1].shape == (size, size)


@pytest.mark.parametrize("bad", [{"seed_or_rng": -1}, {"seed_or_rng": "a"},
                                 {"seed_or_rng": 1.5}, {"seed_or_rng": 0, "size": 50}])
def test_scene_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        generate_scene(**bad)


def test_every_class_appears_textured_and_boundaries_cut_cells():
    images, labels = generate_batch(range(60))
    brightness = images.astype(float).mean(-1)
    for cls, name in enumerate(CLASS_NAMES):
        assert (labels == cls).sum() > 200, f"class {name} almost never appears"
        # A texture, not a flat colour: brightness varies inside one region of one scene
        # (pixel noise alone gives a standard deviation of about 3).
        spreads = [brightness[i][labels[i] == cls].std() for i in range(len(images))
                   if (labels[i] == cls).sum() >= 30]
        assert np.median(spreads) > 6, f"class {name} is not textured"
    # Boundaries cross the 4x4-pixel cells of the 16x16 feature map (not aligned to the grid).
    cells = labels.reshape(60, 16, 4, 16, 4).transpose(0, 1, 3, 2, 4).reshape(60, 256, 16)
    mixed = (cells.min(-1) != cells.max(-1)).mean()
    assert mixed > 0.15


def test_packaged_weights_small_float16_and_load_fast():
    from safetensors import safe_open

    assert WEIGHTS_PATH.stat().st_size <= 8_000_000
    with safe_open(WEIGHTS_PATH, "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is no dict) == {"F16"}
    import emerdiff_lab as edl

    tick = time.time()
    model = edl.load_model("toyworld", device="cpu")
    assert time.time() - tick < 30
    assert model.vae is None and model.vae_scale_factor == 1 and not model.random_weights
    assert model.model_id == "toyworld"
    assert model.prompt_embeds("").shape == (1, 77, 32)
    with pytest.raises(ValueError, match="unconditional"):
        model.prompt_embeds("a house")


def test_random_control_has_other_weights_same_architecture(toyworld):
    control = load_toyworld(random_weights=True)
    assert control.random_weights and control.model_id != toyworld.model_id
    trained = dict(toyworld.unet.named_parameters())
    for name, param in control.unet.named_parameters():
        assert param.shape == trained[name].shape
    assert not torch.equal(control.unet.conv_in.weight, toyworld.unet.conv_in.weight)


def test_segment_runs_at_16x16(toyworld):
    import emerdiff_lab as edl

    image, _ = generate_scene(123)
    cfg = toyworld.default_config.replace(num_masks=3)
    seg = edl.segment(toyworld, image, cfg, image_size=64, progress=False)
    assert seg.lowres_labels.shape == (16, 16)
    assert seg.labels.shape == (64, 64) and seg.diff_maps.shape[1:] == (64, 64)
    assert 0 <= int(seg.labels.min()) and int(seg.labels.max()) < seg.num_masks <= 3
    assert seg.diff_maps.max() > 0


def test_sample_shape_range_and_seed(toyworld):
    first = sample(toyworld, 2, seed=1, num_inference_steps=5, progress=False)
    again = sample(toyworld, 2, seed=1, num_inference_steps=5, progress=False)
    assert first.shape == (2, 3, 64, 64) and 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, again)
    with pytest.raises(ValueError):
        sample(toyworld, 0)


@pytest.mark.slow
def test_recorded_evaluation_reproduces(toyworld):
    """Re-runs the first scenes of the model card's table for both models."""
    from emerdiff_lab.toyworld.evaluation import METHODS, evaluate

    record = json.loads(RECORDED.read_text())
    import hashlib

    assert record["weights_sha256"] == hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest(), \
        "the packaged weights changed: re-run scripts/eval_toyworld.py table --record"
    control = load_toyworld(random_weights=True, seed=record["control_seed"])
    for name, model in (("trained", toyworld), ("random", control)):
        recorded = record["results"][name]
        cfg = toyworld.default_config.__class__.from_dict(recorded["config"])
        now = evaluate(model, CI_SCENES, cfg, start=recorded["start"], progress=False)
        for method in METHODS:
            expected = float(np.mean(recorded["per_image"][method][:CI_SCENES]))
            assert abs(now["mean"][method] - expected) <= TOLERANCE, (name, method)


def test_choose_setting_takes_the_best_edges_among_near_ties_in_miou():
    from emerdiff_lab.toyworld.evaluation import choose_setting

    table = {"naive": {"miou": [0.9, 0.9], "bf2": [1.0, 1.0]},         # never a candidate
             "sharp": {"miou": [0.50, 0.51], "bf2": [0.60, 0.62]},     # 0.005 below the best
             "best_miou": {"miou": [0.51, 0.52], "bf2": [0.40, 0.40]},
             "sharper_but_worse": {"miou": [0.40, 0.40], "bf2": [0.90, 0.90]}}
    assert choose_setting(table) == "sharp"
    assert choose_setting(table, margin=0.0) == "best_miou"
    assert choose_setting(table, margin=0.2) == "sharper_but_worse"
    assert choose_setting(table, ["best_miou", "sharper_but_worse"]) == "best_miou"
