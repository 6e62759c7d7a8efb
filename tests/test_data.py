"""The synthetic generator writes exact, deterministic ImageFolder and VOC layouts, and the readers read them
back (or fail with an error naming the bad path)."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vicregl_cli.cli import app
from vicregl_cli.data import scenes, synthetic
from vicregl_cli.data.readers import (
    VOC_CLASSES,
    check_same_classes,
    image_folder,
    load_rgb,
    parse_voc_xml,
    read_mask,
    read_split,
    voc_class_names,
)
from vicregl_cli.errors import UserError

NUM_TRAIN, NUM_VAL = 200, 50


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    args = ["synth", "--out", str(out), "--num-train", str(NUM_TRAIN), "--num-val", str(NUM_VAL)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def _ids(split: str, count: int) -> list[str]:
    return [f"{split}_{index:06d}" for index in range(count)]


def test_both_layouts_are_complete(dataset):
    voc = dataset / "VOC2012"
    names = (voc / "classes.txt").read_text().splitlines()
    assert len(names) >= 10 and names == sorted(names)
    assert voc_class_names(voc) == names
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        ids = _ids(split, count)
        assert read_split(voc, "Segmentation", split) == ids
        assert read_split(voc, "Main", split) == ids
        folders = sorted(path.name for path in (dataset / "classification" / split).iterdir())
        assert folders == names
        pngs = sorted(path.stem for path in (dataset / "classification" / split).glob("*/*.png"))
        assert pngs == ids
    every_id = sorted(_ids("train", NUM_TRAIN) + _ids("val", NUM_VAL))
    assert sorted(path.stem for path in (voc / "JPEGImages").glob("*.jpg")) == every_id
    assert sorted(path.stem for path in (voc / "SegmentationClass").glob("*.png")) == every_id
    assert sorted(path.stem for path in (voc / "Annotations").glob("*.xml")) == every_id


def test_classes_need_both_shape_and_texture():
    pairs = [scenes.shape_and_texture(index) for index in range(len(scenes.CLASS_NAMES))]
    assert len(set(pairs)) == len(pairs) >= 10
    shapes = [shape for shape, _ in pairs]
    textures = [texture for _, texture in pairs]
    assert min(shapes.count(shape) for shape in shapes) >= 2
    assert min(textures.count(texture) for texture in textures) >= 2


def test_image_folder_reads_balanced_classes(dataset):
    train = image_folder(dataset / "classification" / "train")
    val = image_folder(dataset / "classification" / "val")
    check_same_classes(train, val)
    assert train.classes == voc_class_names(dataset / "VOC2012")
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL
    counts = np.bincount(train.targets, minlength=len(train.classes))
    assert counts.min() == NUM_TRAIN // len(counts) and counts.max() == math.ceil(NUM_TRAIN / len(counts))
    image, label = train[5]
    assert image.mode == "RGB" and image.size == (96, 96) and label == train.targets[5]
    path, _ = train.samples[5]
    assert isinstance(path, Path)
    index = int(path.stem.split("_")[1])
    # The classification layout is object-centric (its own render of the same label): the PNG holds exactly
    # that render, whose labelled object covers a fifth of the image or more and dwarfs every distractor.
    centred = scenes.render_scene(
        synthetic.image_rng(0, "train", index, "classification"), 96, label, scenes.OBJECT_CENTRIC
    )
    assert np.array_equal(np.asarray(image), centred.image)
    visible = np.bincount(centred.instances.ravel())[1:]
    main = [obj.class_index for obj in centred.objects].index(label)
    assert visible[main] >= 0.2 * 96 * 96 and np.delete(visible, main).max(initial=0) < visible[main] / 3


def _check_boxes_against_mask(mask: np.ndarray, boxes: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Each box is an integer box inside the image, holds its class, has its class or the 255 band on all four
    edges (tight), and the boxes of a class cover every pixel of that class."""
    height, width = mask.shape
    covered = np.zeros((len(scenes.CLASS_NAMES) + 1, height, width), dtype=bool)
    for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
        assert (x0, y0, x1, y1) == tuple(np.round([x0, y0, x1, y1])), where
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, where
        value = label + 1
        region = mask[y0:y1, x0:x1]
        assert (region == value).any(), where
        for edge in (region[0], region[-1], region[:, 0], region[:, -1]):
            assert np.isin(edge, [value, 255]).any(), where
        covered[value, y0:y1, x0:x1] = True
    for value in range(1, covered.shape[0]):
        assert not ((mask == value) & ~covered[value]).any(), f"{where}: class {value} outside its boxes"


