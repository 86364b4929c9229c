"""The real console script, end to end with the tiny model (issue 20): results never overwrite
each other or an input, folders among the inputs are expanded, settings that can only be wrong
fail once before any image, non-finite values stop an image instead of giving labels of zeros,
and advice fits the model that failed and the command line.

Each test runs ``emerdiff-lab`` in a subprocess (tests/console_script.py) at 64 px, K = 2 and
5 steps.
"""

from pathlib import Path

import numpy as np
from PIL import Image

import console_script
import emerdiff_lab as edl
from console_script import SMALL


def _picture(path: Path, size=(64, 48), colour=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour) + size[0])
    pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "random weights" not in line]


def test_a_stem_ending_in_npz_gets_its_own_result(tmp_path):
    """``frame.npz.png`` has the stem ``frame.npz``; Segmentation.save dropped the ``.npz``, so
    its result replaced ``frame.png``'s."""
    frame = _picture(tmp_path / "frame.png", size=(64, 48))
    other = _picture(tmp_path / "frame.npz.png", size=(40, 56), colour=(20, 200, 90))
    out = tmp_path / "out"
    done = console_script.run("segment", frame, other, "--out", out, *SMALL)
    assert done.returncode == 0, done.stderr
    assert edl.Segmentation.load(out / "frame.npz").labels.shape == (48, 64)
    assert edl.Segmentation.load(out / "frame.npz.npz").labels.shape == (56, 40)
    assert sorted(p.name for p in out.iterdir()) == [
        "frame.json", "frame.npz", "frame.npz.json", "frame.npz.npz", "frame.npz_labels.png",
        "frame.npz_overlay.png", "frame_labels.png", "frame_overlay.png"]
    assert Image.open(out / "frame.npz_labels.png").size == (40, 56)


def test_an_output_never_replaces_an_input(tmp_path):
    same = tmp_path / "same"
    shot, labels = _picture(same / "shot.png"), _picture(same / "shot_labels.png")
    before = labels.read_bytes()
    done = console_script.run("segment", shot, labels, "--out", same, *SMALL)
    assert done.returncode == 1
    assert done.stderr == (f"emerdiff-lab: error: --out '{same}' would overwrite the input "
                           f"'{labels}' with the labels of '{shot}'; choose another --out "
                           f"(nothing was written)\n")
    assert labels.read_bytes() == before
    assert sorted(p.name for p in same.iterdir()) == ["shot.png", "shot_labels.png"]


def test_a_folder_among_the_inputs_is_expanded_and_an_empty_one_reported(tmp_path):
    folder = tmp_path / "shots"
    _picture(folder / "a.png")
    _picture(folder / "b.jpg", colour=(30, 30, 220))
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    single = _picture(tmp_path / "c.png", colour=(90, 90, 90))
    out = tmp_path / "out"
    done = console_script.run("segment", folder, tmp_path / "empty", single, "--out", out,
                              *SMALL)
    assert done.returncode == 1
    for stem in ("a", "b", "c"):
        assert edl.Segmentation.load(out / stem).labels.shape == (48, 64)
    report = _error_lines(done.stderr)
    start = report.index("emerdiff-lab: error: 1 of 4 image(s) failed:")
    assert report[start + 1:] == [f"  {tmp_path / 'empty'}: a folder without image files "
                                  f"(.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp)"]


def test_settings_that_can_only_be_wrong_fail_once_before_any_image(tmp_path):
    images = [_picture(tmp_path / "a.png"), _picture(tmp_path / "b.png", colour=(9, 9, 9))]
    for options, message in (
            (["--modulation-timestep", "2000"],
             "modulation_timestep=2000 is not on the 5-step schedule; choose one of "
             "[801, 601, 401, 201, 1]"),
            (["--feature-layer", "up_blocks.9.nothing"],
             "feature_layer='up_blocks.9.nothing' is not a cross-attention layer of this model"),
            (["--num-masks", "1000"],
             "num_masks (k) must be an integer in [1, 4] for a 2x2 feature map (at 64 px), "
             "got 1000")):
        done = console_script.run("segment", *images, "--out", tmp_path / "out", *SMALL,
                                  *options)
        assert done.returncode == 1
        assert done.stderr.startswith(f"emerdiff-lab: error: {message}") and \
            done.stderr.count("\n") == 1, done.stderr
        assert not list((tmp_path / "out").glob("*.npz"))


def test_a_lambda_too_large_stops_the_image_naming_the_stage(tmp_path):
    image, out = _picture(tmp_path / "a.png"), tmp_path / "out"
    done = console_script.run("segment", image, "--out", out, *SMALL,
                              "--modulation-strength", "1e20")
    assert done.returncode == 1
    report = _error_lines(done.stderr)
    assert report[-2] == "emerdiff-lab: error: 1 of 1 image(s) failed:"
    assert report[-1].startswith(f"  {image}: the modulated latents hold non-finite values")
    assert "lambda (modulation_strength 1e+20) is most likely too large for float32" \
        in report[-1]
    assert not list(out.iterdir())  # no label map of zeros


def test_offline_advice_on_the_command_line_fits_the_model_that_failed(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    _picture(tmp_path / "data" / "images" / "a.png")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "data" / "labels" / "a.png")
    (tmp_path / "names.txt").write_text("thing\n")
    done = console_script.run(
        "evaluate", "--dataset", "folder", "--root", tmp_path / "data", "--class-names",
        tmp_path / "names.txt", "--protocol", "open-vocab", "--clip-model", "org/uncached-clip",
        "--out", tmp_path / "out", "--quiet", HF_HOME=str(tmp_path / "hf"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    err = done.stderr
    assert err.startswith("emerdiff-lab: error: Could not load the CLIP model for "
                          "'org/uncached-clip': not in the local Hugging Face cache")
    assert "CLIPModel.save_pretrained" in err and "--clip-model /path/to/folder" in err
    assert "leave out the open-vocab protocol" in err
    assert "StableDiffusionPipeline" not in err and "load_model(" not in err
    done = console_script.run("segment", tmp_path / "data" / "images" / "a.png", "--out",
                              tmp_path / "out", *SMALL, "--model", "org/uncached",
                              HF_HOME=str(tmp_path / "hf"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("emerdiff-lab: error: Could not load Stable Diffusion weights "
                                  "for 'org/uncached': not in the local Hugging Face cache")
    assert "--model tiny" in done.stderr and "load_model(" not in done.stderr
    assert "does not appear to have a file named" not in done.stderr
