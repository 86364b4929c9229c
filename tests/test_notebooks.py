"""The notebooks: committed clean, parameterised, and every one executes headlessly in smoke mode.

The smoke run goes through ``emerdiff-lab figures --smoke`` (papermill; ToyWorld, 2 test scenes
per figure, 3 masks, a 10-step schedule), with ../shared hidden so that it sees what a fresh
clone sees; it fails on any cell error and on any figure not written. Also here: the data and
experiment helpers the notebooks use, the plotting helpers, and the runner's error reporting.
"""

import csv
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from emerdiff_lab import figures, plotting
from emerdiff_lab.toyworld.scenes import CLASS_NAMES

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PARAMETERS = ("model", "device", "dtype", "image_paths", "data_dir", "image_size", "num_masks",
              "out_dir", "quick", "smoke", "seed")


def _read(name):
    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


def _parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


# ------------------------------------------------------------------------ committed notebooks
def test_every_listed_notebook_exists_and_nothing_else():
    # 00_workshop is the hands-on lesson, not a figure notebook: tests/test_workshop.py runs it.
    on_disk = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb") if p.stem != "00_workshop")
    assert on_disk == sorted(figures.NOTEBOOKS)


@pytest.mark.parametrize("name", list(figures.NOTEBOOKS))
def test_notebook_is_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


@pytest.mark.parametrize("name", list(figures.NOTEBOOKS))
def test_parameters_cell_defines_every_parameter(name):
    nb = _read(name)
    namespace = {}
    exec(_parameters_cell(nb).source, namespace)  # noqa: S102 - our own committed notebook
    missing = [p for p in PARAMETERS if p not in namespace]
    assert not missing, f"{name}: parameters cell lacks {missing}"
    assert namespace["model"] == "toyworld", "notebooks default to the trained offline model"
    assert namespace["smoke"] is False
    assert set(figures.notebook_parameters(out_dir="x")) == set(PARAMETERS)


@pytest.mark.parametrize("name", list(figures.NOTEBOOKS))
def test_notebook_writes_what_the_runner_expects(name):
    source = "\n".join(c.source for c in _read(name).cells)
    for figure in figures.NOTEBOOKS[name]:
        if figure.endswith(".png"):
            assert f'"{figure}"' in source, f"{name} never saves {figure}"


@pytest.mark.parametrize("name", [n for n in figures.NOTEBOOKS if n != "08_explorer"])
def test_notebook_ends_with_a_computed_sentence_and_types_no_verdict(name):
    cells = [c for c in _read(name).cells if c.cell_type == "code"]
    assert "print(" in cells[-1].source, f"{name} must end by printing its computed conclusion"
    text = "\n".join(c.source for c in _read(name).cells)
    for word in ("beats", "ties with", "loses to"):
        assert word not in text, f"{name} types the verdict {word!r}; stats.conclusion words it"


# ---------------------------------------------------------------------------- the smoke run
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, monkeypatch_module):
    """``emerdiff-lab figures --smoke`` (ToyWorld) into a temporary folder, ../shared hidden."""
    from emerdiff_lab.cli import main

    out = tmp_path_factory.mktemp("figures")
    monkeypatch_module.setenv("EMERDIFF_SHARED", str(out / "no-shared-here"))
    # two kernels at a time, one torch thread each (as `make figures` runs them)
    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")
    code = main(["figures", "--smoke", "--out", str(out), "--device", "cpu", "--jobs", "2"])
    return code, out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_quick_run_executes_every_notebook_without_error(quick_run):
    code, out = quick_run
    timings = (out / "executed" / "timings.csv").read_text()
    assert code == 0, f"figures --smoke failed:\n{timings}"
    for name in figures.NOTEBOOKS:
        executed = nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"


