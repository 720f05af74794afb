"""The demo scene renderer (maskdistill.demo) and the make-demo-data command."""

from __future__ import annotations

import colorsys
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from maskdistill import demo
from maskdistill.cli import main
from maskdistill.data import open_dataset
from maskdistill.masks import mask_box
from maskdistill.metrics import corloc_hit

COUNTS = {"train": 8, "val": 6}


def make(out: Path, seed: int) -> Path:
    """Run the command on a small dataset; return its folder."""
    main(
        [
            "make-demo-data",
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--num-train",
            str(COUNTS["train"]),
            "--num-val",
            str(COUNTS["val"]),
        ]
    )
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("demo") / "data", seed=3)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def centre_box_corloc(seed: int, count: int) -> float:
    """Fraction of val scenes where the central 50 % box has IoU >= 0.5 with a ground-truth box."""
    hits = 0
    for index in range(count):
        scene = demo.render_scene(demo.scene_rng(seed, "val", index))
        height, width = scene.image.shape[:2]
        centre = (width / 4, height / 4, width / 2, height / 2)
        hits += corloc_hit(centre, [mask_box(m) for m in scene.masks])
    return hits / count


# ---------------------------------------------------------------- helpers with known answers


def test_boundary_band_on_a_hand_made_array():
    instance = np.zeros((4, 4), dtype=np.uint8)
    instance[:, 2:] = 1
    expected = np.zeros((4, 4), dtype=bool)
    expected[:, 1:3] = True  # one pixel either side of the vertical edge
    np.testing.assert_array_equal(demo.boundary_band(instance), expected)


def test_unit_shape_areas_match_geometry():
    assert demo._unit_area(1) == pytest.approx(np.pi, rel=0.01)  # disc of radius 1
    assert demo._unit_area(2) == pytest.approx(1.6**2, rel=0.01)  # square, half side 0.8
    assert demo._unit_area(3) == pytest.approx(3 * np.sqrt(3) / 4, rel=0.01)  # triangle
    assert demo._unit_area(5) == pytest.approx(np.pi * (1 - 0.55**2), rel=0.01)  # ring
    assert demo._unit_area(6) == pytest.approx(2 * (0.66 * 2) - 0.66**2, rel=0.01)  # cross


def test_render_scene_is_deterministic_and_well_formed():
    for index in range(30):
        scene = demo.render_scene(demo.scene_rng(0, "train", index))
        again = demo.render_scene(demo.scene_rng(0, "train", index))
        np.testing.assert_array_equal(scene.image, again.image)
        np.testing.assert_array_equal(scene.masks, again.masks)
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape[2] == 3
        assert 96 <= height <= 192 and 96 <= width <= 192
        assert 1 <= len(scene.labels) <= 3 and scene.masks.shape == (
            len(scene.labels),
            height,
            width,
        )
        assert set(scene.labels.tolist()) <= set(range(1, len(demo.CLASS_NAMES) + 1))
        assert scene.masks.sum(axis=0).max() <= 1  # visible parts are disjoint
        fractions = scene.masks.reshape(len(scene.labels), -1).mean(axis=1)
        assert fractions.min() > 0.01 and fractions.max() < 0.3


def test_render_scene_respects_a_given_size():
    scene = demo.render_scene(np.random.default_rng(1), size=(64, 80))
    assert scene.image.shape == (64, 80, 3) and scene.masks.shape[1:] == (64, 80)
    with pytest.raises(ValueError, match="at least 16"):
        demo.render_scene(np.random.default_rng(1), size=(8, 80))


def test_object_colour_identifies_its_class():
    """The mean colour of an object's pixels has its class's hue (colour jitter stays small)."""
    checked = 0
    for index in range(40):
        scene = demo.render_scene(demo.scene_rng(5, "train", index))
        for mask, label in zip(scene.masks, scene.labels, strict=True):
            if mask.sum() < 200:
                continue
            rgb = scene.image[mask].mean(axis=0) / 255
            hue = colorsys.rgb_to_hsv(*rgb)[0]
            expected = demo._APPEARANCE[label - 1][0]
            distance = abs((hue - expected + 0.5) % 1.0 - 0.5)
            assert distance < 0.08, (index, demo.CLASS_NAMES[label - 1], hue)
            checked += 1
    assert checked > 40


def test_pair_shares_objects_and_differs_in_background():
    background_diffs = []
    for seed in range(10):
        image_a, image_b, masks, labels = demo.render_scene_pair(
            np.random.default_rng(seed), size=(128, 112)
        )
        assert image_a.shape == image_b.shape == (128, 112, 3)
        assert masks.shape == (len(labels), 128, 112) and masks.any(axis=(1, 2)).all()
        objects = masks.any(axis=0)
        diff = np.abs(image_a.astype(np.int16) - image_b.astype(np.int16)).mean(axis=2)
        # Object pixels differ only by the independent pixel noise; backgrounds are redrawn.
        assert diff[objects].mean() < 12
        assert diff[~objects].mean() > diff[objects].mean() + 5
        background_diffs.append(diff[~objects].mean())
    assert np.mean(background_diffs) > 30


def test_centre_box_rarely_localises_an_object_on_val():
    """Objects are spread over the image: a fixed centre box scores <= 15 % CorLoc (issue 6)."""
    for seed in (0, 1, 2):
        assert centre_box_corloc(seed, count=150) <= 0.15


# ---------------------------------------------------------------- the command's files


