"""Stage 5 (segment): the hard-pixel-mining loss, DeepLab learning known maps, frozen stages,
exact resume, the dense CRF, the linear probe and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_file_checks import copy_alone, undescribed_copy
from PIL import Image

from maskdistill import cli
from maskdistill.config import defaults
from maskdistill.distributed import World
from maskdistill.loader import PredictionRun
from maskdistill.masks import (
    IGNORE,
    label_png_path,
    mask_annotation,
    read_label_png,
    write_label_png,
)
from maskdistill.metrics import confusion_matrix, semantic_scores
from maskdistill.models.deeplab import DeepLabSettings, build_deeplab, probe_network
from maskdistill.segment.crf import CRFSettings, crf_available, dense_crf
from maskdistill.segment.data import Augmentation, LabelledImage, SegmentationDataset
from maskdistill.segment.loss import ohem_cross_entropy
from maskdistill.segment.predict import predict_label_maps
from maskdistill.segment.schedule import EpochSchedule
from maskdistill.segment.train import train_epochs
from maskdistill.training.loop import TrainingRun
from maskdistill.training.rng import seeded

TINY_VIT = "random:patch=8,width=32,depth=1,heads=2,img=32,seed=0"
NETWORK = DeepLabSettings(arch="vit", init=TINY_VIT, freeze_layers=0, head_channels=16)
AUGMENT = Augmentation(size=64, scale_range=(0.9, 1.1), rotation=2.0, flip=True)
COLOURS = {1: (230, 40, 40), 2: (40, 80, 230)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def schedule(**overrides) -> EpochSchedule:
    values = defaults("segment") | {"batch_size": 4, "epochs": 2, "lr": 0.05} | overrides
    return EpochSchedule.from_config(values)


# ---------------------------------------------------------------- the loss


def _cross_entropy(logits: np.ndarray, label: int) -> float:
    return float(math.log(np.exp(logits).sum()) - logits[label])


def test_ohem_is_the_mean_of_the_hardest_valid_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 3, 5, 5))
    labels = rng.integers(0, 3, size=(1, 5, 5))
    labels[0, 0, :3] = IGNORE  # 3 ignored, 22 valid pixels
    losses = sorted(
        (
            _cross_entropy(logits[0, :, i, j], labels[0, i, j])
            for i in range(5)
            for j in range(5)
            if labels[0, i, j] != IGNORE
        ),
        reverse=True,
    )
    k = int(0.2 * 25)  # all 25 pixels count, ignored ones included: 5
    got = ohem_cross_entropy(torch.tensor(logits), torch.tensor(labels))
    assert float(got) == pytest.approx(np.mean(losses[:k]), rel=1e-12)
    # the cap: with only 3 valid pixels, k = 3 < int(0.2 * 25)
    capped = np.full((1, 5, 5), IGNORE)
    capped[0, 4, :3] = labels[0, 4, :3]
    expected = np.mean([_cross_entropy(logits[0, :, 4, j], capped[0, 4, j]) for j in range(3)])
    got = ohem_cross_entropy(torch.tensor(logits), torch.tensor(capped))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    nothing = torch.tensor(logits, requires_grad=True)
    zero = ohem_cross_entropy(nothing, torch.full((1, 5, 5), IGNORE))
    zero.backward()
    assert float(zero.detach()) == 0.0 and nothing.grad is not None


# ---------------------------------------------------------------- training on known maps


def _scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a red and a blue square; labels 1 (red) and 2 (blue), 0 elsewhere."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    labels = np.zeros((size, size), np.uint8)
    for label, left in ((1, 4), (2, size // 2 + 2)):
        top = int(rng.integers(4, size - 24))
        image[top : top + 20, left : left + 20] = COLOURS[label]
        labels[top : top + 20, left : left + 20] = label
    return image, labels


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, list[LabelledImage]]:
    root = tmp_path_factory.mktemp("segment")
    rng = np.random.default_rng(0)
    items = []
    for i in range(8):
        image, labels = _scene(rng)
        Image.fromarray(image).save(root / f"s{i}.png")
        write_label_png(root / "labels" / f"s{i}.png", labels)
        items.append(LabelledImage(f"s{i}.png", root / f"s{i}.png", root / "labels" / f"s{i}.png"))
    return root, items


def _train(items, tmp_path, network=NETWORK, stop_after=None, loss="segment", model=None, **kw):
    plan = schedule(**kw)
    if model is None:
        with seeded(plan.seed):
            model, norm = build_deeplab(3, network)
    else:
        norm = build_deeplab(3, network)[1]
    dataset = SegmentationDataset(items, AUGMENT, norm, plan.seed)
    run = TrainingRun(
        run_settings={"test": True, **kw},
        checkpoint=tmp_path / "checkpoint.pth",
        checkpoint_every=3,
        resume=True,
        metrics_log=tmp_path / "metrics.jsonl",
        device=torch.device("cpu"),
        world=World(),
        progress=False,
        stop_after=stop_after,
    )
    trained = train_epochs(model, dataset, plan, run, loss=loss)
    return trained, norm


def _miou(model, norm, items, num_classes=3, mapping=None) -> float:
    from maskdistill.data import ImageRecord

    records = [ImageRecord(i, item.file_name, item.image) for i, item in enumerate(items)]
    truth = {item.file_name: read_label_png(item.labels) for item in items}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    model.eval()
    run = PredictionRun(device=torch.device("cpu"), progress=False)
    for record, labels in predict_label_maps(model, records, run, size=AUGMENT.size, norm=norm):
        confusion += confusion_matrix(truth[record.file_name], labels, num_classes, num_classes)
    names = [str(i) for i in range(num_classes)]
    return semantic_scores(confusion, names, mapping)["miou"]


def test_deeplab_learns_known_label_maps(scenes, tmp_path):
    _, items = scenes
    untrained, norm = _train(items, tmp_path / "untrained", epochs=1, lr=1e-9)
    trained, norm = _train(items, tmp_path / "trained", epochs=60, lr=0.1, lr_epochs=[50])
    before, after = _miou(untrained, norm, items), _miou(trained, norm, items)
    assert before < 0.5 < 0.8 < after, (before, after)


def test_resume_after_a_stop_gives_the_uninterrupted_weights(scenes, tmp_path):
    _, items = scenes
    straight, _ = _train(items, tmp_path / "straight", epochs=2)
    _train(items, tmp_path / "sliced", epochs=2, stop_after=1)
    assert torch.load(tmp_path / "sliced" / "checkpoint.pth", weights_only=True)["step"] == 1
    resumed, _ = _train(items, tmp_path / "sliced", epochs=2)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "sliced" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]  # 8 images, batch 4: 2 steps an epoch, none repeated


def test_the_frozen_stages_of_a_dilated_resnet_do_not_change(tmp_path):
    torch.manual_seed(0)
    network = DeepLabSettings(arch="resnet50", init="none", freeze_layers=2, head_channels=16)
    model, norm = build_deeplab(3, network)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(1)
    items = []
    for i in range(2):
        image, labels = _scene(rng)
        Image.fromarray(image).save(tmp_path / f"r{i}.png")
        write_label_png(tmp_path / f"l{i}.png", labels)
        items.append(LabelledImage(f"r{i}.png", tmp_path / f"r{i}.png", tmp_path / f"l{i}.png"))
    _train(items, tmp_path, network=network, model=model, batch_size=2, epochs=1)
    after = model.state_dict()
    frozen = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2.")
    for key, value in before.items():
        if key.startswith(frozen):
            assert torch.equal(after[key], value), key  # weights and BatchNorm statistics
    assert not torch.equal(
        after["backbone.layer3.0.conv1.weight"], before["backbone.layer3.0.conv1.weight"]
    )
    assert not torch.equal(
        after["backbone.layer3.0.bn1.running_mean"], before["backbone.layer3.0.bn1.running_mean"]
    )


# ---------------------------------------------------------------- CRF and the linear probe


@pytest.mark.skipif(
    not crf_available(), reason="pydensecrf2 is not installed (pip install '.[crf]')"
)
def test_the_crf_brings_a_noisy_probability_map_closer_to_the_truth():
    rng = np.random.default_rng(0)
    image = np.full((48, 64, 3), 30, np.uint8)
    truth = np.zeros((48, 64), int)
    image[12:36, 16:40] = (220, 60, 60)
    truth[12:36, 16:40] = 1
    foreground = np.clip(
        0.5 + 0.15 * (2 * truth - 1) + rng.uniform(-0.35, 0.35, truth.shape), 0.01, 0.99
    )
    probabilities = np.stack([1 - foreground, foreground])
    settings = CRFSettings.from_config(defaults("segment"))
    refined = dense_crf(image, probabilities, settings)
    argmax_errors = (probabilities.argmax(0) != truth).mean()
    assert argmax_errors > 0.1 and (refined != truth).mean() < argmax_errors / 4


def _calibrate_batchnorm(model: torch.nn.Module, norm, items) -> None:
    """Set every BatchNorm's running statistics to those of ``items`` (cumulative averages)."""
    images = torch.stack(
        [torch.from_numpy(np.array(Image.open(item.image))).permute(2, 0, 1) for item in items]
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (norm.mean, norm.std))
    model.train()
    with torch.no_grad():
        model((images.float() / 255 - mean) / std)


