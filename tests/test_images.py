"""Every accepted input form, EXIF orientation, geometry, and clear errors for bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

import emerdiff_lab as edl
from emerdiff_lab.images import labels_to_original


def _rgb(h=40, w=60):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("make", [
    lambda a: a,                                            # uint8 HxWx3
    lambda a: a.astype(np.float32) / 255,                   # float HxWx3
    lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]),   # RGBA
    lambda a: Image.fromarray(a),                           # PIL
    lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,    # tensor 3xHxW
])
def test_rgb_forms_agree(make):
    array = _rgb()
    expected = edl.load_image(array, size=32)
    out = edl.load_image(make(array), size=32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5)


def test_grayscale_is_replicated():
    gray = np.random.default_rng(1).integers(0, 256, (50, 50), dtype=np.uint8)
    for form in (gray, Image.fromarray(gray), torch.from_numpy(gray).float() / 255):
        out = edl.load_image(form, size=32)
        assert out.shape == (3, 32, 32)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_path_and_exif_orientation(tmp_path):
    array = _rgb(30, 50)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    prepared = edl.prepare_image(path, size=32)
    assert prepared.original_size == (50, 30)  # height and width swapped by the orientation


def test_centre_crop_geometry_and_mapping_back():
    prepared = edl.prepare_image(np.zeros((100, 200, 3), np.uint8), size=64)
    assert prepared.original_size == (100, 200)
    assert prepared.crop_box == pytest.approx((0, 50, 100, 100))
    labels = torch.arange(4).view(2, 2).repeat_interleave(32, 0).repeat_interleave(32, 1)
    back = labels_to_original(labels, prepared)
    assert back.shape == (100, 200)
    assert back[0, 0] == 0 and back[0, -1] == 1 and back[-1, 0] == 2 and back[-1, -1] == 3
    assert back[10, 60] == 0 and back[10, 140] == 1  # inside the crop


def test_missing_empty_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        edl.load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(OSError, match="empty"):
        edl.load_image(tmp_path / "empty.png")
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(OSError, match="corrupt or not an image"):
        edl.load_image(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match="directory"):
        edl.load_image(tmp_path)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.zeros((2, 3, 4, 5), np.uint8), "rank 4"),
    (np.zeros((8, 8, 5), np.uint8), "1, 3 or 4 channels"),
    (np.full((8, 8, 3), 2.0), r"\[0, 1\]"),
    (np.full((8, 8, 3), np.nan), "NaN"),
    (np.zeros((8, 8, 3), np.int32), "dtype"),
    ("not a path at all.png", "not found"),
    (42, "path, PIL image, numpy array or torch tensor"),
])
def test_bad_arrays_are_refused(bad, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        edl.load_image(bad, size=32)


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="size"):
        edl.load_image(_rgb(), size=0)
