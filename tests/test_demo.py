"""``python -m emerdiff_lab.demo`` (``make demo``): per-image outputs as ``emerdiff-lab segment``
writes them, a readable summary figure, and printed scores that are the package's Hungarian mIoU."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from emerdiff_lab import demo
from emerdiff_lab.evaluation.metrics import boundary_f_score, hungarian_miou


@pytest.mark.slow
def test_demo_writes_outputs_summary_and_scores(tmp_path, capsys):
    scene = demo.bundled_scenes()[0]
    unlabelled = tmp_path / "photos" / "unlabelled.png"    # no labels/ beside it: not scored
    unlabelled.parent.mkdir()
    shutil.copy(scene, unlabelled)
    out = tmp_path / "demo"

    assert demo.main([str(scene), str(unlabelled), "--out", str(out), "--device", "cpu",
                      "--num-masks", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out

    for stem in (scene.stem, "unlabelled"):
        for suffix in ("_labels.png", "_overlay.png", ".npz", ".json"):
            assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix} not written"
    with Image.open(out / "summary.png") as figure:
        width, height = figure.size
        assert width >= 5 * demo.PANEL_PX and height >= 2 * demo.PANEL_PX
        assert np.asarray(figure.convert("L")).std() > 20

    row = demo.load_row(scene, out)
    expected = hungarian_miou(row.emerdiff.numpy(), row.truth.numpy()).miou
    line = next(li for li in printed.splitlines() if li.startswith(scene.stem))
    numbers = [float(x) for x in re.findall(r"\d\.\d{3}", line)]
    naive, emerdiff = numbers[:2]
    assert emerdiff == pytest.approx(expected, abs=5e-4)
    assert naive == pytest.approx(row.naive_miou, abs=5e-4)
    boundary = boundary_f_score(row.emerdiff.numpy(), row.truth.numpy()).bf
    assert numbers[4] == pytest.approx(boundary, abs=5e-4)    # after naive BF: EmerDiff's BF
    assert numbers[3] == pytest.approx(row.naive_bf, abs=5e-4)
    assert "unlabelled" in printed and "(no labels)" in printed
    assert "summary.png" in printed


def test_segment_argv_passes_the_options_on():
    args = demo.build_parser().parse_args(["a.png", "--model", "tiny", "--num-masks", "3",
                                           "--out", "o"])
    assert demo.segment_argv([*args.images], args) == [
        "segment", "a.png", "--out", "o", "--model", "tiny", "--dtype", "float32",
        "--num-masks", "3"]


def test_bundled_scenes_have_labels():
    scenes = demo.bundled_scenes()
    assert len(scenes) == 4 and all(demo.labels_for(p) is not None for p in scenes)
