"""The command line: segment writes its three outputs, options reach the config, errors are
clear."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import emerdiff_lab as edl
from emerdiff_lab.cli import build_parser, config_from_args, main


def test_segment_writes_labels_overlay_and_arrays(tmp_path):
    photo = edl.sample_images()["coffee"]
    code = main(["segment", str(photo), "--out", str(tmp_path), "--model", "tiny",
                 "--image-size", "128", "--num-masks", "3", "--blur-sigma", "2", "--quiet"])
    assert code == 0
    labels = Image.open(tmp_path / "coffee_labels.png")
    assert labels.mode == "P" and labels.size == Image.open(photo).size
    assert np.asarray(labels).max() < 3
    assert Image.open(tmp_path / "coffee_overlay.png").mode == "RGB"
    meta = json.loads((tmp_path / "coffee.json").read_text())
    assert meta["config"]["num_masks"] == 3 and meta["config"]["blur_sigma"] == 2.0
    assert meta["provenance"]["random_weights"] is True
    assert edl.Segmentation.load(tmp_path / "coffee.npz").labels.shape == (256, 384)


def test_every_config_field_is_an_option():
    args = build_parser().parse_args([
        "segment", "x.png", "--out", "o", "--modulation-timestep", "481",
        "--attention-injection", "off", "--offset-placement", "before_projection",
        "--modulation-strength", "5", "--batch-size", "4", "--prompt", "a photo"])
    cfg = config_from_args(args, edl.EmerDiffConfig())
    assert cfg.modulation_timestep == 481 and cfg.attention_injection is False
    assert cfg.offset_placement == "before_projection" and cfg.modulation_strength == 5.0
    assert cfg.batch_size == 4 and cfg.prompt == "a photo"


def test_missing_image_and_bad_values_fail_with_a_message(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "none.png"), "--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err
    photo = str(edl.sample_images()["coffee"])
    assert main(["segment", photo, "--out", str(tmp_path), "--image-size", "100"]) == 1
    assert "multiple of 64" in capsys.readouterr().err


def test_help_explains_the_options():
    out = subprocess.run([sys.executable, "-m", "emerdiff_lab.cli", "segment", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for words in ("--num-masks", "t_m, timestep of the modulation", "--attention-injection",
                  "--out", "palette"):
        assert words in out


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut", "rocket"])
def test_bundled_samples_load(name):
    assert edl.load_image(edl.sample_images()[name], size=64).shape == (3, 64, 64)
