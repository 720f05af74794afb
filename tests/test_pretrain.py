"""DINO pretraining: losses on hand-made numbers, EMA, schedules, exact resume, views, export."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import maskdistill
from maskdistill import cli, demo
from maskdistill.models import vit
from maskdistill.models.norm import IMAGENET
from maskdistill.pretrain import augment, loop, losses, views
from maskdistill.pretrain.settings import PretrainSettings
from maskdistill.training import schedules

ASSET = Path(maskdistill.__file__).parent / "assets" / "demo_vit.pth"

TINY = PretrainSettings.with_defaults(
    patch_size=4,
    embed_dim=12,
    depth=2,
    num_heads=2,
    global_size=16,
    local_size=8,
    num_local=2,
    out_dim=16,
    head_hidden=8,
    head_bottleneck=4,
    batch_size=3,
    steps=4,
    warmup_fraction=0.25,
    freeze_last_layer_fraction=0.25,
    infonce_weight=1.0,
)


def random_views(rng: np.random.Generator, batch: int) -> tuple[list, list]:
    """A tiny view source: random 20 x 24 images, a different second view per scene."""
    first = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(batch)]
    second = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(batch)]
    return first, second


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_dino_loss_matches_a_direct_computation():
    # one scene (B = 1), K = 3 prototypes, 2 global crops + 1 local crop
    teacher = [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]
    student = [[0.3, -0.2, 0.4], [2.0, 1.0, 0.0], [-1.0, 0.5, 0.5]]
    center = [0.1, -0.1, 0.0]
    ts, tt = 0.1, 0.04
    expected, pairs = 0.0, 0
    for t, t_row in enumerate(teacher):
        target = softmax([(x - c) / tt for x, c in zip(t_row, center, strict=True)])
        for v, s_row in enumerate(student):
            if v == t:
                continue
            prob = softmax([x / ts for x in s_row])
            expected += -sum(p * math.log(q) for p, q in zip(target, prob, strict=True))
            pairs += 1
    expected /= pairs
    assert pairs == 4
    got = losses.dino_loss(
        torch.tensor(student, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(center, dtype=torch.float64),
        ts,
        tt,
    )
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_dino_loss_averages_scenes_crop_major():
    # B = 2: rows are crop-major (crop 0 of scenes 0, 1, then crop 1 of scenes 0, 1)
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    student = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    center = torch.zeros(5, dtype=torch.float64)
    both = losses.dino_loss(student, teacher, center, 0.1, 0.04)
    singles = [losses.dino_loss(student[i::2], teacher[i::2], center, 0.1, 0.04) for i in range(2)]
    assert float(both) == pytest.approx(sum(float(s) for s in singles) / 2, rel=1e-12)


def test_center_update():
    center = torch.tensor([1.0, 0.0])
    logits = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    # 0.9 * [1, 0] + 0.1 * [1, 3]
    assert torch.allclose(losses.updated_center(center, logits, 0.9), torch.tensor([1.0, 0.3]))


def test_ema_update_is_exact():
    teacher, student = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher.bias.fill_(4.0)
        student.weight.copy_(torch.tensor([[3.0, -2.0]]))
        student.bias.fill_(0.0)
    schedules.ema_update(teacher, student, 0.75)
    assert teacher.weight.tolist() == [[1.5, 1.0]]  # 0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.5
    assert teacher.bias.tolist() == [3.0]
    assert student.weight.tolist() == [[3.0, -2.0]]


def test_cosine_schedule():
    assert schedules.cosine_schedule(0, 10, 1.0, 0.0, warmup_steps=2) == 0.0
    assert schedules.cosine_schedule(1, 10, 1.0, 0.0, warmup_steps=2) == 0.5
    assert schedules.cosine_schedule(2, 10, 1.0, 0.0, warmup_steps=2) == 1.0
    assert schedules.cosine_schedule(6, 10, 1.0, 0.0, warmup_steps=2) == pytest.approx(0.5)
    assert schedules.cosine_schedule(10, 10, 1.0, 0.0, warmup_steps=2) == pytest.approx(0.0)
    sched = loop.schedule_at(0, PretrainSettings.with_defaults(steps=100))
    assert sched.teacher_momentum == pytest.approx(0.995) and sched.freeze_last_layer
    late = loop.schedule_at(100, PretrainSettings.with_defaults(steps=100))
    assert late.teacher_momentum == pytest.approx(1.0) and not late.freeze_last_layer
    assert late.lr == pytest.approx(1e-6) and late.weight_decay == pytest.approx(0.4)


def test_info_nce_and_koleo_known_values():
    eye = torch.eye(3)
    # logits = I / T: the positive scores 1 / T, two negatives 0
    expected = -math.log(math.exp(5.0) / (math.exp(5.0) + 2.0))
    assert float(losses.info_nce(eye, 2 * eye, 0.2)) == pytest.approx(expected, rel=1e-6)
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # every point's nearest neighbour is at distance sqrt(2)
    assert float(losses.koleo(3 * square)) == pytest.approx(-math.log(math.sqrt(2)), rel=1e-5)


def test_prototypes_frozen_during_the_first_steps():
    state = loop.new_state(TINY)
    before = state.student.head.prototypes.detach().clone()
    globals_, locals_ = augment.multi_crop(
        *random_views(np.random.default_rng(0), 3), TINY, torch.Generator().manual_seed(0)
    )
    loop.train_step(state, globals_, locals_)  # step 0: lr 0 anyway
    loop.train_step(state, globals_, locals_)  # step 1 >= 0.25 * 4: prototypes move
    assert not torch.equal(before, state.student.head.prototypes)
    frozen = loop.new_state(dataclasses.replace(TINY, freeze_last_layer_fraction=0.5))
    start = frozen.student.head.prototypes.detach().clone()
    for _ in range(2):
        loop.train_step(frozen, globals_, locals_)
    assert torch.equal(start, frozen.student.head.prototypes)
    assert not torch.equal(
        frozen.student.backbone.cls_token, loop.new_state(TINY).student.backbone.cls_token
    )


def test_resume_continues_exactly(tmp_path):
    straight = loop.train(TINY, random_views, tmp_path / "a.pth", checkpoint_every=1)
    loop.train(TINY, random_views, tmp_path / "b.pth", checkpoint_every=2, stop_after=2)
    payload = torch.load(tmp_path / "b.pth", weights_only=True)
    assert payload["step"] == 2
    resumed = loop.train(TINY, random_views, tmp_path / "b.pth", checkpoint_every=2)
    assert straight.step == resumed.step == 4
    for a, b in ((straight.student, resumed.student), (straight.teacher, resumed.teacher)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
    assert torch.equal(straight.center, resumed.center)
    assert not torch.equal(straight.center, torch.zeros_like(straight.center))
    opt_a, opt_b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for key, value in opt_a["state"].items():
        assert torch.equal(value["exp_avg"], opt_b["state"][key]["exp_avg"])


def test_resume_refuses_other_settings(tmp_path):
    loop.train(TINY, random_views, tmp_path / "c.pth", stop_after=1)
    with pytest.raises(ValueError, match="other settings"):
        loop.train(dataclasses.replace(TINY, lr=1e-3), random_views, tmp_path / "c.pth")


def test_more_steps_continue_a_finished_run_and_fewer_are_refused(tmp_path):
    done = loop.train(TINY, random_views, tmp_path / "d.pth")
    longer = dataclasses.replace(TINY, steps=TINY.steps + 2)
    continued = loop.train(longer, random_views, tmp_path / "d.pth")
    assert continued.step == TINY.steps + 2
    assert not torch.equal(done.teacher.backbone.cls_token, continued.teacher.backbone.cls_token)
    payload = torch.load(tmp_path / "d.pth", weights_only=True)
    assert payload["extra"]["schedule"] == [[0, TINY.steps], [TINY.steps, TINY.steps + 2]]
    with pytest.raises(ValueError, match=rf"{TINY.steps + 2} steps are done, more than steps 1"):
        loop.train(dataclasses.replace(TINY, steps=1), random_views, tmp_path / "d.pth")


def test_a_corrupt_checkpoint_names_the_file_and_the_way_out(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ValueError, match=r"e.pth: not a readable training checkpoint.*--no-resume"):
        loop.train(TINY, random_views, tmp_path / "e.pth")


def test_global_crops_come_from_the_first_and_second_views():
    settings = dataclasses.replace(TINY, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    black = [np.zeros((20, 24, 3), np.uint8)] * 3
    white = [np.full((20, 24, 3), 255, np.uint8)] * 3
    globals_, locals_ = augment.multi_crop(black, white, settings, torch.Generator())
    mean = torch.tensor(IMAGENET.mean)[:, None, None]
    std = torch.tensor(IMAGENET.std)[:, None, None]
    pixels = globals_ * std + mean
    assert globals_.shape == (6, 3, 16, 16) and locals_.shape == (6, 3, 8, 8)
    assert torch.allclose(pixels[:3], torch.zeros(3, 3, 16, 16), atol=1e-5)
    assert torch.allclose(pixels[3:], torch.ones(3, 3, 16, 16), atol=1e-5)


def test_paired_demo_views_share_objects_and_differ_in_background():
    first, second = demo.paired_demo_views(np.random.default_rng(3), 4)
    rng = np.random.default_rng(3)
    for a, b in zip(first, second, strict=True):
        image_a, image_b, masks, _ = demo.render_scene_pair(rng)
        assert np.array_equal(a, image_a) and np.array_equal(b, image_b)
        objects = masks.any(axis=0)
        diff = np.abs(a.astype(int) - b.astype(int)).mean(axis=2)
        # objects: identical up to pixel noise; background: independently drawn
        assert diff[objects].mean() < 15
        assert diff[~objects].mean() > 2 * diff[objects].mean()


def test_exported_backbone_loads_strictly_through_the_discover_loader(tmp_path):
    state = loop.new_state(TINY)
    loop.export_backbone(tmp_path / "tiny.pth", state)
    model = vit.load_backbone(str(tmp_path / "tiny.pth"), num_heads=TINY.num_heads)
    saved = torch.load(tmp_path / "tiny.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved.values())
    assert set(saved) == set(state.teacher.backbone.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name].float()), name
    assert vit.patch_size(model) == 4 and model.blocks[0].attn.num_heads == 2


def test_shipped_demo_checkpoint_loads_strictly():
    model = vit.load_backbone(str(ASSET))
    assert vit.patch_size(model) == 8 and model.embed_dim == 192
    assert len(model.blocks) == 4 and model.blocks[0].attn.num_heads == 3
    assert ASSET.stat().st_size < 5 * 2**20


def test_cli_trains_exports_and_resumes(tmp_path, caplog):
    common = [
        "pretrain", "--views", "paired-demo", "--out", str(tmp_path / "backbone.pth"),
        "--checkpoint", str(tmp_path / "ck.pth"), "--patch-size", "8", "--embed-dim", "12",
        "--depth", "1", "--num-heads", "2", "--global-size", "16", "--local-size", "8",
        "--num-local", "1", "--out-dim", "8", "--head-hidden", "8", "--head-bottleneck", "4",
        "--batch-size", "2", "--threads", "1", "--metrics", str(tmp_path / "m.jsonl"),
    ]  # fmt: skip
    cli.main([*common, "--steps", "2", "--checkpoint-every", "1"])
    assert torch.load(tmp_path / "ck.pth", weights_only=True)["settings"]["infonce_weight"] == 1.0
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
    assert vit.load_backbone(str(tmp_path / "backbone.pth"), num_heads=2).embed_dim == 12
    with pytest.raises(SystemExit):  # other settings than the checkpoint's: one error, exit 1
        cli.main([*common, "--steps", "2", "--lr", "0.01"])
    assert "other settings" in caplog.text and "lr: saved" in caplog.text
    cli.main([*common, "--steps", "3"])  # more steps: the finished run continues
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 3


def test_cli_trains_on_a_folder_of_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(30, 40), (50, 20)]):
        array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(array).save(images / f"{i}.png")
    cli.main(
        [
            "pretrain", "--images", str(images), "--dataset-kind", "folder",
            "--out", str(tmp_path / "backbone.pth"), "--checkpoint", str(tmp_path / "ck.pth"),
            "--patch-size", "4", "--embed-dim", "8", "--depth", "1", "--num-heads", "2",
            "--global-size", "16", "--local-size", "8", "--num-local", "1", "--out-dim", "8",
            "--head-hidden", "8", "--head-bottleneck", "4", "--batch-size", "2", "--steps", "1",
        ]
    )  # fmt: skip
    payload = torch.load(tmp_path / "ck.pth", weights_only=True)
    assert payload["step"] == 1 and payload["settings"]["infonce_weight"] == 0.0
    assert vit.load_backbone(str(tmp_path / "backbone.pth"), num_heads=2).embed_dim == 8


def test_resize_shorter_side():
    image = np.zeros((30, 60, 3), np.uint8)
    assert views.resize_shorter_side(image, 16).shape == (16, 32, 3)
    assert views.resize_shorter_side(image.transpose(1, 0, 2), 10).shape == (20, 10, 3)
