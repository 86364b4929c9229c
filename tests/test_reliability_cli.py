"""The command line loses nothing and says what went wrong in one line (issue 15): output names
that cannot collide, a bad image among many, --out checked before any work, hyperparameters and
devices checked before a model is loaded, Ctrl-C, --traceback.

Where only the command line's bookkeeping is under test, the segmentation is replaced by a
stand-in that labels every pixel with a number derived from the photo (so results of different
inputs differ, and an overwritten result would show); test_cli.py runs the real one.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import emerdiff_lab as edl
import emerdiff_lab.segmentation as segmentation_module
from emerdiff_lab import cli
from emerdiff_lab.cli import main


class FakeSegment:
    """Stands in for emerdiff_lab.segmentation.segment; remembers the photos it was given."""

    def __init__(self, interrupt=False):
        self.photos, self.interrupt = [], interrupt

    def __call__(self, model, photo, cfg, image_size=None, original_size=True, progress=True):
        if self.interrupt:
            raise KeyboardInterrupt
        edl.prepare_image(photo, image_size or 64)  # the real one's size checks
        self.photos.append(np.asarray(photo))
        value = int(np.asarray(photo).mean()) // 8 % cfg.num_masks
        labels = torch.full((photo.height, photo.width), value, dtype=torch.int64)
        small = torch.full((8, 8), value, dtype=torch.int64)
        return edl.Segmentation(
            labels=labels, model_labels=small, lowres_labels=small[:2, :2],
            diff_maps=torch.zeros(cfg.num_masks, 8, 8), mask_embeddings=torch.zeros(
                cfg.num_masks, 4), config=cfg, num_masks=cfg.num_masks, image_size=64)


@pytest.fixture
def fake(monkeypatch, tiny_model):
    """The CLI with the session's tiny model and the stand-in segmentation."""
    segment = FakeSegment()
    monkeypatch.setattr(cli, "load_model_from_args", lambda args: tiny_model)
    monkeypatch.setattr(segmentation_module, "segment", segment)
    return segment


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the CLI gets as far as loading a model."""
    def refuse(args):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(cli, "load_model_from_args", refuse)


def _photo(path, grey):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), grey, np.uint8)).save(path)
    return str(path)


def _segment(images, out, *extra):
    return main(["segment", *images, "--out", str(out), "--num-masks", "8", "--quiet", *extra])


def _label_of(out, stem):
    return int(edl.Segmentation.load(out / stem).labels[0, 0])


def test_dotted_and_same_named_inputs_never_overwrite_each_other(fake, tmp_path, capsys):
    images = [_photo(tmp_path / "d" / "frame.001.png", 8), _photo(tmp_path / "d" / "frame.002.png",
                                                                 16),
              _photo(tmp_path / "a" / "x.png", 24), _photo(tmp_path / "b" / "x.png", 32),
              _photo(tmp_path / "b" / "x.jpg", 48)]
    out = tmp_path / "out"
    assert _segment(images, out) == 0
    stems = {"frame.001": 1, "frame.002": 2, "a__x": 3, "b__x_png": 4, "b__x_jpg": 6}
    for stem, value in stems.items():
        assert _label_of(out, stem) == value % 8
        assert (out / f"{stem}_labels.png").exists() and (out / f"{stem}_overlay.png").exists()
    assert len(list(out.glob("*.npz"))) == len(images)
    err = capsys.readouterr().err
    assert "is written as 'a__x' (another input has the same name)" in err


def test_a_16bit_image_reaches_the_model_scaled(fake, tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (24, 1))
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    assert _segment([str(tmp_path / "gray16.png")], tmp_path / "out") == 0
    photo = fake.photos[0]
    assert photo.min() == 0 and photo.max() == 255 and 100 < photo.mean() < 155


def test_segment_goes_on_past_bad_images_and_reports_each(fake, tmp_path, capsys):
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    Image.new("L", (100000, 1)).save(tmp_path / "line.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    images = [_photo(tmp_path / "first.png", 8), str(tmp_path / "corrupt.png"),
              str(tmp_path / "line.png"), str(tmp_path / "anim.gif"),
              _photo(tmp_path / "last.png", 16)]
    assert _segment(images, tmp_path / "out") == 1
    for stem in ("first", "anim", "last"):
        assert (tmp_path / "out" / f"{stem}.npz").exists()
    err = capsys.readouterr().err
    report = err[err.index("emerdiff-lab: error: 2 of 5 image(s) failed:"):].splitlines()
    assert len(report) == 3
    assert "corrupt.png" in report[1] and "corrupt or not an image" in report[1]
    assert "line.png" in report[2] and "too elongated" in report[2]
    assert "emerdiff-lab: warning: image file" in err and "only the first frame is used" in err


def test_unusable_out_fails_before_any_work(no_model, tmp_path, capsys):
    image = _photo(tmp_path / "a.png", 8)
    (tmp_path / "file").write_text("")
    assert _segment([image], tmp_path / "file") == 1
    assert capsys.readouterr().err == f"emerdiff-lab: error: --out '{tmp_path / 'file'}' is a " \
                                      f"file; expected a folder\n"
    assert _segment([image], tmp_path / "file" / "sub") == 1
    assert "is not writable" in capsys.readouterr().err


def test_full_disk_fails_before_the_first_image(fake, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert _segment([_photo(tmp_path / "a.png", 8)], tmp_path / "out") == 1
    assert "MB free on the disk holding" in capsys.readouterr().err
    assert fake.photos == []


@pytest.mark.parametrize("options, message", [
    (["--modulation-strength", "nan"], "modulation_strength must be a finite number"),
    (["--modulation-strength", "inf"], "modulation_strength must be a finite number"),
    (["--blur-sigma", "inf"], "blur_sigma must be a finite number"),
    (["--seed", str(2**40)], "seed must be an integer <= 4294967295"),
    (["--image-size", "100032"], "--image-size 100032 is too large: at most 4096"),
    (["--image-size", "0"], "--image-size must be a positive integer"),
])
def test_bad_values_are_one_line_before_the_model_loads(no_model, tmp_path, capsys, options,
                                                        message):
    assert _segment([_photo(tmp_path / "a.png", 8)], tmp_path / "out", *options) == 1
    err = capsys.readouterr().err
    assert err.startswith("emerdiff-lab: error: ") and message in err
    assert err.count("\n") == 1


def test_blur_sigma_larger_than_the_image_is_refused_before_segmenting(fake, tmp_path, capsys):
    assert _segment([_photo(tmp_path / "a.png", 8)], tmp_path / "out", "--image-size", "64",
                    "--blur-sigma", "1000") == 1
    assert "blur_sigma 1000 px is larger than the 64 px image" in capsys.readouterr().err
    assert fake.photos == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_names_the_available_ones(tmp_path, capsys):
    assert _segment([_photo(tmp_path / "a.png", 8)], tmp_path / "out", "--model", "tiny",
                    "--device", "cuda") == 1
    err = capsys.readouterr().err
    assert "device 'cuda' is not available on this machine" in err and "available: cpu" in err
    assert err.count("\n") == 1


def test_model_path_that_is_not_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "weights.ckpt").write_bytes(b"")
    image = _photo(tmp_path / "a.png", 8)
    assert _segment([image], tmp_path / "out", "--model", str(tmp_path / "weights.ckpt")) == 1
    assert "is a file, not a folder; expected a diffusers folder" in capsys.readouterr().err
    assert _segment([image], tmp_path / "out", "--model", "./not_a_folder") == 1
    assert "model path './not_a_folder' does not exist" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(segmentation_module, "segment", FakeSegment(interrupt=True))
    assert _segment([_photo(tmp_path / "a.png", 8)], tmp_path / "out") == 130
    assert capsys.readouterr().err == ("emerdiff-lab: interrupted (Ctrl-C); results already "
                                       "written are kept\n")


def test_unexpected_errors_are_one_line_and_traceback_shows_them(fake, tmp_path, monkeypatch,
                                                                 capsys):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "load_model_from_args", broken)
    image = _photo(tmp_path / "a.png", 8)
    assert _segment([image], tmp_path / "out") == 1
    assert capsys.readouterr().err == ("emerdiff-lab: error: KeyError: 'a bug' (unexpected; "
                                       "rerun with --traceback and report it)\n")
    for argv in (["--traceback", "segment", image], ["segment", image, "--traceback"]):
        assert main([*argv, "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in broken" in err


def test_the_same_file_given_twice_is_segmented_once(fake, tmp_path, capsys):
    image = _photo(tmp_path / "a.png", 8)
    assert _segment([image, str(tmp_path / "." / "a.png"), image], tmp_path / "out") == 0
    assert len(fake.photos) == 1 and sorted(p.name for p in (tmp_path / "out").glob("*.npz")) \
        == ["a.npz"]
    assert "2 image(s) given more than once are segmented once" in capsys.readouterr().err
