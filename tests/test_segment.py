"""segment end to end on the tiny model: shapes, determinism, original size, uniform images,
saving with provenance, and the naive baseline."""

import numpy as np
import pytest
import torch

import emerdiff_lab as edl
from tolerances import assert_decoded_close


def test_every_step_shapes_and_dtypes(tiny_model, small_cfg, image128):
    feats = edl.extract_features(tiny_model, image128, small_cfg)
    assert feats.shape == (4, 4, 64) and feats.dtype == torch.float32
    lowres = edl.kmeans_masks(feats, k=4, seed=0)
    assert lowres.shape == (4, 4) and lowres.dtype == torch.int64
    assert set(lowres.unique().tolist()) == {0, 1, 2, 3}
    inv = edl.invert(tiny_model, image128, small_cfg, progress=False)
    maps = edl.pixel_change_maps(tiny_model, inv, lowres, small_cfg, progress=False)
    assert maps.shape == (4, 128, 128) and maps.dtype == torch.float32
    labels = edl.assemble(maps, blur_sigma=small_cfg.blur_sigma)
    assert labels.shape == (128, 128) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < 4
    naive = edl.upsample_bilinear(lowres, 128)
    assert naive.shape == (128, 128) and torch.equal(naive[16::32, 16::32], lowres)  # cell centres


def test_segment_result(tiny_model, small_cfg, image128):
    seg = edl.segment(tiny_model, image128, small_cfg, image_size=128, progress=False)
    assert seg.labels.shape == (128, 128) and seg.labels.dtype == torch.int64
    assert seg.lowres_labels.shape == (4, 4)
    assert seg.diff_maps.shape == (seg.num_masks, 128, 128)
    assert seg.mask_embeddings.shape == (seg.num_masks, 64)
    assert torch.equal(seg.model_labels, seg.diff_maps.argmax(0))
    assert seg.random_weights and any("random weights" in note for note in seg.notes)
    assert seg.provenance["model_id"] == "tiny"


def test_same_seed_same_labels(tiny_model, small_cfg, image128):
    first = edl.segment(tiny_model, image128, small_cfg, image_size=128, progress=False)
    second = edl.segment(tiny_model, image128, small_cfg, image_size=128, progress=False)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.diff_maps, second.diff_maps)


def test_labels_come_back_at_the_original_size(tiny_model, small_cfg):
    photo = (np.random.default_rng(2).random((90, 150, 3)) * 255).astype(np.uint8)
    seg = edl.segment(tiny_model, photo, small_cfg, image_size=128, progress=False)
    assert seg.labels.shape == (90, 150)
    assert seg.model_labels.shape == (128, 128)
    at_model = edl.segment(tiny_model, photo, small_cfg, image_size=128, original_size=False,
                           progress=False)
    assert at_model.labels.shape == (128, 128)


def test_kmeans_on_few_distinct_features_drops_empty_clusters():
    features = torch.zeros(4, 4, 8)
    features[:, 2:, 0] = 1.0  # two distinct vectors
    labels = edl.kmeans_masks(features, k=5)
    assert sorted(labels.unique().tolist()) == [0, 1]


def test_uniform_image_gives_fewer_masks_not_an_error(tiny_model, small_cfg, monkeypatch):
    # A uniform photo still has position-dependent features in a real UNet, so the features
    # of a uniform image are stood in for: two distinct vectors on the 4x4 grid.
    features = torch.zeros(4, 4, 64)
    features[2:, :, 0] = 1.0
    monkeypatch.setattr("emerdiff_lab.features.extract_features",
                        lambda *args, **kwargs: features)
    seg = edl.segment(tiny_model, torch.full((3, 128, 128), 0.5), small_cfg, image_size=128,
                      progress=False)
    assert seg.num_masks == 2 < small_cfg.num_masks
    assert any("fewer than" in note for note in seg.notes)
    assert seg.diff_maps.shape[0] == seg.num_masks


def test_too_many_masks_is_refused(tiny_model, image128):
    cfg = tiny_model.default_config.replace(num_masks=17)  # a 4x4 grid has 16 cells
    with pytest.raises(ValueError, match=r"num_masks \(k\) must be an integer in \[1, 16\]"):
        edl.segment(tiny_model, image128, cfg, image_size=128, progress=False)


def test_image_size_not_a_multiple_is_refused(tiny_model, image128):
    with pytest.raises(ValueError, match="multiple of 64"):
        edl.segment(tiny_model, image128, image_size=100, progress=False)


def test_save_and_load_keep_provenance(tiny_model, small_cfg, image128, tmp_path):
    seg = edl.segment(tiny_model, image128, small_cfg, image_size=128, progress=False)
    path = seg.save(tmp_path / "result")
    assert path.exists() and path.with_suffix(".json").exists()
    back = edl.Segmentation.load(path)
    assert torch.equal(back.labels, seg.labels)
    assert torch.equal(back.diff_maps, seg.diff_maps)
    assert back.config == seg.config
    assert back.provenance["versions"]["torch"] == torch.__version__.split("+")[0] or \
        back.provenance["versions"]["torch"] == torch.__version__
    with pytest.raises(FileNotFoundError):
        edl.Segmentation.load(tmp_path / "missing")


def test_assembly_and_blur():
    maps = torch.zeros(2, 16, 16)
    maps[0, :, :8], maps[1, :, 8:] = 1.0, 0.5
    labels = edl.assemble(maps, blur_sigma=0)
    assert labels[:, :8].eq(0).all() and labels[:, 8:].eq(1).all()
    normalized = edl.prepare_maps(maps, blur_sigma=0, normalize=True)
    assert normalized.amax(dim=(1, 2)).tolist() == [1.0, 1.0]
    blurred = edl.gaussian_blur(maps, 2.0)
    assert blurred.shape == maps.shape and torch.allclose(blurred.sum(), maps.sum(), rtol=0.05)
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        edl.assemble(torch.zeros(16, 16))


def test_segment_equals_the_steps_one_by_one(tiny_model, small_cfg, image128):
    seg = edl.segment(tiny_model, image128, small_cfg, image_size=128, progress=False)
    lowres = edl.kmeans_masks(edl.extract_features(tiny_model, image128, small_cfg),
                              k=small_cfg.num_masks, seed=small_cfg.seed)
    maps = edl.pixel_change_maps(tiny_model, edl.invert(tiny_model, image128, small_cfg,
                                                        progress=False),
                                 lowres, small_cfg, progress=False)
    assert torch.equal(seg.lowres_labels, lowres)
    assert_decoded_close(seg.diff_maps, edl.prepare_maps(maps, small_cfg.blur_sigma),
                         what="segment's maps and the steps' maps")
