"""The perturbation explorer, driven from code: a control change redraws the difference map, a
revisited setting comes from the cache without recomputing, cached results are correct, and
"Segment" shows the whole segmentation, scored against the labels."""

import time

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab import widgets
from emerdiff_lab.evaluation.metrics import hungarian_miou, segmentation_scores
from tolerances import assert_decoded_close

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def session(tiny_model):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 128, 128, generator=generator) * 0.2
    image[:, 30:90, 40:100] += torch.tensor([0.7, 0.3, 0.1]).view(3, 1, 1)
    labels = torch.zeros(128, 128, dtype=torch.int64)
    labels[30:90, 40:100] = 1                            # the square is class 1
    cfg = tiny_model.default_config.replace(num_masks=4)
    return widgets.explorer_session(tiny_model, image.clamp(0, 1), cfg, labels=labels,
                                    image_size=128)


@pytest.fixture
def explorer(session):
    return widgets.Explorer(session)


def test_session_prepares_grid_masks_and_full_schedule(explorer, session):
    assert explorer.grid == (4, 4)                       # tiny model at 128 px
    assert explorer.lowres.shape == (4, 4) and explorer.num_masks <= 4
    assert 281 in explorer.timesteps and 981 in explorer.timesteps
    assert session.cache_info()["inversion_depths"] == [981]   # every t_m served
    assert len(explorer.layers) == 3 and explorer.default_layer == explorer.layers[2]


@pytest.mark.parametrize("control, value", [
    ("row", 0), ("col", 0), ("strength", 100.0), ("timestep", 481), ("injection", False),
    ("placement", "before_projection")])
def test_setting_a_control_changes_the_displayed_map(explorer, control, value):
    before = explorer.diff_view.value
    updates = explorer.updates
    getattr(explorer, control).value = value
    assert explorer.updates == updates + 1
    assert explorer.diff_view.value != before, f"changing {control} left the map unchanged"


def test_layer_control_changes_the_map(explorer):
    before = explorer.diff_view.value
    explorer.layer.value = explorer.layers[0]
    assert explorer.diff_view.value != before


def test_revisiting_a_setting_hits_the_cache_and_does_not_recompute(explorer, session,
                                                                    monkeypatch):
    start = explorer.diff_view.value
    explorer.row.value = 1
    explorer.row.value = 3
    misses = explorer.misses

    def no_compute(*args, **kwargs):
        raise AssertionError("a revisited setting was recomputed")

    monkeypatch.setattr("emerdiff_lab.modulation.perturb", no_compute)
    hits = explorer.hits
    explorer.row.value = 1
    explorer.row.value = 2                               # the starting cell
    assert explorer.hits >= hits + 2 and explorer.misses == misses
    assert explorer.diff_view.value == start
    assert "from cache" in explorer.status.value


def test_cached_result_equals_a_fresh_perturbation(explorer, session, tiny_model):
    region = session.cell_region(1, 2)
    cached = explorer.perturbation(region, strength=5.0, timestep=381, injection=False)
    cfg = session.cfg.replace(modulation_strength=5.0, modulation_timestep=381,
                              attention_injection=False, modulation_layer=explorer.default_layer)
    fresh = edl.perturb(tiny_model, session.inversion(cfg), region, cfg)
    torch.testing.assert_close(cached.diff, fresh.diff)
    assert explorer.perturbation(region, strength=5.0, timestep=381, injection=False) is cached


def test_clicking_a_cell_selects_it(explorer, session):
    before = explorer.image_view.value
    index = 0 * explorer.grid[1] + 3
    explorer._buttons[index].click()
    assert (explorer.row.value, explorer.col.value) == (0, 3)
    assert explorer.image_view.value != before
    assert torch.equal(explorer.region(), session.cell_region(0, 3))


def test_mask_mode_modulates_the_whole_mask(explorer, session):
    explorer.mode.value = "mask"
    assert explorer.mask.value == int(explorer.lowres[explorer.row.value, explorer.col.value])
    assert torch.equal(explorer.region(), session.mask_region(explorer.mask.value))
    if explorer.num_masks > 1:
        before = explorer.diff_view.value
        explorer.mask.value = (explorer.mask.value + 1) % explorer.num_masks
        assert explorer.diff_view.value != before