def test_the_linear_probe_learns_a_separable_labelling_on_a_frozen_random_network(scenes, tmp_path):
    _, items = scenes
    # the toy labelling: red square -> 1, everything else 0 (the blue square is background)
    toy = []
    for item in items:
        labels = read_label_png(item.labels)
        write_label_png(tmp_path / item.labels.name, np.where(labels == 1, 1, 0))
        toy.append(LabelledImage(item.file_name, item.image, tmp_path / item.labels.name))
    fine = DeepLabSettings(arch="vit", init=TINY_VIT.replace("patch=8", "patch=4"),
                           freeze_layers=0, head_channels=16)  # fmt: skip
    with seeded(0):
        model, norm = build_deeplab(3, fine)
    _calibrate_batchnorm(model, norm, items)  # as a trained network's statistics would be
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    with seeded(0):
        probe = probe_network(model, 2)
    before = _miou(probe, norm, toy, num_classes=2, mapping=np.arange(2))
    trained, _ = _train(toy, tmp_path, model=probe, loss="probe", epochs=40, lr=0.3, lr_epochs=[20])
    kept = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.4.")}
    assert all(torch.equal(v, frozen[k]) for k, v in kept.items())  # only the new conv trained
    score = _miou(trained, norm, toy, num_classes=2, mapping=np.arange(2))
    assert before < 0.5 < 0.75 < score, (before, score)


