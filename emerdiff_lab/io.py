"""Writing files and choosing where they go: the one atomic writer every file of the project
goes through, segmentations as images (palette label PNGs, overlays on the photo), output names
that cannot collide, output folders checked before any work."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch


# Test hook (tests/test_reliability_writes.py): when set to a file path, the writer of a file
# whose name ends with EMERDIFF_TEST_PAUSE_ON (default: any) writes that file's final path into
# it, then waits, before renaming its temporary file, so that a test can send SIGINT at exactly
# that point instead of racing a timer.
PAUSE_HOOK = "EMERDIFF_TEST_PAUSE_BEFORE_WRITE"
PAUSE_ON = "EMERDIFF_TEST_PAUSE_ON"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on a normal exit of the block it is synced
    to disk and renamed to ``path`` (``os.replace``: atomic on POSIX and Windows), so a reader,
    a kill or a full disk never leaves a partial file under the final name. On an exception
    (Ctrl-C included) the temporary file is removed and ``path`` is left as it was.

    Use it for writers that want a file name (``safetensors.torch.save_file``); others take
    :func:`atomic_file`. Temporary names are ``.<name>.<pid>.<thread>.tmp`` (hidden, in the
    same folder, so the rename never crosses file systems; ``evaluate`` removes leftovers).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        _pause_for_tests(path)
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the data reaches the disk before the name points to it
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator:
    """An open file object whose contents appear under ``path`` only once the block ends
    without an exception (see :func:`atomic_path`). ``mode``: "wb" or "w" (text)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle


def write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def _pause_for_tests(path: Path) -> None:
    signal_file = os.environ.get(PAUSE_HOOK)
    if not signal_file or not path.name.endswith(os.environ.get(PAUSE_ON, "")):
        return
    Path(signal_file).write_text(str(path))
    time.sleep(60)  # a test interrupts this; if none does, the write goes on


def label_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (num_colors, 3) uint8, distinct colours for small ids."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colorize(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 RGB with the VOC palette (ids mod 256)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return label_palette()[labels.astype(np.int64) % 256]