def test_same_seed_gives_identical_bytes_other_seed_differs(dataset, tmp_path):
    reference = tree_bytes(dataset)
    assert reference == tree_bytes(make(tmp_path / "again", seed=3))
    other = tree_bytes(make(tmp_path / "other", seed=4))
    assert other.keys() == reference.keys()
    jpegs = [name for name in reference if name.endswith(".jpg")]
    assert all(other[name] != reference[name] for name in jpegs)


def test_layout_and_split_files(dataset):
    segmentation = dataset / "ImageSets" / "Segmentation"
    train = (segmentation / "train.txt").read_text().split()
    val = (segmentation / "val.txt").read_text().split()
    assert train == [f"train_{i:06d}" for i in range(COUNTS["train"])]
    assert val == [f"val_{i:06d}" for i in range(COUNTS["val"])]
    assert (segmentation / "trainval.txt").read_text().split() == train + val
    assert (dataset / "classes.txt").read_text().splitlines() == list(demo.CLASS_NAMES)
    for image_id in train + val:
        for folder, suffix in (
            ("JPEGImages", ".jpg"),
            ("SegmentationClass", ".png"),
            ("SegmentationObject", ".png"),
            ("Annotations", ".xml"),
        ):
            assert (dataset / folder / f"{image_id}{suffix}").is_file()
    settings = json.loads((dataset / "demo_data.json").read_text())["settings"]
    assert settings == {"seed": 3, "num_train": COUNTS["train"], "num_val": COUNTS["val"]}


def test_ground_truth_is_consistent(dataset):
    for split in ("train", "val"):
        coco = COCO(str(dataset / "annotations" / f"instances_{split}.json"))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        assert [names[k] for k in sorted(names)] == list(demo.CLASS_NAMES)
        for image_info in coco.loadImgs(sorted(coco.getImgIds())):
            image_id = Path(image_info["file_name"]).stem
            check_image(dataset, image_id, image_info, coco, names)


def check_image(root: Path, image_id: str, image_info: dict, coco: COCO, names: dict) -> None:
    image = Image.open(root / "JPEGImages" / f"{image_id}.jpg")
    classes_png = Image.open(root / "SegmentationClass" / f"{image_id}.png")
    objects_png = Image.open(root / "SegmentationObject" / f"{image_id}.png")
    assert classes_png.mode == objects_png.mode == "P"
    semantic, instance = np.array(classes_png), np.array(objects_png)
    height, width = semantic.shape
    assert image.size == (width, height) == (image_info["width"], image_info["height"])

    xml = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    assert xml.findtext("filename") == f"{image_id}.jpg"
    assert (int(xml.findtext("size/width")), int(xml.findtext("size/height"))) == (width, height)
    objects = xml.findall("object")
    assert sorted(np.unique(instance[instance > 0]).tolist()) == list(range(1, len(objects) + 1))

    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_info["id"]))
    assert len(anns) == len(objects)
    expected_semantic = np.zeros_like(semantic)
    for index, (obj, ann) in enumerate(zip(objects, anns, strict=True), start=1):
        mask = instance == index
        x, y, w, h = mask_box(mask)
        box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        assert box == [x + 1, y + 1, x + w, y + h]  # 1-based inclusive, tight on the mask
        assert obj.findtext("difficult") == "0"
        label = demo.CLASS_NAMES.index(obj.findtext("name")) + 1
        expected_semantic[mask] = label
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["bbox"] == [x, y, w, h] and ann["area"] == mask.sum()
        assert names[ann["category_id"]] == obj.findtext("name") and ann["iscrowd"] == 0

    # Semantic map == union of instance masks with their classes, except the 255 boundary band.
    band = semantic == 255
    np.testing.assert_array_equal(band, demo.boundary_band(instance))
    np.testing.assert_array_equal(semantic[~band], expected_semantic[~band])


def test_existing_output_and_bad_counts_are_refused(dataset, tmp_path, caplog):
    with pytest.raises(SystemExit) as exit_info:
        make(dataset, seed=3)
    assert exit_info.value.code == 1
    assert "already exists" in caplog.text
    with pytest.raises(SystemExit):
        main(["make-demo-data", "--out", str(tmp_path / "x"), "--num-train", "0"])
    assert "--num-train must be >= 1" in caplog.text
    assert not (tmp_path / "x").exists()


def test_voc_and_coco_readers_see_the_same_ground_truth(dataset):
    voc = open_dataset({"kind": "voc", "root": str(dataset)}, ["val"])
    coco = open_dataset(
        {
            "kind": "coco",
            "root": str(dataset / "JPEGImages"),
            "annotations": str(dataset / "annotations" / "instances_val.json"),
        }
    )
    assert voc.class_names == coco.class_names == demo.CLASS_NAMES
    voc_records, coco_records = voc.records(), coco.records()
    assert [r.file_name for r in voc_records] == [r.file_name for r in coco_records]
    for voc_record, coco_record in zip(voc_records, coco_records, strict=True):
        voc_instances = voc.instance_masks(voc_record)
        coco_instances = coco.instance_masks(coco_record)
        assert len(voc_instances) == len(coco_instances) >= 1
        for (voc_mask, voc_label), (coco_mask, coco_label) in zip(
            voc_instances, coco_instances, strict=True
        ):
            np.testing.assert_array_equal(voc_mask, coco_mask)
            assert voc_label == coco_label
        assert voc.boxes(voc_record) == coco.boxes(coco_record)