# ---------------------------------------------------------------- the command line


def test_cli_trains_predicts_probes_and_evaluates(tmp_path):
    data = tmp_path / "demo"
    cli.main(["make-demo-data", "--out", str(data), "--num-train", "4", "--num-val", "4"])
    from maskdistill.data import open_dataset

    dataset = open_dataset({"kind": "voc", "root": str(data)}, ["train", "val"])
    coco = {"images": [], "annotations": [], "categories": [{"id": k} for k in (1, 2)]}
    for i, record in enumerate(dataset.records()):
        coco["images"].append({"id": i, "file_name": record.file_name,
                               "height": record.height, "width": record.width})  # fmt: skip
        mask, label = dataset.instance_masks(record)[0]
        write_label_png(label_png_path(tmp_path / "maps", record.file_name), mask * (1 + label % 2))
        coco["annotations"].append(
            mask_annotation(mask, annotation_id=i + 1, image_id=i, category_id=1 + label % 2)
        )
    (tmp_path / "pgt.json").write_text(json.dumps(coco))
    voc = ["--images", str(data), "--dataset-kind", "voc"]
    net = ["--arch", "vit", "--init", TINY_VIT, "--freeze-layers", "0", "--head-channels", "16",
           "--size", "32", "--epochs", "1", "--batch-size", "4", "--lr-epochs", "1"]  # fmt: skip
    run = ["--workers", "0", "--device", "cpu", "--no-progress"]
    cli.main(["segment", "train", "--labels", str(tmp_path / "maps"), "--pseudo-gt",
              str(tmp_path / "pgt.json"), *voc, "--splits", "train", "val", *net, *run,
              "--resume-dir", str(tmp_path / "resume"), "--out", str(tmp_path / "model.pth"),
              "--metrics", str(tmp_path / "m.jsonl")])  # fmt: skip
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2  # 8 images, batch 4
    for shard in (0, 1):
        cli.main(["segment", "predict", "--model", str(tmp_path / "model.pth"), *voc,
                  "--splits", "val", "--shard", str(shard), "--num-shards", "2", *run,
                  "--out", str(tmp_path / "pred" / f"shard-{shard}")])  # fmt: skip
    written = sorted(p.name for p in (tmp_path / "pred").glob("shard-*/*.png"))
    assert written == sorted(f"val_{i:06d}.png" for i in range(4))
    for record in open_dataset({"kind": "voc", "root": str(data)}, ["val"]).records():
        (png,) = (tmp_path / "pred").glob(f"shard-*/{Path(record.file_name).stem}.png")
        assert read_label_png(png).shape == (record.height, record.width)  # the original size
        assert read_label_png(png).max() <= 2
    cli.main(["evaluate", "labels", "--labels", *map(str, (tmp_path / "pred").glob("shard-*")),
              "--pseudo-gt", str(tmp_path / "pgt.json"), "--title", "stage 5: segment", *voc,
              "--splits", "val", "--out", str(tmp_path / "segment.json")])  # fmt: skip
    report = json.loads((tmp_path / "segment.json").read_text())
    val = open_dataset({"kind": "voc", "root": str(data)}, ["val"])
    confusion = np.zeros((1 + len(val.class_names), 3), np.int64)
    for record in val.records():  # the mIoU of the written PNGs, computed here from the parts
        (png,) = (tmp_path / "pred").glob(f"shard-*/{Path(record.file_name).stem}.png")
        gt = val.semantic_labels(record)
        confusion += confusion_matrix(gt, read_label_png(png), len(confusion), 3)
    expected = semantic_scores(confusion, ["background", *val.class_names])["miou"]
    assert report["title"] == "stage 5: segment"
    assert report["summary"]["mIoU"] == pytest.approx(expected, abs=1e-12)
    cli.main(["segment", "probe", "--model", str(tmp_path / "model.pth"), *voc, "--splits",
              "train", "--size", "32", "--epochs", "1", "--batch-size", "2", "--lr-epochs", "1",
              *run, "--resume-dir", str(tmp_path / "probe"), "--out",
              str(tmp_path / "probe.pth"), "--metrics", str(tmp_path / "p.jsonl")])  # fmt: skip
    cli.main(["segment", "predict", "--model", str(tmp_path / "probe.pth"), *voc, "--splits",
              "val", *run, "--out", str(tmp_path / "probe_pred")])  # fmt: skip
    assert max(read_label_png(p).max() for p in (tmp_path / "probe_pred").glob("*.png")) <= 6
    cli.main(["evaluate", "labels", "--labels", str(tmp_path / "probe_pred"), "--supervised",
              "--pseudo-gt", str(tmp_path / "pgt.json"), "--title", "linear probe", *voc,
              "--splits", "val", "--out", str(tmp_path / "probe.json")])  # fmt: skip
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["matching"] == "identity (supervised)"


