"""Turning user images (paths, PIL, arrays, tensors) into the square tensors the model sees,
and back.

The model sees a square: the image is resized so that its shorter side is ``size`` pixels
(bicubic, antialiased), then the centre ``size`` x ``size`` square is cropped.
:class:`PreparedImage` remembers that geometry so that labels can be mapped back onto the
original image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Pillow's own hard limit (twice its warning threshold): above it the image is refused before
# decoding, and a resize may not grow an elongated image past it either (a 1x100000 image
# brought to a shorter side of 512 would be 26 gigapixels).
MAX_IMAGE_PIXELS = 178_956_970
# The largest square side the model may be asked to see: 8x SD 1.x's native 512. Beyond it the
# tensors alone take gigabytes and no Stable Diffusion UNet fits in memory anyway.
MAX_IMAGE_SIZE = 4096
# Single-channel modes holding more than 8 bits; Pillow's convert("RGB") clips them at 255
# instead of scaling, which turns a 16-bit photo white.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class PreparedImage:
    """A model-ready image and the geometry that produced it.

    Attributes:
        pixels: (3, size, size) float32 in [0, 1].
        original_size: (height, width) of the input before resizing.
        crop_box: (top, left, height, width) of the square crop in original-pixel coordinates.
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]


def load_image(src, size: int = 512) -> torch.Tensor:
    """Any image -> (3, size, size) float32 in [0, 1] (resize shorter side, centre crop).

    Args:
        src: a file path; a PIL image; a numpy array (H, W), (H, W, 3) or (H, W, 4), uint8 or
            uint16 (0-65535) or float in [0, 1]; or a tensor (3, H, W), (1, H, W), (4, H, W) or
            (H, W) float in [0, 1]. Grayscale is replicated to RGB, alpha is dropped, EXIF
            orientation is honoured; 16-bit files are scaled (65535 is white).
        size: side of the output square in pixels, at most :data:`MAX_IMAGE_SIZE`.

    Raises:
        ValueError: a bad array or size, or an image larger than :data:`MAX_IMAGE_PIXELS`
            before or after resizing.
    """
    return prepare_image(src, size).pixels


def prepare_image(src, size: int = 512) -> PreparedImage:
    """Like :func:`load_image`, also returning the geometry needed to map results back."""
    check_model_size(size)
    pixels = _to_chw_float(src)
    height, width = pixels.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    check_pixel_count(height, width, "image", resized=(new_h, new_w))
    if (new_h, new_w) != (height, width):
        pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic",
                               antialias=True, align_corners=False)[0].clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    pixels = pixels[:, top:top + size, left:left + size].contiguous()
    crop_box = (top / scale, left / scale, size / scale, size / scale)
    return PreparedImage(pixels, (int(height), int(width)), crop_box)


def check_model_size(size, name: str = "size") -> int:
    """Returns ``size`` if it is a usable side of the model's square (an int in
    [1, MAX_IMAGE_SIZE] pixels); raises ValueError saying what is expected otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"{name} must be a positive integer (pixels), got {size!r}")
    if size > MAX_IMAGE_SIZE:
        raise ValueError(f"{name} {size} is too large: at most {MAX_IMAGE_SIZE} pixels (8x SD "
                         f"1.x's native 512; a {size}x{size} square would need "
                         f"{3 * 4 * size * size / 2**30:.1f} GiB for its pixels alone)")
    return size


def check_pixel_count(height: int, width: int, what: str,
                      resized: tuple[int, int] | None = None) -> None:
    """Raises ValueError if ``what`` (H x W pixels), or the (H', W') it would be resized to,
    exceeds :data:`MAX_IMAGE_PIXELS`: a clear refusal instead of a decompression-bomb error or
    a many-gigabyte allocation."""
    limit = f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width}x{height} = {height * width / 1e6:.0f} megapixels; "
                         f"{limit}. Downscale it first (the model sees at most "
                         f"{MAX_IMAGE_SIZE} px anyway)")
    if resized is not None and resized[0] * resized[1] > MAX_IMAGE_PIXELS:
        new_h, new_w = resized
        raise ValueError(f"{what} is {width}x{height} pixels, too elongated: resizing its shorter "
                         f"side to {min(new_h, new_w)} px would make it {new_w}x{new_h} = "
                         f"{new_h * new_w / 1e6:.0f} megapixels ({limit}); crop it closer to a "
                         f"square first")


def model_pixels(image, image_size: int | None, default_size: int) -> torch.Tensor:
    """The (3, S, S) float32 the model sees. Without ``image_size`` a square (3, S, S) tensor is
    taken at its own side S and anything else is brought to ``default_size``."""
    if image_size is None and isinstance(image, torch.Tensor) and image.ndim == 3 \
            and image.shape[0] == 3 and image.shape[1] == image.shape[2]:
        return prepare_image(image, image.shape[1]).pixels
    return prepare_image(image, image_size or default_size).pixels


def labels_to_original(labels: torch.Tensor, prepared: PreparedImage) -> torch.Tensor:
    """Maps model-resolution labels (size, size) onto the original image (H, W), int64.

    The crop region gets the labels resized with nearest neighbour; pixels outside the centre crop
    (the model never saw them) take the label of the nearest pixel of the crop.
    """
    height, width = prepared.original_size
    top, left, crop_h, crop_w = prepared.crop_box
    rows = ((torch.arange(height) + 0.5 - top) / crop_h * labels.shape[0]).floor().long()
    cols = ((torch.arange(width) + 0.5 - left) / crop_w * labels.shape[1]).floor().long()
    rows = rows.clamp(0, labels.shape[0] - 1).to(labels.device)
    cols = cols.clamp(0, labels.shape[1] - 1).to(labels.device)
    return labels[rows[:, None], cols[None, :]]


def _to_chw_float(src) -> torch.Tensor:
    if isinstance(src, (str, Path)):
        return _from_pil(open_image(Path(src)))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(src, Image.Image):
        return _from_pil(src)
    if isinstance(src, np.ndarray):
        # torch warns about read-only arrays (np.asarray of a PIL image is one): copy those.
        array = np.ascontiguousarray(src) if src.flags.writeable else np.array(src)
        return _from_array(torch.from_numpy(array), channels_last=True)
    if isinstance(src, torch.Tensor):
        return _from_array(src.detach().cpu(), channels_last=False)
    raise ValueError(f"image must be a path, PIL image, numpy array or torch tensor, "
                     f"got {type(src).__name__}")


def open_image(path: Path):
    """Opens an image file as a PIL image whose ``convert("RGB")`` is right.

    EXIF orientation is applied; 16-bit and other high-bit-depth grayscale files are scaled
    into 8-bit "L" (65535 -> 255); an animated or multi-page file gives its first frame, with a
    warning saying so. Missing, corrupt and oversized files (more than
    :data:`MAX_IMAGE_PIXELS`) get errors that name the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"image path {str(path)!r} is a directory; expected an image file")
    if path.stat().st_size == 0:
        raise OSError(f"image file {str(path)!r} is empty")
    try:
        with warnings.catch_warnings():
            # Our own limit (MAX_IMAGE_PIXELS) replaces Pillow's warning below its hard limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixel_count(image.height, image.width, f"image file {str(path)!r}")
                frames = getattr(image, "n_frames", 1)
                image.load()
                image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image file {str(path)!r} is too large ({error}); the limit is "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: downscale it first") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise OSError(f"cannot read image file {str(path)!r}: it is corrupt or not an image "
                      f"({error})") from error
    if frames > 1:
        warnings.warn(f"image file {str(path)!r} has {frames} frames (animated or multi-page); "
                      f"only the first frame is used", UserWarning, stacklevel=2)
    unit = _high_bit_depth_unit(image, f"image file {str(path)!r}")
    if unit is not None:
        return Image.fromarray((unit * 255).round().astype(np.uint8), mode="L")
    return image