def test_session_replays_its_recorded_reference_pass(tiny_model, explorer, session):
    """The default setting's unmodulated pass is recorded up front and replayed; a session
    without room for it computes the same perturbation the batched way."""
    assert session.cache_info()["reference_passes"] >= 1
    region = session.cell_region(2, 1)
    fast = explorer.perturbation(region, strength=30.0)
    plain = widgets.explorer_session(tiny_model, session.pixels, session.cfg, image_size=128,
                                     max_bytes=1)
    slow = widgets.Explorer(plain).perturbation(region, strength=30.0)
    assert plain.cache_info()["reference_passes"] == 0
    assert fast.diff.max() > 1e-3
    assert_decoded_close(fast.diff, slow.diff, what="replayed and batched explorer maps")


def test_bad_inputs_say_what_is_expected(explorer, session):
    with pytest.raises(ValueError, match="not on the schedule"):
        explorer.perturbation(session.cell_region(0, 0), timestep=280)
    with pytest.raises(ValueError, match="outside"):
        session.cell_region(9, 0)
    with pytest.raises(ValueError, match="region must be"):
        explorer.perturbation(torch.ones(2, 2, dtype=torch.bool))


def test_status_and_snapshot_say_random_weights(explorer):
    import matplotlib.pyplot as plt

    assert "RANDOM WEIGHTS" in explorer.status.value
    fig = explorer.snapshot()
    assert "RANDOM WEIGHTS" in fig._suptitle.get_text()
    plt.close(fig)


def test_open_explorer_is_one_line(tiny_model):
    explorer = widgets.open_explorer(tiny_model, image_size=128, display=False)
    assert explorer.wait(600)                   # its worker shares the model with later tests
    assert "computed in" in explorer.status.value
    assert explorer.diff_view.value and explorer.session.pixels.shape == (3, 128, 128)
    assert explorer.session.truth.shape == (128, 128)      # the default scene's own labels


def test_open_explorer_defaults_to_toyworld_on_a_heldout_test_scene(tiny_model, monkeypatch):
    from emerdiff_lab.toyworld import HELDOUT_SEED_START, generate_scene

    asked = []
    monkeypatch.setattr("emerdiff_lab.models.load_model",
                        lambda model_id, device=None: asked.append(model_id) or tiny_model)
    explorer = widgets.open_explorer(cfg=tiny_model.default_config.replace(num_masks=4),
                                     image_size=128, display=False)
    assert explorer.wait(600)
    assert asked == ["toyworld"]
    image, labels = generate_scene(HELDOUT_SEED_START + widgets.DEFAULT_SCENE, 128)
    assert torch.equal(explorer.session.truth, torch.from_numpy(labels))
    assert torch.allclose(explorer.session.pixels,
                          torch.from_numpy(image).permute(2, 0, 1).float() / 255, atol=1e-6)


# ------------------------------------------------------------------ the whole segmentation
def test_segmentation_is_the_assembled_maps_and_is_scored(explorer, session, tiny_model):
    view = explorer.segmentation(strength=5.0, timestep=381)
    cfg = session.cfg.replace(modulation_strength=5.0, modulation_timestep=381,
                              modulation_layer=explorer.default_layer)
    maps = edl.pixel_change_maps(tiny_model, session.inversion(cfg), explorer.lowres, cfg,
                                 progress=False)
    assert torch.equal(view.labels, edl.assemble(maps, cfg.blur_sigma))
    assert torch.equal(view.naive, edl.upsample_bilinear(explorer.lowres, 128))
    assert view.miou == hungarian_miou(view.labels, session.truth).miou
    assert 0 <= view.naive_miou <= 1 and view.seconds > 0
    scores = segmentation_scores(view.labels, session.truth)
    assert view.bf2 == scores["bf2"] and 0 <= view.naive_bf2 <= 1