@pytest.mark.slow
def test_quick_run_writes_every_figure(quick_run):
    _, out = quick_run
    from PIL import Image

    for name, files in figures.NOTEBOOKS.items():
        for file in files:
            path = out / file
            assert path.is_file(), f"{name} did not write {file}"
            if file.endswith(".png"):
                with Image.open(path) as image:
                    assert min(image.size) > 100, f"{file} is suspiciously small: {image.size}"
                    assert np.asarray(image.convert("L")).std() > 5, f"{file} is blank"


@pytest.mark.slow
def test_quick_run_is_smoke_mode_on_toyworld_test_scenes(quick_run):
    _, out = quick_run
    for name in figures.NOTEBOOKS:
        executed = nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4)
        text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                       for o in c.outputs)
        if name == "10_word_maps":  # word maps need captions: the captioned 128 px world
            assert "model 'toyworld-v2'" in text and "128 px; K=3; quick=True; smoke=True" \
                in text, name
            assert "random weights" not in text.lower()
            continue
        assert "model 'toyworld'" in text and "64 px; K=3; quick=True" in text, name
        if name != "08_explorer":  # the explorer's setup call predates smoke mode
            assert "smoke=True; held-out ToyWorld test scenes" in text, name
            assert "random weights" not in text.lower()
            assert "WARNING: photos" not in text


