"""Datasets, split files, caches and weight files from strangers (docs/security.md).

Each case builds the hostile input, runs the code that reads it, and asserts the clear error
(or the recorded skip) and that nothing appeared outside the output folder and no code ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_datasets import make_coco, make_voc, rle, write_image
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskdistill import cli, preflight
from maskdistill.config import validate_config
from maskdistill.data import open_dataset
from maskdistill.discover.shard_file import read_shard_attrs
from maskdistill.distill.predict import pasted_masks
from maskdistill.images import MAX_PIXELS_VARIABLE, BadImageError, load_image, load_or_skip
from maskdistill.masks import decode_rle, label_png_path, mask_annotation, read_label_png
from maskdistill.metrics import markdown_table
from maskdistill.names import UnsafeNameError, check_collisions, output_path, unsafe_reason
from maskdistill.training.checkpoints import RESUME_MANIFEST, remove_resume_files, resume_files

HOSTILE_NAMES = [
    "../x.jpg",
    "../../x/y.jpg",
    "a/../../y.jpg",
    "a/b/../../../y.jpg",
    "..\\y.jpg",
    "a\\..\\..\\y.jpg",
    "/x/y.jpg",
    "\\x\\y.jpg",
    "//server/share/y.jpg",
    "C:y.jpg",
    "C:\\x\\y.jpg",
    "a\0b.jpg",
    "",
    "bad\udcffname.jpg",  # a non-UTF-8 byte, as os.listdir returns it
]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_never_becomes_an_output_path(tmp_path, name):
    assert unsafe_reason(name) is not None
    with pytest.raises(UnsafeNameError, match="image name"):
        output_path(tmp_path / "out", name, ".png")


@pytest.mark.parametrize("name", ["a.jpg", "sub/b.jpg", "x..y.jpg", "..a.jpg", "a/.b/c.png"])
def test_plain_relative_names_stay_inside_the_folder(tmp_path, name):
    assert unsafe_reason(name) is None
    path = output_path(tmp_path, name, ".png")
    assert path.resolve().is_relative_to(tmp_path.resolve()) and path.suffix == ".png"


def test_a_symbolic_link_inside_the_output_folder_cannot_lead_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UnsafeNameError, match="leads outside"):
        output_path(tmp_path / "out", "sub/a.jpg", ".png")


def write_voc_with_lines(root: Path, lines: list[str]) -> Path:
    make_voc(root)
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("".join(f"{line}\n" for line in lines))
    return split


def test_voc_split_lines_that_leave_the_image_folder_are_left_out_and_named(tmp_path):
    victim = tmp_path / "photos" / "victim"
    write_image(victim.with_suffix(".jpg"), 6, 8)
    root = tmp_path / "voc"
    split = write_voc_with_lines(root, ["2007_000002", str(victim), "../../photos/victim"])
    dataset = open_dataset({"kind": "voc", "root": str(root)}, ["val"])
    assert [r.file_name for r in dataset.records()] == ["2007_000002.jpg"]
    with pytest.raises(UnsafeNameError, match=f"{split}:2: image name .* is absolute"):
        dataset.usable_records("error", [])
    skipped: list = []
    records = dataset.usable_records("skip", skipped)
    assert [r.file_name for r in records] == ["2007_000002.jpg"]
    assert [name for name, _ in skipped] == [f"{victim}.jpg", "../../photos/victim.jpg"]
    assert f"{split}:3" in skipped[1][1]
    # found at parse time, naming the file and the line; skip lists them instead
    spec = {"kind": "voc", "root": str(root), "imagesets": "Segmentation",
            "learn_splits": ["val"], "eval_split": None}  # fmt: skip
    with pytest.raises(ValueError, match=f"{split}:2"):
        preflight.check_image_names(spec, "error")
    assert len(preflight.check_image_names(spec, "skip")) == 2


def test_coco_file_names_that_leave_the_image_folder_are_left_out(tmp_path):
    images, json_path = make_coco(tmp_path)
    data = json.loads(json_path.read_text())
    data["images"][0]["file_name"] = "../../x/y.jpg"
    data["images"][1]["file_name"] = "/x/y.jpg"
    json_path.write_text(json.dumps(data))
    dataset = open_dataset({"kind": "coco", "root": str(images), "annotations": str(json_path)})
    assert [r.file_name for r in dataset.records()] == ["sub/b.jpg"]
    assert sorted(e.name for e in dataset.rejected) == ["../../x/y.jpg", "/x/y.jpg"]
    with pytest.raises(UnsafeNameError, match=f"{json_path}: image id"):
        dataset.usable_records("error", [])


def test_select_refuses_a_pseudo_ground_truth_whose_names_leave_the_output(tmp_path):
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    for name in ("../../escaped/y.jpg", "/tmp/escaped.jpg", "a/../../y.jpg"):
        coco = {
            "images": [{"id": 0, "file_name": name, "height": 4, "width": 5}],
            "annotations": [mask_annotation(mask, annotation_id=1, image_id=0, category_id=1)],
            "categories": [{"id": 1, "name": "cluster_00"}],
        }
        gt = tmp_path / "gt.json"
        gt.write_text(json.dumps(coco))
        prediction = {**coco["annotations"][0], "file_name": name, "score": 0.95}
        (tmp_path / "pred.json").write_text(json.dumps([prediction]))
        before = files_under(tmp_path)
        with pytest.raises(SystemExit):
            cli.main(["select", "--predictions", str(tmp_path / "pred.json"), "--pseudo-gt",
                      str(gt), "--out", str(tmp_path / "run" / "labels"), "--stats",
                      str(tmp_path / "run" / "stats.json")])  # fmt: skip
        assert files_under(tmp_path) == before
        assert not Path("/tmp/escaped.png").exists()


def test_two_images_with_one_stem_are_an_error_before_any_work():
    with pytest.raises(ValueError, match="'x.jpg' and 'x.png'"):
        check_collisions(["x.jpg", "y.jpg", "x.png"], ".png", "folder")
    check_collisions(["x.jpg", "sub/x.jpg"], ".png", "folder")  # other folders: no clash


def test_a_resume_folder_removes_only_what_maskdistill_wrote(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    theirs = [folder / "checkpoint-aaaaaaaaaaaa.pth", folder / "metrics-notes.txt"]
    for path in theirs:
        path.write_text("the user's")
    old, _ = resume_files(folder, {"lr": 1})
    old.write_text("ours")
    new, _ = resume_files(folder, {"lr": 2})
    assert not old.exists() and all(p.read_text() == "the user's" for p in theirs)
    new.write_text("ours")
    # a manifest naming the user's files, or paths outside, removes nothing of theirs
    (folder / RESUME_MANIFEST).write_text(json.dumps(["../x", "metrics-notes.txt", new.name]))
    remove_resume_files(folder)
    assert not new.exists() and all(p.is_file() for p in theirs)


@pytest.mark.parametrize(
    "run_name",
    ["..", ".", ".hidden", "a/b", "../x", "x y", "", "a/select.tau=../x", "a/s.t=..", "a/s.t=1/b"],
)
def test_run_names_that_could_leave_the_results_folder_are_refused(run_name):
    config = {"run_name": run_name, "dataset": {"kind": "folder", "root": "x"}}
    with pytest.raises(ValueError, match="run_name"):
        validate_config(config)


def test_a_sweep_run_name_is_one_level_below_its_sweep():
    config = {"run_name": "taus/select.tau=0.5", "dataset": {"kind": "folder", "root": "x"}}
    assert validate_config(config)["run_name"] == "taus/select.tau=0.5"


def test_images_above_the_pixel_limit_are_bad_images_found_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(path)  # 120,000 pixels, a few hundred bytes
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "100000")
    with pytest.raises(BadImageError, match="400 x 300 = 120,000 pixels.*max_pixels"):
        load_image(path)
    skipped: list = []
    assert load_or_skip(path, "skip", skipped) is None and "max_pixels" in skipped[0][1]
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "120000")
    assert load_image(path).shape == (300, 400, 3)


def test_an_rle_declaring_a_huge_size_is_refused_before_decoding(monkeypatch):
    huge = {"size": [20000, 20000], "counts": "0"}
    with pytest.raises(ValueError, match="20000 x 20000 pixels, more than"):
        decode_rle(huge, source="pred.json")
    small = rle(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match=r"RLE of size \[4, 5\], the image is \[5, 4\]"):
        decode_rle(small, (5, 4), "pred.json")
    for broken in ({"counts": "0"}, {"size": [4], "counts": "0"}, {"size": [4, -1]}, []):
        with pytest.raises(ValueError, match="not a COCO RLE"):
            decode_rle(broken)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["images"][0].pop("id"), r"images\[0\]: the key 'id' is missing"),
        (lambda d: d["images"][1].update(height="6"), r"images\[1\]: 'height' has the wrong"),
        (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\]: the key 'image_id'"),
        (lambda d: d["annotations"][1].update(image_id=999), "image_id 999 is not an image"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\]: the key 'name'"),
        (
            lambda d: d["annotations"][0]["segmentation"].update(size=[20000, 20000]),
            r"annotations\[0\]: RLE of 20000 x 20000 pixels",
        ),
        (
            lambda d: d["annotations"][0]["segmentation"].update(size=[8, 6]),
            r"annotations\[0\]: RLE of size \[8, 6\], its image is \[6, 8\]",
        ),
        (lambda d: d["images"][0].update(height=100000, width=100000), "more than the limit"),
    ],
)
def test_malformed_coco_json_names_the_file_and_the_key(tmp_path, edit, message):
    images, json_path = make_coco(tmp_path)
    data = json.loads(json_path.read_text())
    edit(data)
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        open_dataset({"kind": "coco", "root": str(images), "annotations": str(json_path)})
    assert str(json_path) in str(error.value)


def test_a_shard_without_its_format_attributes_is_named(tmp_path):
    path = tmp_path / "shard.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "maskdistill.discover_shard"
    with pytest.raises(ValueError, match=f"{path}: the attribute 'format_version' is missing"):
        read_shard_attrs(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(ValueError, match=f"{path}: the datasets .* are missing"):
        read_shard_attrs(path)


def test_class_names_from_data_cannot_break_tables_or_plots():
    from maskdistill.pictures import charts

    names = ["$\\notacommand{x}$", "a|b", "two\nlines"]
    table = markdown_table(["class", "IoU"], [(n, 1) for n in names])
    assert table.count("\n") == 2 + len(names)  # one line per row
    assert "a\\|b" in table and all(line.count(" | ") == 1 for line in table.splitlines()[2:])
    image = charts.per_class_bars({"stage": dict.fromkeys(names, 0.5)})
    assert image.ndim == 3 and image.shape[2] == 3


def test_predicted_masks_are_pasted_one_at_a_time_as_torchvision_pastes_them():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(5, 1, 28, 28, generator=generator)
    boxes = torch.tensor([[0, 0, 10, 10], [5, 3, 30, 20], [1, 1, 2, 2], [0, 0, 40, 25],
                          [12.5, 7.2, 33.3, 24.9]])  # fmt: skip
    output = {"masks": probabilities, "boxes": boxes}
    batched = paste_masks_in_image(probabilities, boxes, (25, 40))[:, 0] > 0.5
    one_by_one = list(pasted_masks(output, (25, 40)))
    assert len(one_by_one) == 5
    for mask, reference in zip(one_by_one, batched, strict=True):
        assert mask.shape == (25, 40) and np.array_equal(mask, reference.numpy())


def tiny_segmentation_model(tmp_path: Path) -> Path:
    """A stage-5 model file of a tiny random ViT DeepLab (no training)."""
    from maskdistill.models.deeplab import DeepLabSettings, build_deeplab
    from maskdistill.models.model_file import save_state

    values = {"arch": "vit", "init": "random:patch=8,width=16,depth=1,heads=2,img=32,seed=0",
              "freeze_layers": 0, "head_channels": 8}  # fmt: skip
    model, _ = build_deeplab(3, DeepLabSettings.from_config(values))
    path = tmp_path / "model.pth"
    described = {"num_outputs": 3, "size": 32, "backbone": model.backbone_description}
    save_state(path, model.state_dict(), values | described, {})
    return path


def test_segment_predict_writes_only_inside_its_folder_for_hostile_split_lines(tmp_path):
    victim = tmp_path / "photos" / "victim"
    write_image(victim.with_suffix(".jpg"), 6, 8)
    root = tmp_path / "voc"
    write_voc_with_lines(root, ["2007_000002", str(victim), "../../photos/victim"])
    model = tiny_segmentation_model(tmp_path)
    args = ["segment", "predict", "--model", str(model), "--images", str(root),
            "--dataset-kind", "voc", "--splits", "val", "--workers", "0", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    before = files_under(tmp_path)
    with pytest.raises(SystemExit):
        cli.main([*args, "--out", str(tmp_path / "out-error")])
    assert files_under(tmp_path) == before
    cli.main([*args, "--on-bad-image", "skip", "--out", str(tmp_path / "out")])
    assert files_under(tmp_path) - before == {
        tmp_path / "out" / "2007_000002.png",
        tmp_path / "out.skipped.tsv",
        tmp_path / "out.legend.json",
        tmp_path / "out.legend.png",
    }
    assert len((tmp_path / "out.skipped.tsv").read_text().splitlines()) == 3
    assert read_label_png(tmp_path / "out" / "2007_000002.png").shape == (6, 8)


def test_discover_names_a_file_whose_name_is_not_utf8_under_skip(tmp_path):
    folder = tmp_path / "images"
    write_image(folder / "good.jpg", 16, 16)
    write_image(Path(os.fsdecode(bytes(folder) + b"/bad\xff.jpg")), 16, 16)
    args = ["discover", "--images", str(folder), "--backbone",
            "random:patch=8,width=16,depth=1,heads=2,seed=0", "--feature-backbone", "same",
            "--resize", "16", "--heads", "1", "--workers", "0", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main([*args, "--out", str(tmp_path / "error.h5")])
    cli.main([*args, "--on-bad-image", "skip", "--out", str(tmp_path / "shard.h5")])
    skipped = read_shard_attrs(tmp_path / "shard.h5")["skipped"]
    assert len(skipped) == 1 and "not valid UTF-8" in skipped[0][1]
    assert "bad\\udcff.jpg" in skipped[0][1]  # named, printable


@pytest.fixture
def d2():
    from maskdistill.distill import detectron2 as backend

    if not backend.available():
        pytest.skip("detectron2 is not installed")
    return backend


def hostile_yaml(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.yaml"
    path.write_text(f'MODEL:\n  MASK_ON: !!python/object/apply:os.system ["touch {marker}"]\n')
    return path


def test_a_detectron2_yaml_that_would_run_code_is_refused(tmp_path, d2):
    from maskdistill.config import defaults

    marker = tmp_path / "pwned"
    evil = hostile_yaml(tmp_path, marker)
    base = tmp_path / "base.yaml"
    base.write_text(f"_BASE_: {evil.name}\n")
    for config in (evil, base):
        settings = defaults("distill") | {"detectron2_config": str(config)}
        with pytest.raises(ValueError, match="not plain YAML"):
            d2.build_config(settings, 2, tmp_path / "out", "cpu")
        assert not marker.exists()


def test_detectron2_follows_last_checkpoint_only_to_a_pth_file_of_its_folder(tmp_path, d2):
    marker = tmp_path / "resume" / "last_checkpoint"
    marker.parent.mkdir()
    for planted in ("../planted.pkl", "/tmp/x.pth", "model_0000099.pkl", "sub/m.pth"):
        marker.write_text(planted)
        with pytest.raises(ValueError, match="not a .pth file of its own folder"):
            d2.check_last_checkpoint(marker.parent)
    marker.write_text("model_0000099.pth\n")
    d2.check_last_checkpoint(marker.parent)


def test_a_pickle_init_needs_trust_pickle(tmp_path):
    settings = {"backend": "detectron2", "arch": "resnet50", "init": str(tmp_path / "r50.pkl"),
                "trust_pickle": False}  # fmt: skip
    with pytest.raises(ValueError, match="distill.trust_pickle"):
        preflight.check_distill_backend(settings, installed=True)
    preflight.check_distill_backend(settings | {"trust_pickle": True}, installed=True)
    preflight.check_distill_backend(settings | {"init": "r50.pth"}, installed=True)


def test_the_label_png_of_a_probe_export_stays_inside_its_folder(tmp_path):
    path = label_png_path(tmp_path, "sub/a.jpg")
    assert path == tmp_path / "sub" / "a.png"
    with pytest.raises(UnsafeNameError):
        label_png_path(tmp_path, "/etc/a.jpg")