def test_the_schema_sections_match_the_settings_classes():
    from dataclasses import fields

    from maskdistill.commands.segment import AUGMENTATION, CRF, NETWORK, SCHEDULE

    # not settings of one network: which images and labels, CRF use, execution
    execution = {"train_splits", "labels", "crf", "crf_rounds", "precision", "checkpoint_every"}
    execution |= {"device"}
    assert set(defaults("segment")) == set(NETWORK + AUGMENTATION + SCHEDULE + CRF) | execution
    assert set(defaults("probe")) - {"enabled", "splits"} == {f.name for f in fields(EpochSchedule)}


# ---------------------------------------------------------------- the reference's rules


def reference_lr(base: float, decay_epochs: list[int], epoch: int, rate: float = 0.1) -> float:
    """The authors' adjust_learning_rate (segmentation/utils/common_config.py), step scheduler."""
    steps = np.sum(epoch > np.array(decay_epochs))
    return base * rate**steps if steps > 0 else base


@pytest.mark.parametrize("section", ["segment", "probe"])
def test_the_voc12_schedules_decay_at_the_authors_epochs(repo, section):
    import yaml

    preset = yaml.safe_load((repo / "configs" / "voc12.yaml").read_text())
    values = defaults(section) | (preset.get(section) or {})
    schedule = EpochSchedule.from_config(values)
    per_epoch = 7
    table = [reference_lr(values["lr"], values["lr_epochs"], e) for e in range(values["epochs"])]
    ours = [schedule.lr_at(e * per_epoch + 3, per_epoch) for e in range(values["epochs"])]
    assert ours == pytest.approx(table)
    decay = values["lr_epochs"][0]
    assert ours.count(values["lr"]) == decay + 1  # segment: 41 epochs at 0.002; probe: 26


def test_pixels_rotated_in_from_outside_the_image_are_background():
    from maskdistill.segment.data import augment

    image = np.full((64, 64, 3), 200, np.uint8)
    labels = np.full((64, 64), 2, np.uint8)
    labels[:, 32:] = 1  # two classes
    settings = Augmentation(size=64, scale_range=(1.0, 1.0), rotation=30.0, flip=False)
    rng = np.random.default_rng(0)
    while True:  # a draw that turns by at least 25 degrees
        state = rng.bit_generator.state
        angle = abs(rng.uniform(-30.0, 30.0))
        if angle > 25:
            rng.bit_generator.state = state
            break
    tensor, label_map = augment(image, labels, settings, rng)
    corners = [label_map[0, 0], label_map[0, -1], label_map[-1, 0], label_map[-1, -1]]
    assert all(int(c) == 0 for c in corners)  # background, trained on (not 255)
    assert set(label_map.unique().tolist()) == {0, 1, 2}
    assert float(tensor[:, 0, 0].max()) == 0.0 and float(tensor[:, 32, 32].min()) > 0.7