def test_masks_and_boxes_agree(dataset):
    voc = dataset / "VOC2012"
    palette = synthetic.voc_palette()
    for split in ("train", "val"):
        ids = read_split(voc, "Segmentation", split)
        assert read_split(voc, "Main", split) == ids
        for name in ids:
            image = load_rgb(voc / "JPEGImages" / f"{name}.jpg")
            mask = read_mask(voc / "SegmentationClass" / f"{name}.png")
            where = str(voc / "Annotations" / f"{name}.xml")
            annotation = parse_voc_xml(voc / "Annotations" / f"{name}.xml", voc_class_names(voc))
            assert image.size == (annotation.width, annotation.height) == (96, 96)
            assert annotation.filename == f"{name}.jpg"
            assert mask.dtype == np.uint8 and mask.shape == (96, 96)
            in_mask = set(np.unique(mask).tolist()) - {0, 255}
            assert in_mask == {int(label) + 1 for label in annotation.labels}, where
            assert (mask == 255).any() and not annotation.difficult.any()
            _check_boxes_against_mask(mask, annotation.boxes, annotation.labels, where)
    with Image.open(voc / "SegmentationClass" / f"{ids[0]}.png") as written:
        assert written.mode == "P" and written.getpalette()[:48] == list(palette[:48])


def test_boxes_and_labels_are_exact_against_the_instance_map(dataset):
    """Redraw a few scenes: each XML box is the bounding box of that object's visible pixels, the class
    folder is the class of the object with the most visible pixels, the mask is the instance map's classes."""
    voc = dataset / "VOC2012"
    names = voc_class_names(voc)
    for split, index in (("train", 0), ("train", 7), ("train", 199), ("val", 3), ("val", 49)):
        scene = scenes.render_scene(synthetic.image_rng(0, split, index), 96, synthetic.image_label(index))
        name = f"{split}_{index:06d}"
        annotation = parse_voc_xml(voc / "Annotations" / f"{name}.xml", names)
        numbers = [number for number in np.unique(scene.instances).tolist() if number > 0]
        assert len(numbers) == len(annotation.boxes) >= 2
        for number, box, label in zip(numbers, annotation.boxes, annotation.labels, strict=True):
            rows, cols = np.nonzero(scene.instances == number)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert label == scene.objects[number - 1].class_index
        visible = np.bincount(scene.instances.ravel())[1:]
        largest = scene.objects[int(np.argmax(visible))].class_index
        assert (dataset / "classification" / split / names[largest] / f"{name}.png").is_file()
        written = read_mask(voc / "SegmentationClass" / f"{name}.png")
        classes = np.array([0] + [obj.class_index + 1 for obj in scene.objects])[scene.instances]
        assert np.array_equal(written[written != 255], classes[written != 255])
        assert np.array_equal(written == 255, scenes.boundary_band(scene.instances, 1))


def test_same_seed_same_bytes_whatever_the_workers_and_counts(dataset, tmp_path):
    synthetic.generate(tmp_path / "again", num_train=24, num_val=12, seed=0, workers=1)
    synthetic.generate(tmp_path / "other", num_train=24, num_val=12, seed=1, workers=1)
    for name in _ids("train", 24) + _ids("val", 12):
        for sub, suffix in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("Annotations", "xml")):
            first = (dataset / "VOC2012" / sub / f"{name}.{suffix}").read_bytes()
            assert (tmp_path / "again" / "VOC2012" / sub / f"{name}.{suffix}").read_bytes() == first
        jpeg = Path("VOC2012") / "JPEGImages" / f"{name}.jpg"
        assert (tmp_path / "other" / jpeg).read_bytes() != (dataset / jpeg).read_bytes()
    again = sorted((tmp_path / "again" / "classification").glob("*/*/*.png"))
    assert len(again) == 36
    for path in again:
        assert path.read_bytes() == (dataset / path.relative_to(tmp_path / "again")).read_bytes()


def test_large_scenes_keep_the_rules():
    size = 256
    scene = scenes.render_scene(synthetic.image_rng(3, "train", 11), size, label=4)
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    visible = np.bincount(scene.instances.ravel(), minlength=len(scene.objects) + 1)[1:]
    assert scene.objects[int(np.argmax(visible))].class_index == 4
    assert np.sort(visible)[-1] >= scenes.LARGEST_MARGIN * np.sort(visible)[-2]
    mask = synthetic.segmentation_mask(scene)
    assert scenes.border_width(size) == 2
    band = mask == 255
    # a width-2 band: every contour pixel pair is covered, and it reaches 2 pixels on each side of a contour
    rows, cols = np.nonzero(np.diff(scene.instances, axis=1) != 0)
    for offset in (-1, 0, 1, 2):
        inside = (cols + offset >= 0) & (cols + offset < size)
        assert band[rows[inside], cols[inside] + offset].all()


def test_band_matches_a_brute_force_window():
    rng = np.random.default_rng(0)
    instances = np.kron(rng.integers(0, 3, (6, 6)), np.ones((4, 4), dtype=np.int64))
    for width in (1, 2):
        expected = np.zeros(instances.shape, dtype=bool)
        for y in range(instances.shape[0]):
            for x in range(instances.shape[1]):
                window = instances[max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1]
                expected[y, x] = (window != instances[y, x]).any()
        assert np.array_equal(scenes.boundary_band(instances, width), expected)


