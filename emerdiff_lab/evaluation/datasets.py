"""Readers for segmentation benchmarks in their standard local layouts (no downloads).

``open_dataset(name, root)`` returns a :class:`SegmentationDataset`: a list of (image, label)
files plus the lookup table that turns raw label values into class ids in [0, num_classes) or
``ignore_index``. Layouts are checked up front; a folder in the wrong layout gets an error that
says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import classnames as names

DATASETS = ("ade20k", "cocostuff27", "cocostuff171", "pascal-context59", "cityscapes19",
            "cityscapes27", "voc", "folder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Sample:
    """One evaluation item: a stable ``id`` (used to name result files), image and label paths."""

    id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class SegmentationDataset:
    """Samples plus how to read their labels.

    Attributes:
        name: one of :data:`DATASETS`.
        root: the folder the user gave.
        samples: sorted by id, so that ``--limit N`` always means the same N images.
        num_classes: classes scored; class ids are in [0, num_classes).
        class_names: one name per class (None for a folder without names).
        ignore_index: value of unlabelled pixels after the lookup.
        lookup: (256,) int64 raw PNG value -> class id or ``ignore_index``; None keeps raw values.
    """

    name: str
    root: Path
    samples: tuple[Sample, ...]
    num_classes: int
    class_names: tuple[str, ...] | None = None
    ignore_index: int = 255
    lookup: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_unique_ids(self.name, self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def load_label(self, sample: Sample) -> np.ndarray:
        """(H, W) int64 class ids in [0, num_classes) or ``ignore_index``."""
        raw = read_label_png(sample.label)
        if self.lookup is not None:
            if raw.max(initial=0) >= len(self.lookup):
                raise ValueError(f"label {sample.label} has value {raw.max()}, outside the "
                                 f"{self.name} lookup table (0-{len(self.lookup) - 1})")
            return self.lookup[raw]
        bad = (raw != self.ignore_index) & ((raw < 0) | (raw >= self.num_classes))
        if bad.any():
            raise ValueError(f"label {sample.label} has values {sorted(np.unique(raw[bad]))[:5]} "
                             f"outside [0, {self.num_classes}) and != ignore_index "
                             f"({self.ignore_index}); pass --num-classes or --ignore-index")
        return raw


def check_unique_ids(name: str, samples) -> None:
    """Raises ValueError naming both files when two samples share an id.

    Records are files named by id, so two images with one id (``scene00.jpg`` and
    ``scene00.png``) would overwrite each other's record and be scored as one. Ids are compared
    case-insensitively because the output folder may be on a case-insensitive file system.
    """
    seen: dict[str, Sample] = {}
    for sample in samples:
        other = seen.setdefault(sample.id.casefold(), sample)
        if other is not sample:
            raise ValueError(f"{name}: images {str(other.image)!r} and {str(sample.image)!r} "
                             f"have the same id {sample.id!r} (records are named by id, so one "
                             f"would overwrite the other); rename or remove one of them")


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as (H, W) int64: palette indices for "P" images, raw values for "L"/"I"."""
    from PIL import Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"label file not found: {str(path)!r}")
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"label {str(path)!r} has mode {image.mode}; expected a "
                             f"single-channel PNG (palette 'P' or grayscale 'L') holding class "
                             f"ids")
        return np.asarray(image).astype(np.int64)


def label_to_model(label: np.ndarray, image_size: int) -> np.ndarray:
    """The label seen through the model's geometry: (H, W) -> (S, S) int64.

    The same shorter-side resize and centre crop as :func:`emerdiff_lab.prepare_image`, with
    nearest-neighbour sampling so that no new class ids appear. Every method is scored at this
    resolution, so EmerDiff and the baseline see exactly the same pixels.
    """
    height, width = label.shape
    scale = image_size / min(height, width)
    new_h, new_w = max(image_size, round(height * scale)), max(image_size, round(width * scale))
    resized = torch.from_numpy(label.astype(np.float32))[None, None]
    if (new_h, new_w) != (height, width):
        resized = F.interpolate(resized, size=(new_h, new_w), mode="nearest-exact")
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    crop = resized[0, 0, top:top + image_size, left:left + image_size]
    return crop.round().long().numpy()


