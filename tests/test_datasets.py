"""Dataset readers (folder, VOC, COCO) on small trees generated with known ground truth."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskdistill.data import GTBox, ImageRecord, open_dataset
from maskdistill.data.voc import VOC_CLASSES
from maskdistill.images import BadImageError, load_image

PALETTE = [v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)]


def write_image(path: Path, height: int, width: int, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (30, 60, 90)).save(path, **kwargs)
    return path


def write_index_png(path: Path, indices: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette(PALETTE)
    image.save(path)
    return path


# --- folder ---------------------------------------------------------------------------------


def make_folder(root: Path) -> dict[str, tuple[int, int]]:
    """An image tree with nested folders, mixed-case extensions and files to ignore."""
    sizes = {
        "a/B.JPG": (5, 7),
        "a/c.png": (6, 4),
        "b/nested/d.Jpeg": (3, 9),
        "e.tiff": (8, 8),
        "f.WebP": (4, 5),
        "g.bmp": (2, 3),
        "z.TIF": (7, 2),
    }
    for name, (h, w) in sizes.items():
        write_image(root / name, h, w)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "x.jpg.bak").write_bytes(b"backup")
    write_image(root / ".hidden" / "h.png", 2, 2)
    write_image(root / "a" / "._B.JPG", 2, 2)
    return sizes


def test_folder_lists_images_sorted_with_header_sizes(tmp_path):
    sizes = make_folder(tmp_path)
    dataset = open_dataset({"kind": "folder", "root": str(tmp_path)}, ["ignored"])
    records = dataset.records()
    assert [r.file_name for r in records] == sorted(sizes)
    assert [r.id for r in records] == list(range(len(sizes)))
    assert [r.path for r in records] == [tmp_path / name for name in sorted(sizes)]
    assert [(r.height, r.width) for r in records] == [sizes[n] for n in sorted(sizes)]
    assert dataset.image_root == tmp_path
    assert not dataset.has_ground_truth and dataset.class_names == ()
    assert dataset.semantic_labels(records[0]) is None
    assert dataset.instance_masks(records[0]) == [] and dataset.boxes(records[0]) == []


def test_folder_record_size_follows_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(tmp_path / "r.jpg", 10, 30, exif=exif.tobytes())
    (record,) = open_dataset({"kind": "folder", "root": tmp_path}).records()
    assert (record.height, record.width) == (30, 10) == load_image(record.path).shape[:2]


def test_folder_listing_survives_a_bad_file(tmp_path):
    write_image(tmp_path / "good.png", 3, 4)
    (tmp_path / "bad.jpg").write_text("garbage")
    bad, good = open_dataset({"kind": "folder", "root": tmp_path}).records()
    assert good.size == (3, 4)
    with pytest.raises(BadImageError, match="bad.jpg"):
        _ = bad.height


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        open_dataset({"kind": "folder", "root": tmp_path / "missing"})
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files") as caught:
        open_dataset({"kind": "folder", "root": tmp_path}).records()
    assert str(tmp_path) in str(caught.value)


def test_records_compare_pickle_and_keep_given_sizes(tmp_path):
    record = ImageRecord(3, "a/b.jpg", tmp_path / "a/b.jpg", 10, 20)
    assert (record.height, record.width) == (10, 20)  # no file needed
    copy = pickle.loads(pickle.dumps(record))
    assert copy == record and copy.size == (10, 20) and hash(copy) == hash(record)
    assert record != ImageRecord(4, "a/b.jpg", tmp_path / "a/b.jpg", 10, 20)


# --- VOC ------------------------------------------------------------------------------------

# two images of 6 x 8; image 1 has a person (class 15, difficult) and an aeroplane (class 1)
CLASS_MAP = np.zeros((6, 8), np.uint8)
CLASS_MAP[1:4, 1:4] = 15
CLASS_MAP[3:6, 5:8] = 1
CLASS_MAP[0, :] = 255
OBJECT_MAP = np.zeros((6, 8), np.uint8)
OBJECT_MAP[1:4, 1:4] = 1
OBJECT_MAP[3:6, 5:8] = 2
OBJECT_MAP[0, :] = 255

XML = """<annotation><filename>{id}.jpg</filename>
<size><width>8</width><height>6</height><depth>3</depth></size>
<object><name>person</name><difficult>1</difficult>
  <bndbox><xmin>2</xmin><ymin>2</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object>
