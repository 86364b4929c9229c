"""Each dataset reader on a tiny synthetic folder in its real layout; clear errors otherwise."""

import numpy as np
import pytest
from PIL import Image

from emerdiff_lab.evaluation.datasets import label_to_model, open_dataset

H, W = 6, 8


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(path)


def _label(path, values):
    """A label PNG whose first pixels hold ``values`` (rest: values[0])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full(H * W, values[0], np.uint8)
    array[:len(values)] = values
    Image.fromarray(array.reshape(H, W), mode="L").save(path)


def _first(dataset, count):
    return dataset.load_label(dataset[0]).reshape(-1)[:count].tolist()


def test_ade20k(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for stem in ("ADE_val_00000002", "ADE_val_00000001"):
        _image(base / "images" / "validation" / f"{stem}.jpg")
        _label(base / "annotations" / "validation" / f"{stem}.png", [0, 1, 150])
    dataset = open_dataset("ade20k", tmp_path)  # the parent of ADEChallengeData2016 works too
    assert len(dataset) == 2 and dataset.num_classes == 150
    assert [s.id for s in dataset.samples] == ["ADE_val_00000001", "ADE_val_00000002"]
    assert _first(dataset, 3) == [255, 0, 149]
    assert dataset.class_names[0] == "wall"


@pytest.mark.parametrize("name, expected", [("cocostuff171", [0, 10, 255, 11, 170, 255]),
                                            ("cocostuff27", [9, 8, 8, 8, 24, 255])])
def test_cocostuff(tmp_path, name, expected):
    _image(tmp_path / "images" / "val2017" / "000000000139.jpg")
    # person, fire hydrant, street sign (never annotated), stop sign, wood, unlabelled
    _label(tmp_path / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png",
           [0, 10, 11, 12, 181, 255])
    dataset = open_dataset(name, tmp_path)
    assert dataset.num_classes == int(name.removeprefix("cocostuff"))
    assert len(dataset.class_names) == dataset.num_classes
    assert _first(dataset, 6) == expected


def _voc_like(root, year, label_dir, list_dir, values):
    base = root / "VOCdevkit" / f"VOC{year}"
    _image(base / "JPEGImages" / "2008_000002.jpg")
    _image(base / "JPEGImages" / "2008_000003.jpg")  # not in the split list: not read
    _label(base / label_dir / "2008_000002.png", values)
    (base / "ImageSets" / list_dir).mkdir(parents=True)
    (base / "ImageSets" / list_dir / "val.txt").write_text("2008_000002\n")


def test_pascal_context59(tmp_path):
    _voc_like(tmp_path, "2010", "SegmentationClassContext", "SegmentationContext", [0, 1, 59])
    dataset = open_dataset("pascal-context59", tmp_path)
    assert len(dataset) == 1 and dataset.num_classes == 59
    assert _first(dataset, 3) == [255, 0, 58]


def test_voc(tmp_path):
    _voc_like(tmp_path, "2012", "SegmentationClass", "Segmentation", [0, 20, 255])
    dataset = open_dataset("voc", tmp_path / "VOCdevkit" / "VOC2012")
    assert len(dataset) == 1 and dataset.num_classes == 21
    assert _first(dataset, 3) == [0, 20, 255]


@pytest.mark.parametrize("name, expected", [("cityscapes19", [255, 0, 255, 2, 18, 255]),
                                            ("cityscapes27", [255, 0, 2, 4, 26, 255])])
def test_cityscapes(tmp_path, name, expected):
    stem = "frankfurt_000000_000294"
    _image(tmp_path / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png")
    # unlabeled, road, parking, building, bicycle, license plate (-1 stored as 255)
    _label(tmp_path / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelIds.png",
           [0, 7, 9, 11, 33, 255])
    dataset = open_dataset(name, tmp_path)
    assert dataset[0].id == stem
    assert _first(dataset, 6) == expected


def test_folder_infers_classes_and_checks_values(tmp_path):
    for stem, values in (("a", [0, 3, 255]), ("b", [1, 2])):
        _image(tmp_path / "images" / f"{stem}.png")
        _label(tmp_path / "labels" / f"{stem}.png", values)
    dataset = open_dataset("folder", tmp_path)
    assert dataset.num_classes == 4 and dataset.class_names is None
    assert _first(dataset, 3) == [0, 3, 255]
    narrow = open_dataset("folder", tmp_path, num_classes=2)
    with pytest.raises(ValueError, match="num-classes"):
        narrow.load_label(narrow[0])
    with pytest.raises(ValueError, match="class_names"):
        open_dataset("folder", tmp_path, class_names=("x",))


def test_wrong_layouts_say_what_was_expected(tmp_path):
    (tmp_path / "pics").mkdir()
    with pytest.raises(FileNotFoundError, match="ROOT/images"):
        open_dataset("folder", tmp_path)
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016/images/validation"):
        open_dataset("ade20k", tmp_path)
    with pytest.raises(FileNotFoundError, match="stuffthingmaps"):
        _image(tmp_path / "images" / "val2017" / "x.jpg")
        open_dataset("cocostuff27", tmp_path)
    with pytest.raises(FileNotFoundError, match="SegmentationClassContext"):
        open_dataset("pascal-context59", tmp_path)
    with pytest.raises(FileNotFoundError, match="gtFine"):
        (tmp_path / "leftImg8bit" / "val").mkdir(parents=True)
        open_dataset("cityscapes19", tmp_path)
    with pytest.raises(FileNotFoundError, match="--root"):
        open_dataset("voc", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dataset must be one of"):
        open_dataset("imagenet", tmp_path)


def test_folder_image_without_label(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match="no label"):
        open_dataset("folder", tmp_path)


def test_label_to_model_follows_the_image_geometry():
    # 4x8 label, columns = class id: resizing the shorter side 4 -> 2 and centre-cropping a
    # 2x2 square keeps the middle columns (original columns 2-5), sampled nearest.
    label = np.tile(np.arange(8), (4, 1))
    out = label_to_model(label, 2)
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[3, 5], [3, 5]])
    assert set(np.unique(label_to_model(np.where(label > 3, 255, label), 3))) <= {0, 1, 2, 3, 255}