def open_dataset(name: str, root: str | Path, *, split: str = "val", ignore_index: int = 255,
                 num_classes: int | None = None,
                 class_names: tuple[str, ...] | None = None) -> SegmentationDataset:
    """Reads the file list of dataset ``name`` under ``root`` (see ``docs/evaluation.md``).

    Args:
        name: one of :data:`DATASETS`.
        root: the dataset folder (or, for VOC-style sets, a parent of ``VOCdevkit``).
        split: "val" (the benchmarks' evaluation split) or "train".
        ignore_index, num_classes, class_names: only for ``folder``; the benchmarks fix their own.
    """
    root = Path(root)
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root (--root) not found or not a folder: {str(root)!r}")
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    if name == "folder":
        return _folder(root, ignore_index, num_classes, class_names)
    reader = {"ade20k": _ade20k, "cocostuff27": _cocostuff, "cocostuff171": _cocostuff,
              "pascal-context59": _pascal_context, "cityscapes19": _cityscapes,
              "cityscapes27": _cityscapes, "voc": _voc}[name]
    return reader(name, root, split)


def _lookup(mapping: dict[int, int], ignore_index: int = 255) -> np.ndarray:
    table = np.full(256, ignore_index, dtype=np.int64)
    for raw, cls in mapping.items():
        table[raw] = cls
    return table


def _first_dir(candidates: list[Path], name: str, expected: str) -> Path:
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{name}: expected {expected}; none of these folders exists: {tried}")


def _pair_by_stem(name: str, image_dir: Path, label_dir: Path, label_suffix: str = ".png",
                  image_glob: tuple[str, ...] = IMAGE_SUFFIXES) -> tuple[Sample, ...]:
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in image_glob)
    if not images:
        raise FileNotFoundError(f"{name}: no images ({', '.join(image_glob)}) in {image_dir}")
    missing = [p.name for p in images if not (label_dir / (p.stem + label_suffix)).is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} image(s) have no label "
                                f"{label_dir}/<stem>{label_suffix}, e.g. {missing[:3]}")
    return tuple(Sample(p.stem, p, label_dir / (p.stem + label_suffix)) for p in images)


def _from_list(name: str, base: Path, list_file: Path, image_dir: str,
               label_dir: str) -> tuple[Sample, ...]:
    if not list_file.is_file():
        raise FileNotFoundError(f"{name}: split list {list_file} not found")
    samples = []
    for stem in sorted(line.strip() for line in list_file.read_text().splitlines()
                       if line.strip()):
        image, label = base / image_dir / f"{stem}.jpg", base / label_dir / f"{stem}.png"
        for path in (image, label):
            if not path.is_file():
                raise FileNotFoundError(f"{name}: {list_file.name} lists {stem!r} but {path} "
                                        f"does not exist")
        samples.append(Sample(stem, image, label))
    if not samples:
        raise FileNotFoundError(f"{name}: split list {list_file} is empty")
    return tuple(samples)


def _ade20k(name: str, root: Path, split: str) -> SegmentationDataset:
    sub = {"val": "validation", "train": "training"}[split]
    expected = f"ADEChallengeData2016/images/{sub}/*.jpg and annotations/{sub}/*.png"
    image_dir = _first_dir([root / "images" / sub, root / "ADEChallengeData2016" / "images" / sub],
                           name, expected)
    label_dir = _first_dir([image_dir.parent.parent / "annotations" / sub], name, expected)
    # Raw 0 is "other/unlabelled"; classes are 1..150.
    lookup = _lookup({raw: raw - 1 for raw in range(1, 151)})
    return SegmentationDataset(name, root, _pair_by_stem(name, image_dir, label_dir), 150,
                               names.ADE20K_150, 255, lookup)


def _cocostuff(name: str, root: Path, split: str) -> SegmentationDataset:
    sub = f"{split}2017"
    image_dir = _first_dir([root / "images" / sub, root / sub], name,
                           f"COCO images in images/{sub}/ (or {sub}/)")
    label_dir = _first_dir([root / "stuffthingmaps_trainval2017" / sub,
                            root / "stuffthingmaps" / sub, root / "annotations" / sub], name,
                           f"stuffthingmaps PNGs (values 0-181, 255 unlabelled) in "
                           f"stuffthingmaps_trainval2017/{sub}/, stuffthingmaps/{sub}/ or "
                           f"annotations/{sub}/")
    samples = _pair_by_stem(name, image_dir, label_dir, image_glob=(".jpg",))
    if name == "cocostuff171":
        used = [fine for fine, cls in enumerate(names.COCOSTUFF_182) if cls is not None]
        lookup = _lookup({fine: i for i, fine in enumerate(used)})
        return SegmentationDataset(name, root, samples, 171, names.COCOSTUFF_171, 255, lookup)
    lookup = _lookup(names.cocostuff_fine_to_coarse())
    return SegmentationDataset(name, root, samples, 27, names.COCOSTUFF_27, 255, lookup)