<object><name> aeroplane </name><pose>Left</pose>
  <bndbox><xmin>6.0</xmin><ymin>4</ymin><xmax>8</xmax><ymax>6</ymax></bndbox></object>
</annotation>"""


def make_voc(root: Path) -> None:
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    for image_id in ids:
        write_image(root / "JPEGImages" / f"{image_id}.jpg", 6, 8)
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("2007_000001\n2007_000002\n\n")
    (seg / "val.txt").write_text("2007_000002\n2007_000003\n")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("2007_000003\n2007_000001\n")
    (main / "person_trainval.txt").write_text("2007_000003 -1\n2007_000001  1\n")
    write_index_png(root / "SegmentationClass" / "2007_000001.png", CLASS_MAP)
    write_index_png(root / "SegmentationObject" / "2007_000001.png", OBJECT_MAP)
    write_index_png(root / "SegmentationClass" / "2007_000002.png", np.zeros((6, 8)))
    aug = root / "SegmentationClassAug" / "2007_000003.png"
    aug.parent.mkdir()
    Image.fromarray(np.full((6, 8), 7, np.uint8), "L").save(aug)  # trainaug labels are mode L
    (root / "Annotations").mkdir()
    for image_id in ("2007_000001", "2007_000003"):
        (root / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id))


def voc(root: Path, splits, imagesets="Segmentation"):
    return open_dataset({"kind": "voc", "root": str(root), "imagesets": imagesets}, splits)


def test_voc_union_of_splits_in_order(tmp_path):
    make_voc(tmp_path)
    records = voc(tmp_path, ["train", "val"]).records()
    assert [r.file_name for r in records] == [
        "2007_000001.jpg",
        "2007_000002.jpg",
        "2007_000003.jpg",
    ]
    assert [r.id for r in records] == [0, 1, 2]
    assert records[0].path == tmp_path / "JPEGImages" / "2007_000001.jpg"
    assert (records[0].height, records[0].width) == (6, 8)
    main = voc(tmp_path, ["trainval"], imagesets="Main")
    assert [r.file_name for r in main.records()] == ["2007_000003.jpg", "2007_000001.jpg"]


def test_voc_ground_truth_values(tmp_path):
    make_voc(tmp_path)
    dataset = voc(tmp_path, ["train", "val"])
    first, second, third = dataset.records()
    assert dataset.has_ground_truth and dataset.class_names == VOC_CLASSES
    labels = dataset.semantic_labels(first)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, CLASS_MAP)  # indices, not palette colours
    np.testing.assert_array_equal(dataset.semantic_labels(third), np.full((6, 8), 7))  # Aug

    (person, person_class), (plane, plane_class) = dataset.instance_masks(first)
    np.testing.assert_array_equal(person, OBJECT_MAP == 1)
    np.testing.assert_array_equal(plane, OBJECT_MAP == 2)
    assert (person_class, plane_class) == (15, 1)
    assert dataset.instance_masks(second) == []

    assert dataset.boxes(first) == [
        GTBox(x=1, y=1, w=3, h=3, label=15, difficult=True),
        GTBox(x=5, y=3, w=3, h=3, label=1, difficult=False),
    ]
    assert dataset.boxes(second) == []
    # the boxes enclose exactly their instance masks
    for box, (mask, _) in zip(dataset.boxes(first), dataset.instance_masks(first), strict=True):
        rows, cols = np.nonzero(mask)
        assert (box.x, box.y, box.x + box.w, box.y + box.h) == (
            cols.min(),
            rows.min(),
            cols.max() + 1,
            rows.max() + 1,
        )


def test_voc_ground_truth_presence(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "SegmentationClassAug" / "2007_000003.png").unlink()
    assert voc(tmp_path, ["train"]).has_ground_truth  # labels for both images
    val = voc(tmp_path, ["val"])
    assert not val.has_ground_truth  # 2007_000002 has a label PNG but no XML, 3 the reverse
    assert val.semantic_labels(val.records()[1]) is None
    assert voc(tmp_path, ["trainval"], imagesets="Main").has_ground_truth  # XML for both


def test_voc_own_classes(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "classes.txt").write_text("person\naeroplane\n")
    dataset = voc(tmp_path, ["train"])
    assert dataset.class_names == ("person", "aeroplane")
    first = dataset.records()[0]
    assert [b.label for b in dataset.boxes(first)] == [1, 2]
    with pytest.raises(ValueError, match=r"SegmentationClass/2007_000001.png.*\[15\]"):
        dataset.semantic_labels(first)  # class 15 does not exist among 2 classes


def test_voc_bad_annotation_names_the_file(tmp_path):
    make_voc(tmp_path)
    xml = tmp_path / "Annotations" / "2007_000001.xml"
    xml.write_text(XML.replace("person", "unicorn"))
    dataset = voc(tmp_path, ["train"])
    with pytest.raises(ValueError, match=r"2007_000001.xml.*unicorn"):
        dataset.boxes(dataset.records()[0])
    xml.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="2007_000001.xml"):
        dataset.boxes(dataset.records()[0])


def test_voc_missing_parts_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC dataset folder"):
        voc(tmp_path / "nope", ["train"])
    make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"test.txt.*\['train', 'val'\]"):
        voc(tmp_path, ["test"])
    with pytest.raises(ValueError, match="no split"):
        voc(tmp_path, None)
    with pytest.raises(FileNotFoundError, match="ImageSets/Layout"):
        voc(tmp_path, ["train"], imagesets="Layout")


# --- COCO -----------------------------------------------------------------------------------


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


H, W = 6, 8
DOG = np.zeros((H, W), bool)
DOG[1:5, 1:5] = True
CAT = np.zeros((H, W), bool)
CAT[3:6, 3:8] = True  # overlaps the dog at rows 3-4, columns 3-4
CROWD = np.zeros((H, W), bool)
CROWD[0, :] = True
CROWD[1:3, 6:8] = True


def make_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "train2014"
    names = {30: "COCO_train2014_000000000030.jpg", 10: "a.jpg", 20: "sub/b.jpg"}
    for name in names.values():
        write_image(images / name, H, W)
    categories = [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}]  # sorted: dog=1, cat=2
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 2, "iscrowd": 0, "segmentation": rle(DOG),
         "bbox": [1, 1, 4, 4], "area": 16},
        {"id": 2, "image_id": 10, "category_id": 7, "iscrowd": 0, "segmentation": rle(CAT),
         "bbox": [3.0, 2.5, 4.6, 3.4], "area": 15},
        {"id": 3, "image_id": 10, "category_id": 2, "iscrowd": 1, "segmentation": rle(CROWD),
         "bbox": [0, 0, 8, 3], "area": 12},
        {"id": 4, "image_id": 20, "category_id": 7, "iscrowd": 0,
         "segmentation": [[2, 1, 6, 1, 6, 5, 2, 5]], "bbox": [2, 1, 4, 4], "area": 16},
    ]  # fmt: skip
    data = {
        "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in names.items()],
        "annotations": annotations,
        "categories": categories,
    }
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps(data))
    return images, json_path


def coco(images: Path, json_path: Path, image_list: Path | None = None):
    spec = {"kind": "coco", "root": str(images), "annotations": str(json_path)}
    return open_dataset(spec | {"image_list": str(image_list) if image_list else None}, None)


def test_coco_records_ordered_by_id(tmp_path):
    images, json_path = make_coco(tmp_path)
    dataset = coco(images, json_path)
    records = dataset.records()
    assert [r.id for r in records] == [10, 20, 30]
    assert [r.file_name for r in records] == ["a.jpg", "sub/b.jpg", records[2].file_name]
    assert records[1].path == images / "sub" / "b.jpg"
    assert (records[0].height, records[0].width) == (H, W)
    assert dataset.image_root == images and dataset.class_names == ("dog", "cat")


def test_coco_ground_truth_values(tmp_path):
    images, json_path = make_coco(tmp_path)
    dataset = coco(images, json_path)
    first, second, third = dataset.records()
    assert dataset.has_ground_truth

    (dog, dog_class), (cat, cat_class) = dataset.instance_masks(first)  # crowd left out
    np.testing.assert_array_equal(dog, DOG)
    np.testing.assert_array_equal(cat, CAT)
    assert (dog_class, cat_class) == (1, 2)

    expected = np.zeros((H, W), np.uint8)
    expected[CROWD] = 255
    expected[DOG] = 1
    expected[CAT] = 2  # the later annotation wins the overlap
    np.testing.assert_array_equal(dataset.semantic_labels(first), expected)

    # bbox [3.0, 2.5, 4.6, 3.4]: x 3 .. round(7.6) = 8, y round(2.5) = 3 .. round(5.9) = 6
    assert dataset.boxes(first) == [
        GTBox(x=1, y=1, w=4, h=4, label=1),
        GTBox(x=3, y=3, w=5, h=3, label=2),
    ]
    # a polygon annotation is rasterised by pycocotools: the square's inside is cat
    ((square, label),) = dataset.instance_masks(second)
    assert (
        label == 2 and square[2:5, 3:6].all() and not square[0].any() and 16 <= square.sum() <= 25
    )
    np.testing.assert_array_equal(dataset.semantic_labels(second), np.where(square, 2, 0))
    assert dataset.semantic_labels(third).max() == 0 and dataset.boxes(third) == []


def test_coco_image_list_restricts_and_orders(tmp_path):
    images, json_path = make_coco(tmp_path)
    image_list = tmp_path / "coco_20k_filenames.txt"
    image_list.write_text("train2014/COCO_train2014_000000000030.jpg\nsub/b.jpg\n\n")
    records = coco(images, json_path, image_list).records()
    assert [r.id for r in records] == [30, 20]
    assert records[0].file_name == "COCO_train2014_000000000030.jpg"
    image_list.write_text("a.jpg\nmissing.jpg\n")
    with pytest.raises(ValueError, match="missing.jpg"):
        coco(images, json_path, image_list)


def test_coco_without_annotations_has_no_ground_truth(tmp_path):
    images, json_path = make_coco(tmp_path)
    data = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({"images": data["images"]}))
    dataset = coco(images, json_path)
    assert not dataset.has_ground_truth and dataset.class_names == ()
    assert dataset.semantic_labels(dataset.records()[0]) is None


def test_coco_missing_parts_are_named(tmp_path):
    images, json_path = make_coco(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco(images, tmp_path / "nope.json")
    with pytest.raises(ValueError, match="dataset.annotations"):
        open_dataset({"kind": "coco", "root": str(images)}, None)
    with pytest.raises(FileNotFoundError, match="list.txt"):
        coco(images, json_path, tmp_path / "list.txt")
    json_path.write_text("{not json")
    with pytest.raises(ValueError, match="instances.json"):
        coco(images, json_path)


def test_unknown_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="dataset.kind"):
        open_dataset({"kind": "imagenet", "root": str(tmp_path)}, None)


def test_folder_listing_names_the_unsupported_files(tmp_path):
    from maskdistill.data.folder import list_images

    for name in ("b.JPG", "sub/a.png", "c.gif", "d.heic", ".hidden.gif", "sub/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    others: list[str] = []
    assert list_images(tmp_path, others) == ["b.JPG", "sub/a.png"]
    assert others == ["c.gif", "d.heic", "sub/notes.txt"]
