"""The stage-keyed Session: each stage computed once per the settings it reads, one trajectory
for every t_m up to the deepest asked, results equal to independent ``segment`` calls."""

import dataclasses
import threading

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.config import NUMERICS_ONLY, STAGE_SETTINGS, EmerDiffConfig
from emerdiff_lab.session import Session
from tolerances import assert_decoded_close


@pytest.fixture(scope="module")
def cfg(tiny_model):
    # 25 steps: both 281 and 481 lie on the schedule
    return tiny_model.default_config.replace(num_masks=3, num_inference_steps=25,
                                             modulation_timestep=281, blur_sigma=1.0)


@pytest.fixture(scope="module")
def image():
    picture = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3)) * 0.3
    picture[:, 10:40, 20:60] += 0.6
    return picture.clamp(0, 1)


def test_every_config_field_is_a_key_or_numerics_only():
    keyed = {name for names in STAGE_SETTINGS.values() for name in names}
    fields = {f.name for f in dataclasses.fields(EmerDiffConfig)}
    assert not keyed & set(NUMERICS_ONLY)
    missing = fields - keyed - set(NUMERICS_ONLY)
    assert not missing, f"config fields in neither STAGE_SETTINGS nor NUMERICS_ONLY: {missing}"
    assert keyed | set(NUMERICS_ONLY) <= fields


def test_a_sweep_on_one_session_equals_independent_segment_calls(tiny_model, cfg, image):
    session = Session(tiny_model, image, cfg=cfg, image_size=64)
    changes = [{}, {"num_masks": 2}, {"feature_timestep": 101}, {"seed": 1},
               {"normalize_maps": True}, {"blur_sigma": 0.0}, {"modulation_strength": 3.0},
               {"attention_injection": False}, {"offset_placement": "before_projection"}]
    for change in changes:
        setting = cfg.replace(**change)
        fresh = edl.segment(tiny_model, image, setting, image_size=64, progress=False)
        again = session.segment(setting)
        assert torch.equal(again.labels, fresh.labels), change
        assert torch.equal(again.diff_maps, fresh.diff_maps), change
    computed = session.cache_info()["computed"]
    # seed changes the features and the inversion; t_f only the features
    assert computed["inversion"] == 2 and computed["features"] == 3


def test_named_default_layer_shares_entries_with_none(tiny_model, cfg, image):
    session = Session(tiny_model, image, cfg=cfg, image_size=64)
    session.raw_maps(cfg)
    named = session.resolved(cfg)
    assert named.feature_layer and named.modulation_layer
    assert session.is_cached("raw_maps", named)
    before = session.cache_info()["computed"]
    session.raw_maps(named)
    assert session.cache_info()["computed"] == before


def test_shallower_t_m_reuses_the_trajectory_and_deeper_inverts_again(tiny_model, cfg, image,
                                                                      monkeypatch):
    deep, shallow = cfg.replace(modulation_timestep=481), cfg.replace(modulation_timestep=281)
    session = Session(tiny_model, image, cfg=cfg, image_size=64)
    session.raw_maps(deep)
    calls = []
    real = edl.inversion.invert
    monkeypatch.setattr("emerdiff_lab.inversion.invert",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    session.raw_maps(shallow)
    assert calls == [] and session.cache_info()["inversion_depths"] == [481]

    other = Session(tiny_model, image, cfg=cfg, image_size=64)
    other.raw_maps(shallow)
    other.reference_pass(shallow)
    assert other.cache_info()["reference_passes"] == 1
    maps = other.raw_maps(deep)
    assert len(calls) == 2 and other.cache_info()["inversion_depths"] == [481]
    assert other.cache_info()["reference_passes"] == 0     # tied to the old trajectory
    monkeypatch.setattr("emerdiff_lab.inversion.invert", real)
    fresh = edl.segment(tiny_model, image, deep, image_size=64, progress=False,
                        keep_intermediates=True)
    assert torch.equal(maps, fresh.intermediates.raw_maps)   # the same trajectory, computed anew
    # the shallow setting from the deep trajectory: the same maps within float error
    alone = edl.segment(tiny_model, image, shallow, image_size=64, progress=False,
                        keep_intermediates=True)
    assert_decoded_close(session.raw_maps(shallow), alone.intermediates.raw_maps,
                         what="t_m 281 maps from a 481 trajectory and from their own")


def test_batched_and_replayed_single_regions_never_share_entries(tiny_model, cfg, image):
    session = Session(tiny_model, image, cfg=cfg, image_size=64)
    region = session.cell_region(0, 1)
    replayed = session.perturbation(region, cfg)
    assert session.cache_info()["reference_passes"] == 1
    assert session.is_cached("one_region", cfg, path="replayed", region=region)
    assert not session.is_cached("one_region", cfg, path="batched", region=region)
    batched = session.perturbation(region, cfg, path="batched")
    assert batched is not replayed
    assert session.perturbation(region, cfg) is replayed
    assert_decoded_close(replayed.diff, batched.diff, what="replayed and batched region")


def test_memory_cap_evicts_least_recently_used(tiny_model, cfg, image):
    session = Session(tiny_model, image, cfg=cfg, image_size=64)
    session.raw_maps(cfg)
    size = session.cache_info()["bytes"]
    small = Session(tiny_model, image, cfg=cfg, image_size=64, max_bytes=size)
    small.raw_maps(cfg)
    small.raw_maps(cfg.replace(modulation_strength=3.0))
    info = small.cache_info()
    assert info["bytes"] <= size and info["by_stage"].get("raw_maps") == 1
    assert small.is_cached("raw_maps", cfg.replace(modulation_strength=3.0))
    assert not small.is_cached("raw_maps", cfg)


def test_session_is_bound_to_its_model(tiny_model, cfg, image):
    session = Session(tiny_model, image, cfg=cfg, image_size=64)
    with pytest.raises(ValueError, match="another model"):
        session.check_model(edl.load_model("tiny", device="cpu"))
    session._bound = (torch.float64, tiny_model.device)      # as if the model had moved
    with pytest.raises(ValueError, match="make a new Session"):
        session.features(cfg)


def test_progress_reaches_its_total_and_a_worker_thread_may_compute(tiny_model, cfg, image):
    reports = []
    session = Session(tiny_model, image, cfg=cfg, image_size=64,
                      on_progress=lambda done, total: reports.append((done, total)))
    worker = threading.Thread(target=session.segment, args=(cfg,))
    worker.start()
    while worker.is_alive():
        session.cache_info()                          # the main thread draws meanwhile
        worker.join(0.01)
    assert reports and reports[-1][0] == reports[-1][1]
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    steps = len(edl.inversion.schedule(tiny_model, 25).tolist()[
        edl.inversion.schedule(tiny_model, 25).tolist().index(281):])
    assert reports[-1][1] >= steps + 2                # features, inversion, denoising steps


def test_disk_store_is_shared_and_keyed_by_dtype(tiny_model, cfg, image, tmp_path):
    first = Session(tiny_model, image, cfg=cfg, image_size=64, store=tmp_path, weights="w")
    maps = first.raw_maps(cfg)
    second = Session(tiny_model, image, cfg=cfg, image_size=64, store=tmp_path, weights="w")
    assert torch.equal(second.raw_maps(cfg), maps)
    assert "raw_maps" not in second.cache_info()["computed"]
    # another dtype (or device) of the same weights never reads these maps
    key = ("raw_maps", "batched")
    path32 = first._store_path(key)
    first.model = dataclasses.replace(tiny_model, dtype=torch.float16)
    assert first._store_path(key) != path32
