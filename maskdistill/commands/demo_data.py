"""Generate the demo dataset: VOC layout with full ground truth plus COCO instances JSONs.

Writes JPEGImages/, SegmentationClass/, SegmentationObject/, Annotations/,
ImageSets/Segmentation/{train,val,trainval}.txt, classes.txt, annotations/instances_{split}.json
and demo_data.json (settings and provenance) under --out; see data/README.md ("Demo dataset").
The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from maskdistill.demo import CLASS_NAMES, Scene, boundary_band, render_scene, scene_rng
from maskdistill.io import atomic_path, write_json
from maskdistill.masks import IGNORE, encode_rle, mask_box, write_label_png
from maskdistill.progress import Progress
from maskdistill.provenance import provenance

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
SPLITS = ("train", "val")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-train", type=int, default=600, help="train images (default 600)")
    parser.add_argument("--num-val", type=int, default=150, help="val images (default 150)")


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    for name in ("num_train", "num_val"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if out.exists():
        raise ValueError(f"{out}: already exists; remove it to generate the demo dataset again")
    with atomic_path(out) as tmp:
        write_demo_dataset(
            tmp, seed=args.seed, counts={"train": args.num_train, "val": args.num_val}
        )
    log.info("wrote %d train + %d val images to %s", args.num_train, args.num_val, out)


def write_demo_dataset(root: Path, *, seed: int, counts: dict[str, int]) -> None:
    """Render ``counts[split]`` scenes of each split with ``seed``; write the tree to ``root``."""
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations"):
        (root / folder).mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "annotations").mkdir()
    all_ids: list[str] = []
    for split in SPLITS:
        ids = [f"{split}_{index:06d}" for index in range(counts[split])]
        coco = _coco_skeleton()
        with Progress(len(ids), f"demo {split}", "images") as bar:
            for index, image_id in enumerate(ids):
                scene = render_scene(scene_rng(seed, split, index))
                _write_voc_files(root, image_id, scene)
                _add_coco_image(coco, index + 1, f"{image_id}.jpg", scene)
                bar.update()
        _write_lines(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
        write_json(root / "annotations" / f"instances_{split}.json", coco)
        all_ids += ids
    _write_lines(root / "ImageSets" / "Segmentation" / "trainval.txt", all_ids)
    _write_lines(root / "classes.txt", list(CLASS_NAMES))
    settings = {"seed": seed, "num_train": counts["train"], "num_val": counts["val"]}
    write_json(root / "demo_data.json", {"settings": settings, "provenance": provenance()})


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_voc_files(root: Path, image_id: str, scene: Scene) -> None:
    """JPEG image, class and object PNGs (VOC palette) and the XML of one scene."""
    Image.fromarray(scene.image).save(
        root / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY
    )
    instance = np.zeros(scene.image.shape[:2], dtype=np.uint8)
    semantic = np.zeros_like(instance)
    for index, (mask, label) in enumerate(zip(scene.masks, scene.labels, strict=True), start=1):
        instance[mask] = index
        semantic[mask] = label
    semantic[boundary_band(instance)] = IGNORE
    write_label_png(root / "SegmentationClass" / f"{image_id}.png", semantic)
    write_label_png(root / "SegmentationObject" / f"{image_id}.png", instance)
    xml = _voc_xml(f"{image_id}.jpg", scene)
    (root / "Annotations" / f"{image_id}.xml").write_text(xml)


def _voc_xml(file_name: str, scene: Scene) -> str:
    """PASCAL VOC annotation: size, and per object its class, flags and 1-based inclusive box."""
    height, width = scene.image.shape[:2]
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "JPEGImages"
    ET.SubElement(annotation, "filename").text = file_name
    size = ET.SubElement(annotation, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(annotation, "segmented").text = "1"
    for mask, label in zip(scene.masks, scene.labels, strict=True):
        x, y, w, h = mask_box(mask)
        touches_border = bool(
            mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        )
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = CLASS_NAMES[label - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(touches_border))
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, key).text = str(value)
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="unicode") + "\n"


def _coco_skeleton() -> dict:
    categories = [
        {"id": k, "name": name, "supercategory": "shape"}
        for k, name in enumerate(CLASS_NAMES, start=1)
    ]
    info = {"description": "maskdistill demo dataset (maskdistill make-demo-data)"}
    return {"info": info, "images": [], "annotations": [], "categories": categories}


def _add_coco_image(coco: dict, image_id: int, file_name: str, scene: Scene) -> None:
    """Append one image and its instances (compressed RLE, tight box, area) to ``coco``."""
    height, width = scene.image.shape[:2]
    coco["images"].append(
        {"id": image_id, "file_name": file_name, "height": height, "width": width}
    )
    for mask, label in zip(scene.masks, scene.labels, strict=True):
        coco["annotations"].append(
            {
                "id": len(coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": int(label),
                "segmentation": encode_rle(mask),
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_box(mask)],
                "iscrowd": 0,
            }
        )