def _voc_base(name: str, root: Path, year: str, needed: str) -> Path:
    """ROOT may be VOC{year} itself, VOCdevkit, or the folder holding VOCdevkit."""
    candidates = [root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    for base in candidates:
        if (base / needed).is_dir():
            return base
    raise FileNotFoundError(f"{name}: expected VOCdevkit/VOC{year}/ holding JPEGImages/ and "
                            f"{needed}/; looked in {', '.join(str(c) for c in candidates)}")


def _pascal_context(name: str, root: Path, split: str) -> SegmentationDataset:
    # SegmentationClassContext/*.png: 0 = background, 1-59 classes, as written by
    # mmsegmentation's tools/dataset_converters/pascal_context.py.
    base = _voc_base(name, root, "2010", "SegmentationClassContext")
    samples = _from_list(name, base, base / "ImageSets" / "SegmentationContext" / f"{split}.txt",
                         "JPEGImages", "SegmentationClassContext")
    lookup = _lookup({raw: raw - 1 for raw in range(1, 60)})  # 0 = background, not scored
    return SegmentationDataset(name, root, samples, 59, names.PASCAL_CONTEXT_59, 255, lookup)


def _voc(name: str, root: Path, split: str) -> SegmentationDataset:
    base = _voc_base(name, root, "2012", "SegmentationClass")
    samples = _from_list(name, base, base / "ImageSets" / "Segmentation" / f"{split}.txt",
                         "JPEGImages", "SegmentationClass")
    lookup = _lookup({raw: raw for raw in range(21)})
    return SegmentationDataset(name, root, samples, 21, names.VOC_21, 255, lookup)


def _cityscapes(name: str, root: Path, split: str) -> SegmentationDataset:
    image_root = _first_dir([root / "leftImg8bit" / split], name,
                            f"leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    label_root = _first_dir([root / "gtFine" / split], name,
                            f"gtFine/{split}/<city>/*_gtFine_labelIds.png")
    samples = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image.name[:-len("_leftImg8bit.png")]
        label = label_root / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise FileNotFoundError(f"{name}: image {image} has no label {label}")
        samples.append(Sample(stem, image, label))
    if not samples:
        raise FileNotFoundError(f"{name}: no leftImg8bit/{split}/<city>/*_leftImg8bit.png "
                                f"under {root}")
    if name == "cityscapes19":
        lookup = _lookup({raw: i for i, raw in enumerate(names.CITYSCAPES_19_LABEL_IDS)})
        return SegmentationDataset(name, root, tuple(samples), 19, names.CITYSCAPES_19, 255,
                                   lookup)
    lookup = _lookup({raw: raw - 7 for raw in range(7, 34)})  # PiCIE/STEGO: first non-void is 7
    return SegmentationDataset(name, root, tuple(samples), 27, names.CITYSCAPES_27, 255, lookup)


def _folder(root: Path, ignore_index: int, num_classes: int | None,
            class_names: tuple[str, ...] | None) -> SegmentationDataset:
    expected = "ROOT/images/*.{jpg,jpeg,png} with ROOT/labels/<stem>.png"
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise FileNotFoundError(f"folder dataset: expected {expected}; {root} has "
                                f"{sorted(p.name for p in root.iterdir())[:10]}")
    samples = _pair_by_stem("folder", root / "images", root / "labels")
    if num_classes is None:
        # Inferred from the data: the largest non-ignored value over every label, plus one.
        largest = -1
        for sample in samples:
            raw = read_label_png(sample.label)
            valid = raw[raw != ignore_index]
            largest = max(largest, int(valid.max(initial=-1)))
        if largest < 0:
            raise ValueError(f"folder dataset: every label pixel equals ignore_index "
                             f"({ignore_index}); nothing to score")
        num_classes = largest + 1
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but num_classes is "
                         f"{num_classes}")
    return SegmentationDataset("folder", root, samples, num_classes,
                               tuple(class_names) if class_names else None, ignore_index, None)