def test_voc_palette_and_shape_areas():
    palette = synthetic.voc_palette()
    colour = {index: tuple(palette[3 * index : 3 * index + 3]) for index in (0, 1, 2, 15, 255)}
    assert colour == {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 15: (192, 128, 128), 255: (224, 224, 192)}
    expected = {
        "disc": math.pi,
        "ring": math.pi * (1 - 0.5**2),
        "square": 1.4**2,
        "triangle": 3 * math.sqrt(3) / 4,
        "cross": 2 * (0.6 * 1.9) - 0.6**2,
    }
    for shape, area in expected.items():
        assert scenes._unit_area(shape) == pytest.approx(area, rel=0.01), shape


def test_generate_refuses_bad_arguments_before_writing(tmp_path):
    with pytest.raises(UserError, match="at least 12"):
        synthetic.generate(tmp_path / "few", num_train=100, num_val=5)
    with pytest.raises(UserError, match="image-size"):
        synthetic.generate(tmp_path / "tiny", num_train=20, num_val=20, image_size=16)
    assert not (tmp_path / "few").exists() and not (tmp_path / "tiny").exists()
    (tmp_path / "used" / "VOC2012").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):
        synthetic.generate(tmp_path / "used", num_train=20, num_val=20)
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "cli"), "--num-val", "3"])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)


def _write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        image_folder(tmp_path / "bare")
    _write_png(tmp_path / "one" / "cat" / "a.png")
    (tmp_path / "one" / "dog").mkdir()
    with pytest.raises(UserError, match="without images: dog"):
        image_folder(tmp_path / "one")
    _write_png(tmp_path / "bad" / "cat" / "a.png")
    broken = tmp_path / "bad" / "cat" / "b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    dataset = image_folder(tmp_path / "bad")
    assert dataset[0][0].size == (8, 8)
    with pytest.raises(UserError, match=str(broken)):
        dataset[1]
    _write_png(tmp_path / "other" / "cow" / "a.png")
    with pytest.raises(UserError, match="only in train: cat; only in val: cow"):
        check_same_classes(image_folder(tmp_path / "bad"), image_folder(tmp_path / "other"))


def test_voc_errors_name_the_problem(dataset, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_split(tmp_path / "missing", "Segmentation", "train")
    with pytest.raises(UserError, match="did you mean"):
        read_split(dataset, "Main", "train")
    with pytest.raises(UserError, match="test.txt does not exist"):
        read_split(dataset / "VOC2012", "Segmentation", "test")
    voc = tmp_path / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        read_split(voc, "Segmentation", "train")
    _write_png(voc / "SegmentationClass" / "a.png")
    with pytest.raises(UserError, match="RGB"):
        read_mask(voc / "SegmentationClass" / "a.png")  # an RGB image, not a mask of indices
    (voc / "JPEGImages").mkdir()
    (voc / "JPEGImages" / "b.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(UserError, match=str(voc / "JPEGImages" / "b.jpg")):
        load_rgb(voc / "JPEGImages" / "b.jpg")


def test_parse_voc_xml_converts_boxes_and_refuses_unknown_classes(tmp_path):
    xml = tmp_path / "2007_000027.xml"
    xml.write_text(
        "<annotation><filename>2007_000027.jpg</filename>"
        "<size><width>486</width><height>500</height><depth>3</depth></size>"
        "<object><name>person</name><difficult>0</difficult>"
        "<bndbox><xmin>174</xmin><ymin>101</ymin><xmax>349</xmax><ymax>351</ymax></bndbox></object>"
        "<object><name>dog</name><difficult>1</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>486</xmax><ymax>500</ymax></bndbox></object>"
        "</annotation>"
    )
    annotation = parse_voc_xml(xml, VOC_CLASSES)
    assert (annotation.filename, annotation.width, annotation.height) == ("2007_000027.jpg", 486, 500)
    assert annotation.boxes.dtype == np.float32 and annotation.labels.dtype == np.int64
    assert annotation.boxes.tolist() == [[173, 100, 349, 351], [0, 0, 486, 500]]
    assert annotation.labels.tolist() == [14, 11] and annotation.difficult.tolist() == [False, True]
    with pytest.raises(UserError, match=f"{xml}.*'person'"):
        parse_voc_xml(xml, ["dog", "cat"])
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><size>")
    with pytest.raises(UserError, match=str(broken)):
        parse_voc_xml(broken, VOC_CLASSES)


def test_val_missing_a_train_class_is_reindexed_by_train_classes(tmp_path):
    for split, classes in (("train", ("ant", "bee", "cat")), ("val", ("ant", "cat"))):
        for name in classes:
            _write_png(tmp_path / split / name / "a.png")
    train, val = image_folder(tmp_path / "train"), image_folder(tmp_path / "val")
    assert val.targets == [0, 1]
    with pytest.warns(UserWarning, match="bee"):
        check_same_classes(train, val)
    assert val.targets == [0, 2]
    assert [label for _, label in val.samples] == [0, 2]
    assert val.classes == ["ant", "bee", "cat"]
    assert val[1][1] == 2