def save_label_png(labels: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Writes (H, W) labels in [0, 256) as a palette PNG (pixel value = label id)."""
    from PIL import Image

    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"labels must be (H, W) with ids in [0, 255], got shape {labels.shape} "
                         f"range [{labels.min()}, {labels.max()}]")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(label_palette().reshape(-1).tolist())
    with atomic_file(path) as handle:
        image.save(handle, format="PNG")
    return Path(path)


def overlay(photo, labels: torch.Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Labels blended over a photo of the same (H, W): (H, W, 3) uint8."""
    photo = np.asarray(photo.convert("RGB") if hasattr(photo, "convert") else photo)
    if photo.dtype != np.uint8:
        photo = (np.clip(photo, 0, 1) * 255).round().astype(np.uint8)
    colors = colorize(labels)
    if colors.shape != photo.shape:
        raise ValueError(f"photo {photo.shape} and labels {colors.shape[:2]} differ in size")
    return (photo * (1 - alpha) + colors * alpha).round().astype(np.uint8)


def save_overlay_png(photo, labels, path: str | Path, alpha: float = 0.5) -> Path:
    """Writes :func:`overlay` of ``labels`` on ``photo`` as an RGB PNG."""
    from PIL import Image

    with atomic_file(path) as handle:
        Image.fromarray(overlay(photo, labels, alpha)).save(handle, format="PNG")
    return Path(path)


def unique_output_stems(paths: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """One output stem per input file, no two alike, and notes on each input that was renamed.

    The stem is the file name without its last suffix, inner dots kept (``frame.001.png`` ->
    ``frame.001``). Inputs whose stems collide (compared case-insensitively, as macOS and
    Windows file systems do) are told apart, in this order, by their folders relative to the
    folder they share (``a/x.png``, ``b/x.png`` -> ``a__x``, ``b__x``), by their suffix
    (``x.png``, ``x.jpg`` -> ``x_png``, ``x_jpg``), and as a last resort by a number.

    Returns:
        (stems aligned with ``paths``, one human-readable note per renamed input).
    """
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    for rename in (_by_relative_folder, _by_suffix):
        for group in _collisions(stems):
            for index in group:
                stems[index] = rename(paths[index], stems[index], [paths[i] for i in group])
    while collisions := _collisions(stems):
        for group in collisions:
            for number, index in enumerate(group[1:], 2):
                stems[index] = f"{stems[index]}-{number}"
    notes = [f"{str(path)!r} is written as {stem!r} (another input has the same name)"
             for path, stem in zip(paths, stems) if stem != path.stem]
    return stems, notes


def segment_outputs(out: str | Path, stem: str) -> dict[str, Path]:
    """The files ``emerdiff-lab segment`` writes for one input of output stem ``stem``:
    ``{"arrays": STEM.npz, "record": STEM.json, "labels": STEM_labels.png,
    "overlay": STEM_overlay.png}`` (the .npz and .json are :meth:`Segmentation.save`'s pair)."""
    out = Path(out)
    return {"arrays": out / f"{stem}.npz", "record": out / f"{stem}.json",
            "labels": out / f"{stem}_labels.png", "overlay": out / f"{stem}_overlay.png"}


def check_outputs(inputs: Sequence[str | Path], outputs: Sequence[dict[str, Path]]) -> None:
    """Raises ValueError, before anything is written, if two inputs would write one file
    (compared up to case, as macOS and Windows do) or an output would replace an input file
    (the same file by device and inode, so links and case-insensitive names count too), which
    would also read a result back as an input later in the run. ``outputs[i]``: the files of
    ``inputs[i]`` (:func:`segment_outputs`)."""
    writer: dict[str, Path] = {}
    for source, files in zip(inputs, outputs):
        for path in files.values():
            other = writer.setdefault(str(path).casefold(), Path(source))
            if other != Path(source):
                raise ValueError(f"{str(other)!r} and {str(source)!r} would both write "
                                 f"{str(path)!r}; rename one of them")
    identities = {_identity(path): Path(path) for path in inputs}
    for source, files in zip(inputs, outputs):
        for kind, path in files.items():
            replaced = identities.get(_identity(path)) if path.exists() else None
            if replaced is not None:
                raise ValueError(
                    f"--out {str(path.parent)!r} would overwrite the input {str(replaced)!r} "
                    f"with the {kind} of {str(source)!r}; choose another --out (nothing was "
                    f"written)")


def _identity(path: str | Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _collisions(stems: list[str]) -> list[list[int]]:
    """Groups of indices whose stems are equal up to case."""
    groups: dict[str, list[int]] = {}
    for index, stem in enumerate(stems):
        groups.setdefault(stem.casefold(), []).append(index)
    return [group for group in groups.values() if len(group) > 1]


def _by_relative_folder(path: Path, stem: str, group: list[Path]) -> str:
    common = Path(os.path.commonpath([p.resolve().parent for p in group]))
    folders = path.resolve().parent.relative_to(common).parts
    return "__".join((*folders, stem))


def _by_suffix(path: Path, stem: str, group: list[Path]) -> str:
    return f"{stem}_{path.suffix.lstrip('.')}" if path.suffix else stem


def prepare_output_dir(out: str | Path, option: str = "--out") -> Path:
    """Creates ``out`` if needed and proves it writable by writing and removing a small file,
    so that a read-only, missing or mistyped output folder fails before any computation."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{option} {str(out)!r} is a file; expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".emerdiff-write-check-"):
            pass
    except OSError as error:
        raise OSError(f"{option} {str(out)!r} is not writable: "
                      f"{error.strerror or error}") from error
    return out


def check_free_space(out: str | Path, needed_bytes: int, what: str) -> None:
    """Raises OSError if the disk holding ``out`` has less than ``needed_bytes`` free, naming
    ``what`` needs them, so that a full disk fails before the first result is computed."""
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise OSError(f"only {free / 1e6:.1f} MB free on the disk holding {str(out)!r}; "
                      f"{what} needs up to {needed_bytes / 1e6:.1f} MB")
