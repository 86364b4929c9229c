"""Bad or unusual inputs get a correct result or a clear message, never a silently wrong one:
high-bit-depth and animated images, oversized images and sizes, non-finite hyperparameters,
seeds, dotted output names and corrupt saved results (issue 15). No model is run here."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import emerdiff_lab as edl
from emerdiff_lab.config import check_blur_sigma
from emerdiff_lab.images import MAX_IMAGE_PIXELS, open_image


def _png_header_only(path, width, height):
    """A PNG that declares width x height 8-bit gray pixels but holds almost no data: Pillow
    reads the size from the header, so it stands in for a 400-megapixel file without the
    400 MB."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def _gradient16(path):
    """A 16-bit grayscale PNG: a horizontal ramp from 0 to 65535 over 64 x 64 pixels."""
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (64, 1))).save(path)
    assert Image.open(path).mode == "I;16"  # what Pillow makes of a 16-bit PNG
    return ramp / 65535


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    expected = _gradient16(tmp_path / "gray16.png")
    for source in (tmp_path / "gray16.png", Image.open(tmp_path / "gray16.png"),
                   np.asarray(Image.open(tmp_path / "gray16.png"))):
        image = edl.load_image(source, size=64)
        assert image.shape == (3, 64, 64)
        # Full 16-bit precision for a PIL image or array; the path goes through 8 bits.
        np.testing.assert_allclose(image[0, 0].numpy(), expected, atol=1 / 255)
        assert image.min() < 0.01 and image.max() > 0.99
    # The CLI and the evaluation read files with open_image(...).convert("RGB").
    rgb = np.asarray(open_image(tmp_path / "gray16.png").convert("RGB"))
    np.testing.assert_allclose(rgb[0, :, 0] / 255, expected, atol=1 / 255)


def test_high_bit_depth_values_out_of_range_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(tmp_path / "i32.tif")
    with pytest.raises(ValueError, match=r"expected 16-bit values in \[0, 65535\]"):
        edl.load_image(tmp_path / "i32.tif", size=8)
    with pytest.raises(ValueError, match=r"expected values in \[0, 1\]"):
        edl.load_image(Image.fromarray(np.full((8, 8), 3.0, np.float32), mode="F"), size=8)


def test_animated_image_warns_that_the_first_frame_is_used(tmp_path):
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="has 3 frames.*only the first frame is used"):
        image = edl.load_image(tmp_path / "anim.gif", size=16)
    assert image[0].mean() > 0.9 and image[2].mean() < 0.1  # red: the first frame


def test_huge_file_is_refused_with_a_message_not_a_decompression_bomb(tmp_path):
    path = _png_header_only(tmp_path / "huge.png", 20000, 20000)  # 400 megapixels
    with pytest.raises(ValueError, match="huge.png.*megapixels.*Downscale|huge.png.*too large"):
        edl.load_image(path, size=64)
    # Between Pillow's warning and error thresholds our own limit decides, without a warning.
    side = int((MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    with pytest.raises(ValueError, match="megapixels"):
        open_image(_png_header_only(tmp_path / "big.png", side, side))


def test_elongated_image_and_huge_size_are_refused_before_allocating(tmp_path):
    Image.new("L", (100000, 1)).save(tmp_path / "line.png")
    with pytest.raises(ValueError, match="too elongated.*crop it"):
        edl.load_image(tmp_path / "line.png", size=64)
    with pytest.raises(ValueError, match="size 100032 is too large: at most 4096"):
        edl.load_image(torch.rand(3, 8, 8), size=100032)


@pytest.mark.parametrize("changes, message", [
    ({"modulation_strength": float("nan")}, "modulation_strength must be a finite number"),
    ({"modulation_strength": float("inf")}, "modulation_strength must be a finite number"),
    ({"blur_sigma": float("inf")}, "blur_sigma must be a finite number"),
    ({"blur_sigma": float("nan")}, "blur_sigma must be a finite number"),
    ({"seed": 2**40}, r"seed must be an integer <= 4294967295 \(numpy and scikit-learn"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_non_finite_hyperparameters_and_big_seeds_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        edl.EmerDiffConfig().replace(**changes)
    assert edl.EmerDiffConfig(seed=2**32 - 1).seed == 2**32 - 1  # the largest valid seed


def test_blur_sigma_is_bounded_by_the_image():
    check_blur_sigma(64.0, 64)
    with pytest.raises(ValueError, match="blur_sigma 1e\\+06 px is larger than the 64 px image"):
        check_blur_sigma(1e6, 64)


def _segmentation(value=0, k=2, size=8):
    labels = torch.full((size, size), value, dtype=torch.int64)
    return edl.Segmentation(labels=labels, model_labels=labels, lowres_labels=labels[:2, :2],
                            diff_maps=torch.zeros(k, size, size), mask_embeddings=torch.zeros(k, 3),
                            config=edl.EmerDiffConfig(num_masks=k), num_masks=k, image_size=size)


def test_save_keeps_dotted_stems_and_load_reads_them_back(tmp_path):
    for index in (1, 2):
        path = _segmentation(value=index).save(tmp_path / f"frame.00{index}")
        assert path.name == f"frame.00{index}.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frame.001.json", "frame.001.npz", "frame.002.json", "frame.002.npz"]
    for index in (1, 2):
        for given in (f"frame.00{index}", f"frame.00{index}.npz", f"frame.00{index}.json"):
            assert int(edl.Segmentation.load(tmp_path / given).labels[0, 0]) == index
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_loading_a_corrupt_result_names_the_file(tmp_path):
    _segmentation().save(tmp_path / "x")
    (tmp_path / "x.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"x\.npz is corrupt.*not a \.npz archive"):
        edl.Segmentation.load(tmp_path / "x")
    _segmentation().save(tmp_path / "y")
    (tmp_path / "y.json").write_text("{ truncated")
    with pytest.raises(ValueError, match=r"y\.json is corrupt"):
        edl.Segmentation.load(tmp_path / "y")
    _segmentation().save(tmp_path / "z")
    with open(tmp_path / "z.npz", "r+b") as handle:  # a zip whose member is damaged
        handle.seek(60)
        handle.write(b"\xff" * 40)
    with pytest.raises(ValueError, match=r"z\.npz is corrupt"):
        edl.Segmentation.load(tmp_path / "z")


def test_two_inputs_writing_one_file_are_detected_before_anything_is_written(tmp_path):
    from emerdiff_lab.io import check_outputs, segment_outputs

    inputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in inputs:
        path.write_bytes(b"")
    out = tmp_path / "out"
    check_outputs(inputs, [segment_outputs(out, "a"), segment_outputs(out, "b")])
    with pytest.raises(ValueError, match=r"'.*a\.png' and '.*b\.png' would both write "
                                         r"'.*X\.npz'; rename one of them"):
        check_outputs(inputs, [segment_outputs(out, "x"), segment_outputs(out, "X")])


def _png_rgb16(path, rgb):
    """A 4x4 16-bit RGB PNG of one colour (Pillow cannot write one): chunks by hand."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + struct.pack(">3H", *rgb) * 4  # filter 0, then 4 big-endian RGB pixels
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2,
                                                                       0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(row * 4)) + chunk(b"IEND", b""))
    return path


def test_16bit_rgb_png_is_read_correctly_scaled(tmp_path):
    pixels = edl.load_image(_png_rgb16(tmp_path / "rgb16.png", (65535, 32896, 0)), size=64)
    assert pixels.shape == (3, 64, 64)
    assert torch.allclose(pixels[:, 32, 32], torch.tensor([1.0, 128 / 255, 0.0]), atol=1e-6)
