"""Backbone loading, preprocessing, DINO positional embeddings and q/k capture."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.models import VisionTransformer

from maskdistill.models import vit
from maskdistill.models.norm import IMAGENET

torch.set_num_threads(2)

TINY = "random:patch=8,width=192,depth=2,seed=1,img=32"


@pytest.fixture(scope="module")
def tiny() -> VisionTransformer:
    return vit.load_backbone(TINY)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


# --- preprocessing -------------------------------------------------------------------------


def test_preprocess_shorter_side_resize_and_padding():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    tensor, resized = vit.preprocess(image, 640, 16, IMAGENET)
    assert resized == (640, 853)  # int(500 * 640 / 375) = int(853.33)
    assert tensor.shape == (3, 640, 864)
    assert tensor[:, :, 853:].abs().sum() == 0
    expected = np.asarray(Image.fromarray(image).resize((853, 640), Image.BILINEAR)) / 255.0
    expected = (expected - IMAGENET.mean) / IMAGENET.std
    np.testing.assert_allclose(tensor[:, :, :853].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    portrait, resized = vit.preprocess(image.transpose(1, 0, 2).copy(), 640, 16, IMAGENET)
    assert resized == (853, 640) and portrait.shape == (3, 864, 640)


def test_preprocess_without_resize_and_smaller_than_a_patch():
    image = np.full((3, 5, 3), 255, dtype=np.uint8)
    tensor, resized = vit.preprocess(image, None, 8, IMAGENET)
    assert resized == (3, 5) and tensor.shape == (3, 8, 8)
    expected = (1 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    torch.testing.assert_close(tensor[:, 1, 4], expected)
    assert tensor[:, 3:].abs().sum() == 0 and tensor[:, :, 5:].abs().sum() == 0
    torch.testing.assert_close(vit.preprocess_full(image, 8, IMAGENET), tensor)
    with pytest.raises(ValueError, match="expected an"):
        vit.preprocess(image[..., 0], None, 8, IMAGENET)


# --- positional embeddings -----------------------------------------------------------------


def dino_interpolate_pos_encoding(pos_embed, height, width, patch):
    """DINO's ``interpolate_pos_encoding`` (facebookresearch/dino), with its own w/h naming:
    its ``w`` is the image HEIGHT (``B, nc, w, h = x.shape``)."""
    n = pos_embed.shape[1] - 1
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = height // patch + 0.1, width // patch + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
        mode="bicubic",
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_pos_embed_identity_at_native_grid(tiny):
    assert vit.interpolate_pos_embed(tiny, (4, 4)) is tiny.pos_embed


@pytest.mark.parametrize("grid", [(3, 7), (9, 5), (4, 6)])
def test_pos_embed_matches_dino_on_non_square_grids(tiny, grid):
    got = vit.interpolate_pos_embed(tiny, grid)
    assert got.shape == (1, 1 + grid[0] * grid[1], 192)
    expected = dino_interpolate_pos_encoding(tiny.pos_embed, grid[0] * 8, grid[1] * 8, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # rows follow the image height: the first row of the grid starts after the CLS entry
    torch.testing.assert_close(got[0, 1 : 1 + grid[1]], expected[0, 1 : 1 + grid[1]])


def test_pos_embed_with_registers_excludes_prefix():
    model = vit.load_backbone("random:patch=8,width=192,depth=2,img=32,reg=4")
    got = vit.interpolate_pos_embed(model, (2, 3))
    assert got.shape == (1, 6, 192)
    with_cls = torch.cat([torch.zeros(1, 1, 192), model.pos_embed], dim=1)
    torch.testing.assert_close(got, dino_interpolate_pos_encoding(with_cls, 16, 24, 8)[:, 1:])


# --- q/k capture and CLS features ----------------------------------------------------------


def manual_qk(model, images):
    """q, k of the last block recomputed from its weights (explicit LayerNorm and matmul)."""
    x = vit.embed(model, images)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    y = F.layer_norm(x, (x.shape[-1],), last.norm1.weight, last.norm1.bias, last.norm1.eps)
    qkv = y @ last.attn.qkv.weight.T + last.attn.qkv.bias
    heads = last.attn.num_heads
    qkv = qkv.reshape(x.shape[0], x.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1]


def test_last_block_qk_matches_manual_on_non_native_grid(tiny):
    images = torch.randn(2, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    q, k = vit.last_block_qk(tiny, images)
    assert q.shape == k.shape == (2, 3, 1 + 5 * 3, 64)
    q_ref, k_ref = manual_qk(tiny, images)
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)


def test_last_block_qk_matches_hook_in_full_timm_forward(tiny):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    captured = []
    hook = tiny.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        features = tiny.forward_features(images)
    finally:
        hook.remove()
    qkv = captured[0].reshape(2, 17, 3, 3, 64).permute(2, 0, 3, 1, 4)
    q, k = vit.last_block_qk(tiny, images)
    torch.testing.assert_close(q, qkv[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, qkv[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vit.cls_features(tiny, images), features[:, 0])


def test_registers_in_token_layout():
    model = vit.load_backbone("random:patch=8,width=192,depth=2,img=32,reg=4,heads=6")
    images = torch.randn(1, 3, 16, 24)
    q, k = vit.last_block_qk(model, images)
    assert vit.num_prefix_tokens(model) == 5
    assert q.shape == (1, 6, 5 + 6, 32)
    torch.testing.assert_close(k, manual_qk(model, images)[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        vit.cls_features(model, torch.zeros(1, 3, 32, 32)),
        model.forward_features(torch.zeros(1, 3, 32, 32))[:, 0],
    )


def test_cls_features_batch_equals_single_images(tiny):
    images = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    batch = vit.cls_features(tiny, images)
    assert batch.shape == (2, 192)
    torch.testing.assert_close(batch[1:], vit.cls_features(tiny, images[1:]))


def test_embed_rejects_unpadded_images(tiny):
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        vit.embed(tiny, torch.zeros(1, 3, 20, 16))


# --- loading -------------------------------------------------------------------------------


def test_random_spec_is_deterministic_and_frozen():
    a, b = vit.load_backbone(TINY), vit.load_backbone(TINY)
    assert same_weights(a, b)
    assert not same_weights(a, vit.load_backbone(TINY.replace("seed=1", "seed=2")))
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert (vit.patch_size(a), a.embed_dim, len(a.blocks), a.blocks[0].attn.num_heads) == (
        8,
        192,
        2,
        3,
    )
    with pytest.raises(ValueError, match="bad random backbone spec"):
        vit.load_backbone("random:patch=8,colour=3")
    with pytest.raises(ValueError, match="cannot build a ViT"):
        vit.load_backbone("random:width=192,heads=5")


def test_timm_names():
    model = vit.load_backbone("vit_tiny_patch16_224.augreg_in21k", pretrained=False)
    assert (model.embed_dim, len(model.blocks), vit.patch_size(model)) == (192, 12, 16)
    assert model.num_classes == 0 and not model.training
    with pytest.raises(ValueError, match="not_a_model"):
        vit.load_backbone("not_a_model", pretrained=False)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        vit.load_backbone("missing.pth")


def test_official_dino_release_file(tiny, tmp_path):
    path = tmp_path / "dino_release.pth"
    torch.save(tiny.state_dict(), path)
    loaded = vit.load_backbone(str(path))
    assert same_weights(loaded, tiny)
    images = torch.randn(1, 3, 24, 16)
    torch.testing.assert_close(vit.cls_features(loaded, images), vit.cls_features(tiny, images))


def test_dino_training_checkpoint_prefers_teacher(tiny, tmp_path):
    teacher = {f"backbone.{k}": v for k, v in tiny.state_dict().items()}
    teacher["head.last_layer.weight_g"] = torch.ones(10, 1)
    student = {f"module.backbone.{k}": v + 1 for k, v in tiny.state_dict().items()}
    student["module.head.mlp.0.weight"] = torch.ones(4, 192)
    checkpoint = {
        "student": student,
        "teacher": teacher,
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_tiny", lr=0.0005),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    assert same_weights(vit.load_backbone(str(path)), tiny)
    del checkpoint["teacher"]
    torch.save(checkpoint, path)
    loaded = vit.load_backbone(str(path))
    assert torch.equal(loaded.cls_token, tiny.cls_token + 1)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_timm_saved_state_dict_with_head(tiny, tmp_path, wrapper):
    state = dict(
        tiny.state_dict(), **{"head.weight": torch.ones(5, 192), "head.bias": torch.ones(5)}
    )
    path = tmp_path / "timm.pth"
    torch.save({wrapper: state, "epoch": 1}, path)
    assert same_weights(vit.load_backbone(str(path)), tiny)


def test_safetensors_with_registers_and_layer_scale(tmp_path):
    model = VisionTransformer(
        img_size=28, patch_size=14, embed_dim=192, depth=3, num_heads=3, reg_tokens=4,
        no_embed_class=True, init_values=1e-5, num_classes=0,
    )  # fmt: skip
    path = tmp_path / "dinov2.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = vit.load_backbone(str(path), num_heads=6)
    assert same_weights(loaded, model)
    assert (vit.num_prefix_tokens(loaded), loaded.blocks[0].attn.num_heads) == (5, 6)
    assert loaded.patch_embed.grid_size == (2, 2) and loaded.no_embed_class


def test_checkpoint_filter_fn_is_pure(tiny):
    checkpoint = {"teacher": {f"backbone.{k}": v for k, v in tiny.state_dict().items()}}
    keys = set(checkpoint["teacher"])
    filtered = vit.checkpoint_filter_fn(checkpoint)
    assert set(filtered) == set(tiny.state_dict())
    assert set(checkpoint["teacher"]) == keys


def test_bad_checkpoints(tiny, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="garbage.pth: not a readable checkpoint"):
        vit.load_backbone(str(garbage))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": Image.new("RGB", (1, 1))}, unsafe)
    with pytest.raises(ValueError, match="unsafe.pth: not a readable checkpoint"):
        vit.load_backbone(str(unsafe))
    not_vit = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(2, 3, 7, 7)}, not_vit)
    with pytest.raises(ValueError, match="resnet.pth: not a ViT checkpoint"):
        vit.load_backbone(str(not_vit))
    state = tiny.state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    state["blocks.1.extra.weight"] = torch.ones(1)
    state["blocks.0.attn.proj.weight"] = torch.ones(192, 100)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(ValueError) as error:
        vit.load_backbone(str(broken))
    message = str(error.value)
    assert "weights do not fit" in message
    assert "broken.pth" in message and "blocks.1.mlp.fc2.weight" in message
    assert "blocks.1.extra.weight" in message and "blocks.0.attn.proj.weight" in message
    odd_width = tmp_path / "odd.pth"
    torch.save(vit.load_backbone("random:patch=8,width=48,depth=1,heads=4").state_dict(), odd_width)
    with pytest.raises(ValueError, match="no default number of heads for width 48"):
        vit.load_backbone(str(odd_width))
    assert vit.load_backbone(str(odd_width), num_heads=4).blocks[0].attn.num_heads == 4


def test_the_weight_source_of_each_kind_of_spec(tmp_path):
    from maskdistill.models.specs import weight_source

    (tmp_path / "w.pth").touch()
    assert weight_source(str(tmp_path / "w.pth")) == "file"
    assert weight_source("vit_small_patch16_224.dino") == "hub"
    assert weight_source("vit_small_patch16_224.dino", pretrained=False) == "random"
    assert weight_source("random:patch=8,width=32") == "random"