# ---------------------------------------------------------------- prediction on new photos


def test_predicting_into_an_existing_folder_stops_before_any_work_or_overwrites(tmp_path):
    from maskdistill.models.model_file import save_state

    values = {"arch": "vit", "init": TINY_VIT, "freeze_layers": 0, "head_channels": 8}
    model, _ = build_deeplab(3, DeepLabSettings.from_config(values))
    names = ["background", "cluster_00", "cluster_01"]
    settings = values | {"num_outputs": 3, "size": 32, "label_names": names}
    settings["backbone"] = model.backbone_description
    save_state(tmp_path / "model.pth", model.state_dict(), settings, {})
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (40, 30), (90, 20, 200)).save(photos / name)
    command = ["segment", "predict", "--model", str(tmp_path / "model.pth"), "--images",
               str(photos), "--workers", "0", "--device", "cpu", "--no-progress", "--out",
               str(tmp_path / "out")]  # fmt: skip
    cli.main(command)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    legend = json.loads((tmp_path / "out.legend.json").read_text())["labels"]
    assert [entry["name"] for entry in legend] == names
    assert [entry["colour"] for entry in legend[:2]] == [[0, 0, 0], [128, 0, 0]]  # VOC colours
    assert read_label_png(tmp_path / "out.legend.png").max() == 2
    stamp = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    with pytest.raises(SystemExit):  # an existing folder: nothing is computed, nothing lost
        cli.main(command)
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == stamp
    (tmp_path / "out" / "stale.png").write_bytes(b"old")
    cli.main([*command, "--overwrite"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    Image.new("RGB", (40, 30)).save(photos / "a.png")  # a.jpg and a.png: one a.png
    with pytest.raises(SystemExit):
        cli.main([*command[:-1], str(tmp_path / "clash")])
    assert not (tmp_path / "clash").exists()


def test_a_model_file_alone_segments_new_photos_as_the_pipeline_does(tmp_path, monkeypatch):
    """Trained from a ViT weight file, then copied alone into an empty folder with the weight
    file gone: the same labels as the pipeline's prediction, and without a description a clear
    error naming the file."""
    from maskdistill.models import vit

    backbone = vit.load_backbone("random:patch=8,width=192,depth=1,img=32,seed=0")  # 3 heads
    init = tmp_path / "init" / "vit.pth"
    init.parent.mkdir()
    torch.save(backbone.state_dict(), init)
    data = tmp_path / "demo"
    cli.main(["make-demo-data", "--out", str(data), "--num-train", "4", "--num-val", "2"])
    labels = tmp_path / "maps"
    coco = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    for i, name in enumerate(sorted(p.name for p in (data / "JPEGImages").iterdir())):
        size = Image.open(data / "JPEGImages" / name).size
        coco["images"].append({"id": i, "file_name": name, "height": size[1], "width": size[0]})
        block = np.zeros(size[::-1], np.uint8)
        block[: size[1] // 2] = 1 + i % 2
        write_label_png(label_png_path(labels, name), block)
    (tmp_path / "pgt.json").write_text(json.dumps(coco))
    run = ["--workers", "0", "--device", "cpu", "--no-progress"]
    cli.main(["segment", "train", "--labels", str(labels), "--pseudo-gt",
              str(tmp_path / "pgt.json"), "--images", str(data), "--dataset-kind", "voc",
              "--splits", "train", "--arch", "vit",
              "--init", str(init), "--freeze-layers", "0", "--head-channels", "8", "--size", "32",
              "--epochs", "1", "--batch-size", "2", "--lr-epochs", *run, "--resume-dir",
              str(tmp_path / "resume"), "--out", str(tmp_path / "model.pth"), "--metrics",
              str(tmp_path / "m.jsonl")])  # fmt: skip
    photos = data / "JPEGImages"
    predict = ["segment", "predict", "--images", str(photos), *run]
    cli.main([*predict, "--model", str(tmp_path / "model.pth"), "--out", str(tmp_path / "ours")])
    alone = copy_alone(tmp_path / "model.pth", init, monkeypatch)
    cli.main([*predict, "--model", "model.pth", "--out", "labels"])
    ours = sorted((tmp_path / "ours").iterdir())
    assert [p.name for p in ours] == sorted(p.name for p in (alone / "labels").iterdir())
    for png in ours:
        assert np.array_equal(read_label_png(png), read_label_png(alone / "labels" / png.name))
    undescribed_copy(alone / "model.pth")
    with pytest.raises(SystemExit):
        cli.main([*predict, "--model", "old.pth", "--out", "old"])
    assert not (alone / "old").exists()