@pytest.mark.slow
def test_quick_run_csvs_hold_the_plotted_numbers(quick_run):
    _, out = quick_run
    with open(out / "fig4_miou.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == set(figures.METHODS)
    assert all(0.0 <= float(r["miou"]) <= 1.0 for r in rows)
    assert all(0.0 <= float(r["bf2"]) <= 1.0 for r in rows)
    assert {r["image"] for r in rows} == {"test+0", "test+1"}
    assert all(r["weights"] and int(r["seed"]) >= 1_000_000_000 for r in rows)  # test seeds
    # The ablations are split: 05 writes the paper's tables, 09 Figure 14 and our choices.
    parts = {"ablations.csv": ("T4", "T6", "T7", "T8", "T9"),
             "ablations_layers_choices.csv": ("F14", "blur", "map", "feature normalisation")}
    for name, tables in parts.items():
        with open(out / name) as handle:
            rows = list(csv.DictReader(handle))
        ablations = {r["ablation"] for r in rows}
        for table in tables:
            assert any(table in a for a in ablations), f"{name} lacks {table}"
        others = [t for t in ("T4", "F14", "blur") if t not in tables]
        assert not any(t in a for a in ablations for t in others), f"{name} holds {others}"
        assert {"seed", "weights", "cfg_seed", "is_default", "bf2", "naive_bf2"} <= set(rows[0])
        if "T9" in tables:
            assert {r["value"] for r in rows if "T9" in r["ablation"]} == {"on", "off"}
    with open(out / "fig8_per_class.csv") as handle:
        names = {r["name"] for r in csv.DictReader(handle)}
    assert names and names <= set(CLASS_NAMES)
    with open(out / "fig8_failures.csv") as handle:
        kinds = {r["kind"] for r in csv.DictReader(handle)}
    assert "small part" in kinds and "large region" in kinds


# ------------------------------------------------------------------------------ the runner
def test_runner_reports_a_failing_notebook(tmp_path):
    """A notebook that raises makes the run fail with the error named (tests can fail)."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('out_dir = "."')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise RuntimeError('boom in a cell')")]
    nbformat.write(nb, notebooks / "01_quickstart.ipynb")
    from emerdiff_lab.cli import main

    code = main(["figures", "--notebooks", str(notebooks), "--out", str(tmp_path / "out"),
                 "--only", "01"])
    assert code == 1
    executed = nbformat.read(tmp_path / "out" / "executed" / "01_quickstart.ipynb", as_version=4)
    assert "boom in a cell" in json.dumps(executed.cells[-1].outputs)


def test_runner_uses_this_python_whatever_python3_kernelspec_says(tmp_path, monkeypatch):
    """A user-level "python3" kernelspec pointing elsewhere (common on GPU boxes) is ignored."""
    bogus = tmp_path / "data" / "kernels" / "python3"
    bogus.mkdir(parents=True)
    (bogus / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "elsewhere", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))  # outranks every other spec
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('out_dir = "."'),
                nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, notebooks / "01_quickstart.ipynb")
    runs = figures.run_notebooks(figures.notebook_parameters(out_dir=tmp_path / "out"),
                                 notebooks_dir=notebooks, only=["01"], progress=False)
    assert runs[0].error is None, runs[0].error
    executed = nbformat.read(runs[0].executed, as_version=4)
    import sys
    assert executed.cells[-1].outputs[0]["text"].strip() == sys.executable


def test_runner_rejects_unknown_notebook_names(capsys):
    from emerdiff_lab.cli import main

    assert main(["figures", "--only", "99_nothing", "--out", "/tmp/unused"]) == 1
    assert "no notebook matches" in capsys.readouterr().err


def test_figures_is_a_registered_subcommand():
    from emerdiff_lab.cli import build_parser

    args = build_parser().parse_args(["figures", "--model", "CompVis/stable-diffusion-v1-4",
                                      "--device", "cuda", "--full"])
    assert args.quick is False and args.model == "CompVis/stable-diffusion-v1-4"
    assert build_parser().parse_args(["figures"]).quick is None  # decided from model/device


# ---------------------------------------------------------------------------- data helpers
def test_scene_examples_are_test_scenes_with_exact_labels():
    from emerdiff_lab.toyworld.scenes import HELDOUT_SEED_START, generate_scene

    examples = figures.scene_examples(64, 2)
    assert [e.name for e in examples] == ["test+0", "test+1"]
    assert [e.seed for e in examples] == [HELDOUT_SEED_START, HELDOUT_SEED_START + 1]
    image, labels = generate_scene(HELDOUT_SEED_START + 1, 64)
    assert torch.equal(examples[1].labels, torch.from_numpy(labels).long())
    assert torch.allclose(examples[1].image * 255, torch.from_numpy(image).permute(2, 0, 1).float())
    resized = figures.scene_examples(96, 1)[0]
    assert resized.image.shape == (3, 96, 96) and resized.labels.shape == (96, 96)


def test_toyworld_data_follows_the_model_and_photos_are_flagged(tmp_path):
    ctx = figures.setup("toyworld", "cpu", out_dir=tmp_path)
    assert {e.source for e in figures.photo_examples(ctx, 2)} == {"toyworld test scenes"}
    assert "WARNING" not in ctx.title("t", figures.photo_examples(ctx, 2))
    photo = next(iter(__import__("emerdiff_lab").sample_images().values()))
    flagged = figures.setup("toyworld", "cpu", out_dir=tmp_path, image_paths=[str(photo)])
    examples = figures.photo_examples(flagged, 1)
    assert examples[0].source == "file"
    assert figures.PHOTO_ON_TOYWORLD in flagged.title("Gallery", examples)


def test_voc_examples_read_labels(voc14):
    example = figures.voc_examples(voc14, 64, 1)[0]
    assert example.image.shape == (3, 64, 64)
    values = set(example.labels.unique().tolist())
    assert values <= set(range(21)) | {255}


def test_failure_stats_find_a_missed_small_part_and_a_split_region():
    gt = torch.zeros(20, 20, dtype=torch.int64)
    gt[10:, :] = 1                          # large region, split in two by the prediction
    gt[2:4, 2:4] = 2                        # small part (1% of the image), never predicted
    pred = torch.zeros(20, 20, dtype=torch.int64)
    pred[10:, :10], pred[10:, 10:] = 1, 2
    stats = {s["class"]: s for s in figures.failure_stats(pred, gt)}
    assert stats[2]["kind"] == "small part" and stats[2]["best_iou"] < 0.1
    assert stats[1]["kind"] == "large region" and stats[1]["segments_inside"] == 2


# ---------------------------------------------------------------------------- plotting
def test_save_figure_refuses_a_random_weight_figure_without_the_tag(tmp_path, tiny_model):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title("looks like a result")
    with pytest.raises(ValueError, match="random weights"):
        plotting.save_figure(fig, tmp_path / "x.png", tiny_model)
    plotting.suptitle(fig, "looks like a result", tiny_model)
    assert plotting.save_figure(fig, tmp_path / "x.png", tiny_model).is_file()
    assert "RANDOM WEIGHTS" in fig._suptitle.get_text()
    plt.close(fig)


def test_model_tag_separates_random_from_real_weights():
    assert "RANDOM WEIGHTS" in plotting.model_tag({"model_id": "tiny", "random_weights": True})
    real = plotting.model_tag({"model_id": "CompVis/stable-diffusion-v1-4",
                               "random_weights": False})
    assert real == "CompVis/stable-diffusion-v1-4"


def test_pca_rgb_is_in_range_and_separates_distinct_features():
    features = torch.zeros(4, 4, 16)
    features[:2, :, 0] = 1.0                 # two groups of identical vectors
    rgb = plotting.pca_rgb(features)
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert not np.allclose(rgb[0, 0], rgb[3, 3]) and np.allclose(rgb[0, 0], rgb[1, 3])


def test_heatmap_and_grid_images():
    heat = plotting.heatmap_rgb(torch.arange(16.0).view(4, 4))
    assert heat.shape == (4, 4, 3) and heat.dtype == np.uint8
    assert not (heat[0, 0] == heat[3, 3]).all()
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[0, 0] = True
    plain = plotting.grid_image(torch.full((3, 32, 32), 0.5), (4, 4), display_size=64)
    marked = plotting.grid_image(torch.full((3, 32, 32), 0.5), (4, 4), region, display_size=64)
    assert plain.shape == (64, 64, 3)
    assert (plain[:16, :16] != marked[:16, :16]).any()
    assert (plain[40:, 40:] == marked[40:, 40:]).all()


@pytest.mark.parametrize("quick, size", [(True, 128), (False, 256)])
def test_ablation_settings_cover_every_sweep_and_stay_valid(tiny_model, quick, size):
    from emerdiff_lab.figures.experiments import _is_default
    from emerdiff_lab.inversion import schedule

    cfg = tiny_model.default_config
    ctx = figures.FigureContext(model=tiny_model, cfg=cfg, image_size=size, quick=quick,
                                out_dir=Path("unused"))
    settings = figures.ablation_settings(ctx)
    names = {name for name, _, _ in settings}
    for part in ("T4", "T6", "T7", "T8", "T9", "F14", "blur", "map", "feature normalisation"):
        assert any(part in n for n in names), part
    assert any("T5" in n for n in names) is not quick
    cells = (size // 32) ** 2                        # tiny: 8x VAE, 4x UNet downsampling
    # Quick mode sweeps on a coarser schedule than the model's, the default included.
    base = ctx.ablation_cfg
    assert base.num_inference_steps == (figures.QUICK_ABLATION_STEPS if quick
                                        else cfg.num_inference_steps)
    assert (ctx.ablation_note != "") is quick
    on_schedule = set(schedule(tiny_model, base.num_inference_steps).tolist())
    assert {base.feature_timestep, base.modulation_timestep} <= on_schedule
    for name, value, changes in settings:
        base.replace(**changes)                      # every setting is a valid config
        assert changes.get("num_masks", 1) <= cells, (name, value)
        for key in ("feature_timestep", "modulation_timestep"):
            assert changes.get(key, getattr(base, key)) in on_schedule, (name, value)
    for sweep in names:
        values = [c for n, _, c in settings if n == sweep]
        assert len(values) >= 2, f"{sweep} has a single value"
        assert any(_is_default(ctx, base.replace(**c)) for c in values), \
            f"{sweep} lacks the default"
    # Notebooks 05 and 09 split the sweeps between them: together every one, none twice.
    tables = figures.ablation_settings(ctx, part="tables")
    rest = figures.ablation_settings(ctx, part="layers_and_choices")
    assert tables and rest and sorted(map(str, tables + rest)) == sorted(map(str, settings))
    assert {n for n, _, _ in rest} == {n for n in names if "F14" in n or "ours" in n}
    with pytest.raises(ValueError, match="part must be"):
        figures.ablation_settings(ctx, part="T4")


def test_paired_to_default_and_conclusions_come_from_the_per_image_rows():
    import pandas as pd

    rows = []
    for i in range(6):
        rows.append({"ablation": "a", "value": "default", "image": f"i{i}", "miou": 0.5 + i / 100,
                     "is_default": True})
        rows.append({"ablation": "a", "value": "worse", "image": f"i{i}",
                     "miou": 0.4 + i / 100 + (i % 2) / 1000, "is_default": False})
    table = pd.DataFrame(rows)
    summary = figures.paired_to_default(table).set_index("value")
    assert summary.loc["default", "mean"] == 0 and summary.loc["worse", "n"] == 6
    assert summary.loc["worse", "mean"] == pytest.approx(-0.0995)
    assert summary.loc["worse", "verdict"] == "loses to"
    (sentence,) = figures.ablation_conclusions(table)
    assert sentence.startswith("a = worse loses to the default")
    table["bf2"] = table.miou[::-1].values     # another column: the default now loses
    boundary = figures.paired_to_default(table, "bf2").set_index("value")
    assert boundary.loc["worse", "verdict"] == "beats" and "bf2" in boundary
    (sentence,) = figures.ablation_conclusions(table, "BF", score="bf2")
    assert sentence.startswith("a = worse beats the default: BF difference")


def test_compare_methods_scores_every_method_per_image_and_class(tmp_path):
    ctx = figures.setup("toyworld", "cpu", smoke=True, out_dir=tmp_path)
    examples = figures.labelled_examples(ctx, 2)
    per_image, per_class, labels = figures.compare_methods(
        ctx, examples, None, class_names=figures.class_names(examples), progress=False)
    assert set(per_image.method) == set(figures.METHODS) - {figures.CONTROL}
    assert len(per_image) == 2 * 4 and per_image.miou.between(0, 1).all()
    for key in ("bf1", "bf2", "bf2_agnostic"):
        assert per_image[key].between(0, 1).all()
    assert (per_image.bf1 <= per_image.bf2).all()        # a looser tolerance never scores less
    assert set(per_class.name) <= set(CLASS_NAMES)
    summary = figures.method_summary(per_image)
    assert summary.set_index("method").loc[figures.NAIVE, "n"] == 2
    again, _, _ = figures.compare_methods(ctx, examples, None, progress=False)  # from the cache
    assert again.miou.tolist() == per_image.miou.tolist()
    assert len(list(ctx.cache_dir.glob("*.npz"))) == 2


@pytest.mark.slow
def test_runner_runs_notebooks_side_by_side_and_rejects_bad_jobs(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("01_quickstart", "03_pipeline_overview"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell('out_dir = "."'),
                    nbformat.v4.new_code_cell(f"print({name!r})")]
        nb.cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(nb, notebooks / f"{name}.ipynb")
    runs = figures.run_notebooks(figures.notebook_parameters(out_dir=tmp_path / "out"),
                                 notebooks_dir=notebooks, only=["01", "03"], progress=False,
                                 jobs=2)
    assert [r.name for r in runs] == ["01_quickstart", "03_pipeline_overview"]
    assert all(r.error is None for r in runs), [r.error for r in runs]
    with pytest.raises(ValueError, match="jobs"):
        figures.run_notebooks({}, jobs=0)