def test_segmentation_is_cached_per_setting(explorer, monkeypatch):
    first = explorer.segmentation(strength=5.0, timestep=381)
    monkeypatch.setattr("emerdiff_lab.modulation.pixel_change_maps",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = explorer.segmentation(strength=5.0, timestep=381)
    assert torch.equal(again.labels, first.labels) and again.seconds == 0
    assert explorer.has_segmentation(strength=5.0, timestep=381)
    assert not explorer.has_segmentation(strength=5.0, timestep=381, injection=False)


def test_segment_button_shows_the_panel_and_marks_it_stale(explorer, session):
    assert explorer.segment_panel.layout.display == "none"
    explorer.segment_button.click()
    assert explorer.segment_panel.layout.display == "flex"
    assert explorer.emerdiff_view.value and explorer.naive_view.value and \
        explorer.truth_view.value
    assert "mIoU" in explorer.segment_status.value
    assert "boundary F-score" in explorer.segment_status.value
    shown = explorer.emerdiff_view.value
    explorer.strength.value = 50.0
    assert "out of date" in explorer.segment_status.value
    explorer.strength.value = float(session.cfg.modulation_strength)
    assert "from cache" in explorer.segment_status.value
    assert explorer.emerdiff_view.value == shown


def test_segmentation_without_labels_says_so(tiny_model, session):
    bare = widgets.explorer_session(tiny_model, session.pixels, session.cfg, image_size=128)
    explorer = widgets.Explorer(bare)
    view = explorer.segment()
    assert view.miou is None and "no labels" in explorer.segment_status.value


def test_overlay_blends_the_difference_map_over_the_image(explorer):
    plain = explorer.diff_view.value
    explorer.overlay.value = True
    assert explorer.diff_view.value != plain
    explorer.overlay.value = False
    assert explorer.diff_view.value == plain


@pytest.mark.slow
def test_explorer_benchmark_runs_and_records_the_median(tmp_path, tiny_model, monkeypatch):
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_explorer.py"
    spec = importlib.util.spec_from_file_location("bench_explorer", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cells = bench.distinct_cells((4, 4), 5)
    assert len(set(cells)) == 5 and all(0 <= r < 4 and 0 <= c < 4 for r, c in cells)

    monkeypatch.setattr("emerdiff_lab.models.load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(tiny_model, "default_config",
                        tiny_model.default_config.replace(num_masks=4))
    out = tmp_path / "explorer.json"
    assert bench.main(["--model", "tiny", "--image-size", "128", "--repeats", "3",
                       "--no-segment", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["new_cell_n"] == 3 and record["new_cell_median_s"] > 0
    assert record["cached_s"] < min(record["new_cell_s"])


# ------------------------------------------------------- responsiveness (the worker thread)
def _gate(monkeypatch, session, name):
    """Makes ``session.<name>`` wait for the returned event before it runs; records calls."""
    import threading

    original, gate, calls = getattr(session, name), threading.Event(), []

    def gated(*args, **kwargs):
        calls.append(args)
        assert gate.wait(60), "the test never opened the gate"
        return original(*args, **kwargs)

    monkeypatch.setattr(session, name, gated)
    return gate, calls


def test_background_marks_the_old_picture_stale_and_draws_only_the_newest(session,
                                                                          monkeypatch):
    explorer = widgets.Explorer(session, background=True)
    assert explorer.wait(120)
    gate, calls = _gate(monkeypatch, session, "perturbation")
    explorer.row.value = 0                      # starts computing, held at the gate
    for _ in range(1000):
        if calls:
            break
        time.sleep(0.01)
    explorer.row.value = 1                      # waits ...
    explorer.row.value = 3                      # ... and is replaced by this one
    assert "computing" in explorer.status.value
    assert all("edl-stale" in v._dom_classes for v in (explorer.diff_view, explorer.plus_view))
    gate.set()
    assert explorer.wait(120)
    assert len(calls) == 2                      # row 0 and row 3; row 1 never computed
    assert explorer.worker.replaced >= 1 and explorer.worker.dropped >= 1
    assert "edl-stale" not in explorer.diff_view._dom_classes
    assert "computed in" in explorer.status.value or "from cache" in explorer.status.value
    monkeypatch.undo()
    drawn = explorer.diff_view.value
    sync = widgets.Explorer(session)
    sync.row.value = 3
    assert sync.diff_view.value == drawn        # the newest request's map is on display


def test_first_map_says_it_computes_the_reference_pass(tiny_model, session, monkeypatch):
    fresh = widgets.explorer_session(tiny_model, session.pixels, session.cfg, image_size=128,
                                     prepare=False)
    gate, _ = _gate(monkeypatch, fresh, "inversion")
    explorer = widgets.Explorer(fresh, background=True)
    assert "computing the reference pass" in explorer.status.value
    assert explorer.image_view.value and explorer.diff_view.value   # never a blank cell
    gate.set()
    assert explorer.wait(300)
    assert "computed in" in explorer.status.value
    assert fresh.cache_info()["inversion_depths"] == [max(explorer.timesteps)]


def test_segment_shows_progress_and_is_disabled_while_running(session):
    explorer = widgets.Explorer(session, background=True)
    assert explorer.wait(120)
    explorer.strength.value = 7.0               # a setting never segmented
    assert explorer.wait(120)
    seen = []
    explorer.segment_status.observe(lambda c: seen.append(c["new"]), names="value")
    explorer.segment_button.click()
    assert explorer.segment_button.disabled
    assert explorer.tabs.selected_index == 1
    assert explorer.wait(300)
    steps = [s for s in seen if "denoising steps" in s]
    assert steps, seen
    import re
    done, total = map(int, re.search(r"denoising steps (\d+) / (\d+)", steps[-1]).groups())
    assert done == total > 0
    assert not explorer.segment_button.disabled
    assert explorer.segment_panel.layout.display == "flex" and "mIoU" in \
        explorer.segment_status.value


# ------------------------------------------------------------ comparable pictures, colours
def test_shared_scale_by_default_and_own_max_on_request(explorer):
    from emerdiff_lab.scales import SHARED_VMAX

    assert explorer.scale.value == "shared scale"
    assert f"{SHARED_VMAX:.3g}" in explorer.colorbar.value
    largest = float(explorer.current().diff.max())
    assert f"{largest:.4f}" in explorer.colorbar.value      # the largest change is printed
    shared = explorer.diff_view.value
    explorer.scale.value = "own max"
    assert f"{largest:.3g}" in explorer.colorbar.value
    assert explorer.diff_view.value != shared


def test_lambda_takes_exact_typed_values(explorer):
    for value in (2, 10, 50):
        explorer.strength.value = value
        assert explorer.options()["strength"] == float(value)
        assert explorer.setting(strength=explorer.options()["strength"]) \
            .modulation_strength == float(value)
    explorer.strength_slider.value = 5.0                    # the slider's steps set the box
    assert explorer.strength.value == 5.0


def test_masks_have_swatches_and_classes_a_legend(session):
    explorer = widgets.Explorer(session, class_names=("background", "square"))
    assert explorer.mask_swatches.value.count("edl-swatch") == explorer.num_masks
    explorer.segment()
    legend = explorer.class_legend.value
    assert "background" in legend and "square" in legend


def test_mask_colours_are_not_class_colours():
    import numpy as np

    from emerdiff_lab import colours

    classes = np.vstack([colours.CLASS_COLOURS, [colours.NO_CLASS_COLOUR,
                                                 colours.SELECTION_COLOUR]]).astype(float)
    for index in range(len(colours.MASK_COLOURS)):
        distance = np.linalg.norm(classes - np.array(colours.mask_colour(index)), axis=1)
        assert distance.min() >= colours.MIN_MASK_CLASS_DISTANCE, index


def test_toyworld_class_palette_reads_naturally():
    from emerdiff_lab.colours import CLASS_COLOURS
    from emerdiff_lab.toyworld.scenes import CLASS_NAMES

    rgb = {name: tuple(int(c) for c in CLASS_COLOURS[i]) for i, name in enumerate(CLASS_NAMES)}
    r, g, b = rgb["sky"]
    assert b > g > r                                        # sky blue
    r, g, b = rgb["water"]
    assert g > r and b > r                                  # blue-green
    r, g, b = rgb["grass"]
    assert g > r and g > b                                  # green
    r, g, b = rgb["sand"]
    assert r > b and g > b                                  # yellow


def test_eye_note_and_amplified_view():
    from emerdiff_lab.scales import amplified, eye_note

    assert eye_note(0.002) and "identical" in eye_note(0.002) and eye_note(0.05) == ""
    plus = torch.zeros(3, 4, 4)
    minus = plus.clone()
    minus[0, 0, 0] = 0.002
    picture, gain = amplified(plus, minus)
    assert gain == pytest.approx(250) and float(picture[0, 0, 0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- thread policy
def test_thread_policy_leaves_one_core_free_and_can_be_overridden(monkeypatch):
    from emerdiff_lab import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.interactive_threads({}) == 1
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.interactive_threads({}) == 7
    assert threads.interactive_threads({"EMERDIFF_THREADS": "3"}) == 3
    assert threads.interactive_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert threads.interactive_threads({"EMERDIFF_THREADS": "2", "OMP_NUM_THREADS": "1"}) == 2
    with pytest.raises(ValueError, match="EMERDIFF_THREADS"):
        threads.interactive_threads({"EMERDIFF_THREADS": "many"})


def test_worker_replaces_the_pending_request_and_drops_stale_results():
    import threading

    from emerdiff_lab.worker import LatestWorker

    started, gate, drawn = threading.Event(), threading.Event(), []
    worker = LatestWorker(background=True)
    worker.submit(lambda: started.set() or (gate.wait(30) and "first"),
                  lambda r, e: drawn.append(r))
    assert started.wait(30)
    worker.submit(lambda: "second", lambda r, e: drawn.append(r))
    worker.submit(lambda: "third", lambda r, e: drawn.append(r))
    gate.set()
    assert worker.wait(30)
    assert drawn == ["third"] and worker.replaced == 1 and worker.dropped == 1
    inline = LatestWorker(background=False)
    inline.submit(lambda: 1, lambda r, e: drawn.append(r))
    assert drawn[-1] == 1
