"""``segment`` hands back what it computed, and accepts it again: one path from image to numbers."""

import torch

import emerdiff_lab as edl


def test_intermediates_reproduce_the_result_and_are_reusable(tiny_model):
    cfg = tiny_model.default_config.replace(num_masks=3, num_inference_steps=10,
                                            modulation_timestep=201, blur_sigma=1.0)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    seg = edl.segment(tiny_model, image, cfg, image_size=64, progress=False,
                      keep_intermediates=True)
    steps = seg.intermediates
    assert steps.features.shape[:2] == seg.lowres_labels.shape
    assert steps.raw_maps.shape == seg.diff_maps.shape and steps.pixels.shape == (3, 64, 64)
    # the labels are the argmax of the stored raw maps after the configured post-processing
    assert torch.equal(edl.assemble(steps.raw_maps, cfg.blur_sigma, cfg.normalize_maps),
                       seg.model_labels)
    # precomputed features and inversion give the same result without recomputing them
    again = edl.segment(tiny_model, image, cfg, image_size=64, progress=False,
                        features=steps.features, inversion=steps.inversion)
    assert torch.equal(again.model_labels, seg.model_labels)
    assert again.intermediates is None
    assert edl.segment(tiny_model, image, cfg, image_size=64, progress=False).intermediates is None


def test_saved_results_leave_intermediates_out(tiny_model, tmp_path):
    cfg = tiny_model.default_config.replace(num_masks=2, num_inference_steps=10,
                                            modulation_timestep=201, blur_sigma=1.0)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    seg = edl.segment(tiny_model, image, cfg, image_size=64, progress=False,
                      keep_intermediates=True)
    loaded = edl.Segmentation.load(seg.save(tmp_path / "result"))
    assert loaded.intermediates is None and torch.equal(loaded.labels, seg.labels)