def _high_bit_depth_unit(image, what: str) -> np.ndarray | None:
    """A single-channel image of more than 8 bits as (H, W) float32 in [0, 1]; None for others.

    16-bit modes are divided by 65535. Mode "I" (32-bit int, which is how some readers hand
    over 16-bit files) must hold values in [0, 65535] and is scaled the same way; mode "F"
    (32-bit float) must already lie in [0, 1].
    """
    if image.mode not in _HIGH_BIT_DEPTH_MODES:
        return None
    values = np.asarray(image).astype(np.float32)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise ValueError(f"{what} is a 32-bit float image with values in [{low:.3g}, "
                             f"{high:.3g}]; expected values in [0, 1]")
        return values
    if low < 0 or high > 65535:
        raise ValueError(f"{what} is a 32-bit integer image with values in [{low:.0f}, "
                         f"{high:.0f}]; expected 16-bit values in [0, 65535]")
    return values / 65535


def _from_pil(image) -> torch.Tensor:
    unit = _high_bit_depth_unit(image, f"PIL image of mode {image.mode!r}")
    if unit is not None:  # kept in float: no rounding to 8 bits on the way
        return torch.from_numpy(unit)[None].expand(3, -1, -1).contiguous()
    if image.mode not in ("RGB", "L", "RGBA", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    array = np.asarray(image)
    return _from_array(torch.from_numpy(array.copy()), channels_last=True)


def _from_array(array: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """(H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4} -> (3, H, W) float32 in [0, 1]."""
    if array.numel() == 0:
        raise ValueError(f"image array is empty (shape {tuple(array.shape)})")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        if channels_last:
            array = array.permute(2, 0, 1)
    else:
        layout = "(H, W) or (H, W, C)" if channels_last else "(C, H, W) or (H, W)"
        raise ValueError(f"image array must have shape {layout} with C in 1, 3, 4; "
                         f"got rank {array.ndim} shape {tuple(array.shape)}")
    if array.shape[0] not in (1, 2, 3, 4):
        layout = "(H, W, C)" if channels_last else "(C, H, W)"
        raise ValueError(f"image array must be {layout} with C in 1, 3 or 4 channels; "
                         f"got shape {tuple(array.shape)}")
    if array.shape[0] in (2, 4):  # drop alpha
        array = array[:-1]
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    if array.dtype == torch.uint8:
        return array.float() / 255
    if array.dtype == torch.uint16:
        return array.float() / 65535
    if array.dtype == torch.bool or not torch.is_floating_point(array):
        raise ValueError(f"image array must be uint8 (0-255), uint16 (0-65535) or float in "
                         f"[0, 1], "
                         f"got dtype {array.dtype}")
    array = array.float()
    if not torch.isfinite(array).all():
        raise ValueError("image array contains NaN or infinite values")
    low, high = array.min().item(), array.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"float image values must lie in [0, 1], got range [{low:.3g}, "
                         f"{high:.3g}]; pass uint8 for 0-255 data")
    return array.contiguous()


def sample_images() -> dict[str, Path]:
    """The photos bundled with the package (scikit-image's CC0 / public-domain samples, shorter
    side 256 px): name -> path. See ``emerdiff_lab/assets/README.md`` for their sources."""
    assets = Path(__file__).parent / "assets"
    return {path.stem: path for path in sorted(assets.glob("*.jpg"))}
