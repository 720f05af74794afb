"""Checks before any job: each bad setting fails with its config key, good ones pass."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from maskdistill import preflight
from maskdistill.config import validate_config

REPO = Path(__file__).resolve().parents[1]


def _voc_tree(root: Path, images: int = 20) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    names = [f"im{i}" for i in range(images)]
    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    (sets / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    (sets / "val.txt").write_text(names[-1] + "\n")
    return root


@pytest.fixture
def config(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(REPO)  # the demo backbone's relative path
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    base["demo_data"]["generate"] = False
    base["dataset"]["root"] = str(_voc_tree(tmp_path / "voc"))
    base["cluster"]["k"] = 2
    return validate_config(base)


def test_a_good_config_passes_and_its_image_counts_are_known(config):
    preflight.check_config(config)  # raises on any problem
    assert preflight.image_count(config["dataset"]) == 20  # train + val, from the lists alone
    assert preflight.split_count(config, ["train"]) == 19
    assert preflight.split_count(config, ["val"]) == 1
    assert preflight.backbone_heads(config["discover"]["backbone"], None) == 3  # the demo ViT


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, t: c["dataset"].update(root=str(t / "nowhere")), r"'dataset.root': .* is not"),
        (lambda c, t: c["dataset"].update(eval_split="test"), r"test.txt is missing"),
        (
            lambda c, t: c["discover"].update(backbone="random:patch=8,width=48,heads=3", heads=4),
            r"'discover.heads': 4 heads .* has 3",
        ),
        (lambda c, t: c["cluster"].update(k=25), r"'cluster.k': 25 x overcluster 1 .* only 20"),
        (
            lambda c, t: c["segment"].update(train_splits=["val"]),
            r"'segment.batch_size': a batch of 16 images, but the stage-5 training images has "
            r"only 1",
        ),
        (lambda c, t: c["distill"].update(batch_size=21), r"'distill.batch_size': a batch of 21"),
        (
            lambda c, t: c["probe"].update(enabled=True, epochs=25, lr_epochs=[25]),
            r"'probe.lr_epochs': \[25\] would never decay",
        ),
        (
            lambda c, t: (
                (t / "text.pth").write_text("hello")
                and c["segment"].update(init=str(t / "text.pth"))
            ),
            r"'segment.init': .*text.pth is not a weights file",
        ),
        (
            lambda c, t: c["discover"].update(backbone="vit_small_patch16_224.dino", heads=7),
            r"'discover.heads': 7 heads .* has 6",
        ),
    ],
)
def test_a_bad_setting_names_its_key(config, tmp_path, change, message):
    bad = copy.deepcopy(config)
    change(bad, tmp_path)
    with pytest.raises(ValueError, match=message):
        preflight.check_config(bad)


def test_a_corrupt_weights_file_is_found_before_any_job(config, tmp_path):
    good = tmp_path / "w.pth"
    with zipfile.ZipFile(good, "w") as archive:  # torch.save's container
        archive.writestr("archive/data.pkl", b"x" * 1000)
    preflight.check_weights_file(good, "segment.init")
    data = bytearray(good.read_bytes())
    data[60:70] = b"\0" * 10  # inside the member's bytes: its CRC no longer matches
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(bytes(data))
    bad = copy.deepcopy(config)
    bad["segment"]["init"] = str(corrupt)
    with pytest.raises(ValueError, match=r"'segment.init': .*corrupt.pth is corrupt"):
        preflight.check_config(bad)
    (tmp_path / "empty.pth").touch()
    with pytest.raises(ValueError, match="is empty"):
        preflight.check_weights_file(tmp_path / "empty.pth", "distill.init")
    (tmp_path / "x.safetensors").write_bytes(b"\1\2")
    with pytest.raises(ValueError, match="not a safetensors file"):
        preflight.check_weights_file(tmp_path / "x.safetensors", "discover.backbone")


def test_heads_are_read_from_a_safetensors_header(tmp_path):
    import json
    import struct

    cls_token = {"dtype": "F32", "shape": [1, 1, 384], "data_offsets": [0, 0]}
    header = json.dumps({"cls_token": cls_token})
    path = tmp_path / "vit.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    assert preflight.backbone_heads(str(path), None) == 6
    with pytest.raises(ValueError, match="has 6"):
        preflight.check_heads(7, str(path), None)
    preflight.check_heads(7, str(path), 8)  # discover.num_heads overrides


def test_the_image_count_of_folders_and_lists(tmp_path):
    root = _voc_tree(tmp_path / "v", images=4)
    voc = {"kind": "voc", "root": str(root), "imagesets": "Segmentation"}
    assert preflight.image_count(voc | {"learn_splits": ["train", "val"]}) == 4
    assert preflight.image_count(voc | {"learn_splits": ["train"]}) == 3
    assert preflight.image_count({"kind": "folder"}, ["a.jpg", "b.jpg"]) == 2
    assert preflight.image_count({"kind": "coco", "image_list": None}) is None
