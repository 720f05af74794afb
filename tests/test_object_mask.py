"""The pure stage-1 mask algorithm vs a transcription of the authors' code, and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from maskdistill.config import defaults
from maskdistill.discover import mask as discover_mask
from maskdistill.discover.feature import crop_to_box, mask_outside
from maskdistill.discover.mask import cls_affinity, mass_filter
from maskdistill.models.norm import IMAGENET
from maskdistill.models.vit import last_block_qk, load_backbone, preprocess

PAPER = {key: defaults("discover")[key] for key in ("topk", "mass")}  # 0.4 and 0.5


def object_mask(q, k, grid_shape, **settings):
    """``object_mask`` with the paper's top-k and mass unless given."""
    return discover_mask.object_mask(q, k, grid_shape, **(PAPER | settings))


def reference_mask(q, k, cols, heads, topk, mass, center_keys=False):
    """Straight transcription of ``mask_generator`` (MaskDistill gen_masks.py), full N x N graph.

    q, k: (L, 1 + N, d). Differences from the original: ``max(1, ...)`` for k (the original
    crashes at 0) and the optional key centring of the graph.
    """
    q, k = q[None], k[None]
    bs, n_heads, n_tokens, _ = q.shape
    attention = q @ k.transpose(-2, -1)
    g_cls = attention[0, :, 0, 1:].reshape(n_heads, -1)
    g_cls = torch.mean(g_cls[torch.arange(heads)], dim=0, keepdim=True)
    # threshold_attention(g_cls, mass) of utils/util.py
    val, idx = torch.sort(g_cls)
    val /= torch.sum(val, dim=1, keepdim=True)
    th_attn = torch.cumsum(val, dim=1) > (1 - mass)
    idx2 = torch.argsort(idx)
    th_attn[0] = th_attn[0][idx2[0]]
    g_cls *= th_attn.view(bs, -1)
    k_i = k[0, :, 1:]
    if center_keys:
        k_i = k_i - k_i.mean(dim=1, keepdim=True)
    g_i = (k_i @ k_i.transpose(-2, -1)).sum(dim=0)
    g_cls = g_cls[0].view(-1)
    topk_ids = torch.topk(
        g_cls.float(), k=max(1, int(topk * (n_tokens - 1))), dim=0, largest=True, sorted=True
    )[1]
    source = topk_ids[0]
    source_nodes = topk_ids[g_i[source, topk_ids] > 0.0]
    g_diff = torch.sum(g_i[source_nodes], dim=0)
    labels = scipy.ndimage.label((g_diff > 0).view(-1, cols).numpy())[0]
    if len(source_nodes) == 0:
        return None, int(source)  # the original returns the complement of nothing here
    return labels == labels[source // cols, source % cols], int(source)


def random_qk(rng: np.random.Generator, n_heads: int, n_tokens: int, dim: int, integer: bool):
    """Random q/k; small integers give exact arithmetic and many ties."""
    if integer:
        q = rng.integers(-2, 4, size=(n_heads, n_tokens, dim))
        k = rng.integers(-2, 4, size=(n_heads, n_tokens, dim))
    else:
        q = rng.normal(0.3, 1.0, size=(n_heads, n_tokens, dim))
        k = rng.normal(0.3, 1.0, size=(n_heads, n_tokens, dim))
    return torch.tensor(q, dtype=torch.float32), torch.tensor(k, dtype=torch.float32)


@pytest.mark.parametrize("integer", [True, False])
def test_matches_reference_on_random_qk(integer):
    rng = np.random.default_rng(0 if integer else 1)
    checked_ties = 0
    for case in range(100):
        rows, cols = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        n_heads = int(rng.integers(1, 7))
        heads = int(rng.integers(1, n_heads + 1))
        topk = float(rng.choice([0.1, 0.25, 0.4, 0.7, 1.0]))
        mass = float(rng.choice([0.3, 0.5, 0.9]))
        center = bool(case % 3 == 0)
        q, k = random_qk(rng, n_heads, 1 + rows * cols, int(rng.integers(2, 6)), integer)
        expected, expected_source = reference_mask(q, k, cols, heads, topk, mass, center)
        mask, source = object_mask(
            q, k, (rows, cols), heads=heads, topk=topk, mass=mass, center_keys=center
        )
        assert source == expected_source, case
        if expected is None:  # empty seed set: flagged by an all-False mask
            assert not mask.any()
            continue
        np.testing.assert_array_equal(mask, expected, err_msg=f"case {case}")
        affinity = cls_affinity(q, k, heads)
        checked_ties += int((affinity * mass_filter(affinity, mass) == 0).sum() > 1)
    assert checked_ties > 30  # the top-k really had to choose among equal (zeroed) values


def test_mass_filter_keeps_top_half_of_the_mass():
    affinity = torch.tensor([1.0, 4.0, 2.0, 3.0])  # sorted 1,2,3,4 -> cumsum .1,.3,.6,1.0
    np.testing.assert_array_equal(mass_filter(affinity, 0.5), [False, True, False, True])
    np.testing.assert_array_equal(mass_filter(affinity, 0.8), [False, True, True, True])


def blob_scene():
    """A 4 x 6 grid, one head, d = 3: blob A (e1 keys), blob B (e2 keys), background e3.

    CLS query 2 e1 + e2: affinity 2 on A, 1 on B, 0 elsewhere; patch (1, 1) has key 1.5 e1
    (affinity 3), so it is the source. Keys of different blobs are orthogonal (G = 0).
    """
    rows, cols = 4, 6
    keys = np.tile([0.0, 0.0, 1.0], (rows, cols, 1))
    keys[0:2, 0:2] = [1, 0, 0]
    keys[1, 1] = [1.5, 0, 0]
    keys[2:4, 3:5] = [0, 1, 0]
    return rows, cols, keys


def to_qk(query, keys):
    rows, cols, dim = keys.shape
    k = np.concatenate([np.zeros((1, dim)), keys.reshape(-1, dim)])[None]
    q = np.zeros_like(k)
    q[0, 0] = query
    return torch.tensor(q, dtype=torch.float32), torch.tensor(k, dtype=torch.float32)


def test_two_blobs_mask_is_blob_with_top_affinity():
    rows, cols, keys = blob_scene()
    q, k = to_qk([2.0, 1.0, 0.0], keys)
    mask, source = object_mask(q, k, (rows, cols), heads=1)
    expected = np.zeros((rows, cols), bool)
    expected[0:2, 0:2] = True
    assert source == 1 * cols + 1
    np.testing.assert_array_equal(mask, expected)


def test_negative_affinity_patch_is_excluded():
    rows, cols, keys = blob_scene()
    keys[0, 2] = [-1, 0, 0]  # touches blob A, but G < 0 with every seed
    q, k = to_qk([2.0, 1.0, 0.0], keys)
    mask, _ = object_mask(q, k, (rows, cols), heads=1)
    assert not mask[0, 2]
    assert mask[0:2, 0:2].all() and mask.sum() == 4


def test_detached_island_is_dropped_by_4_connectivity():
    rows, cols, keys = blob_scene()
    keys[2, 2] = [1, 0, 0]  # diagonal neighbour of blob A: in g > 0, not 4-connected
    keys[3, 5] = [1, 0, 0]  # far island
    q, k = to_qk([2.0, 1.0, 0.0], keys)
    mask, _ = object_mask(q, k, (rows, cols), heads=1, topk=1.0)
    expected = np.zeros((rows, cols), bool)
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(mask, expected)
    keys[2, 1] = [1, 0, 0]  # now (2, 2) connects through (2, 1)
    q, k = to_qk([2.0, 1.0, 0.0], keys)
    mask, _ = object_mask(q, k, (rows, cols), heads=1, topk=1.0)
    assert mask[2, 1] and mask[2, 2] and not mask[3, 5]


def test_grid_of_one_patch_and_k_zero():
    q = torch.ones(2, 2, 3)
    mask, source = object_mask(q, q.clone(), (1, 1), heads=2)
    assert source == 0
    np.testing.assert_array_equal(mask, [[True]])
    # 1 x 2 grid: int(0.4 * 2) = 0 proposals in the reference; here k = 1, the best patch
    k = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]])
    q = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask, source = object_mask(q, k, (1, 2), heads=1)
    assert source == 1
    np.testing.assert_array_equal(mask, [[True, True]])


def test_empty_seed_set_gives_empty_mask():
    k = torch.zeros(1, 1 + 6, 2)  # every key zero: G = 0, no seed
    q = torch.ones(1, 1 + 6, 2)
    mask, source = object_mask(q, k, (2, 3), heads=1)
    assert mask.shape == (2, 3) and not mask.any()
    assert 0 <= source < 6


def test_center_keys_separates_blobs_sharing_a_common_key_component():
    rows, cols, keys = blob_scene()
    keys = keys + np.array([0.0, 0.0, 5.0])  # common offset: every G entry > 0
    q, k = to_qk([2.0, 1.0, 0.0], keys)
    assert object_mask(q, k, (rows, cols), heads=1, topk=1.0)[0].all()
    mask, _ = object_mask(q, k, (rows, cols), heads=1, topk=1.0, center_keys=True)
    expected = np.zeros((rows, cols), bool)
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(mask, expected)


def test_register_tokens_are_skipped():
    rng = np.random.default_rng(3)
    q, k = random_qk(rng, 3, 1 + 20, 4, integer=True)
    registers = torch.full((3, 4, 4), 7.0)
    q_reg = torch.cat([q[:, :1], registers, q[:, 1:]], dim=1)
    k_reg = torch.cat([k[:, :1], registers, k[:, 1:]], dim=1)
    expected = object_mask(q, k, (4, 5), heads=2)
    got = object_mask(q_reg, k_reg, (4, 5), heads=2, num_prefix_tokens=5)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]


def test_bad_arguments_raise():
    q = torch.ones(3, 1 + 6, 2)
    with pytest.raises(ValueError, match="heads=5, but the backbone's last block has 3 heads"):
        object_mask(q, q, (2, 3), heads=5)
    with pytest.raises(ValueError, match="grid 2x4"):
        object_mask(q, q, (2, 4), heads=1)
    with pytest.raises(ValueError, match="topk"):
        object_mask(q, q, (2, 3), heads=1, topk=0.0)


def test_crop_to_box_pads_to_patch_multiples():
    image = torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(3, 20, 30)
    crop = crop_to_box(image, (4, 2, 10, 5), patch=8)
    assert crop.shape == (3, 8, 16)
    torch.testing.assert_close(crop[:, :5, :10], image[:, 2:7, 4:14])
    assert crop[:, 5:].abs().sum() == 0 and crop[:, :, 10:].abs().sum() == 0
    with pytest.raises(ValueError, match="empty box"):
        crop_to_box(image, (0, 0, 0, 0), patch=8)


def test_mask_outside_zeroes_outside_and_padding():
    image = torch.ones(3, 8, 8)
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    out = mask_outside(image, mask)
    assert out.shape == (3, 8, 8)
    assert out.sum() == 3 * 6
    assert (out[:, 1:3, 2:5] == 1).all()


def reference_last_qk(model, image):
    """q, k as the authors' code gets them: DINO's ``prepare_tokens`` and blocks written out with
    explicit softmax attention (MaskDistill models_vit.py + its timm fork), one image."""
    _, _, w, h = image.shape  # DINO's naming: w is the height
    patch = model.patch_embed.proj.kernel_size[0]
    x = model.patch_embed.proj(image).flatten(2).transpose(1, 2)
    x = torch.cat((model.cls_token, x), dim=1)
    n = model.pos_embed.shape[1] - 1
    if x.shape[1] - 1 == n and w == h:
        x = x + model.pos_embed
    else:
        dim = x.shape[-1]
        grid = model.pos_embed[:, 1:].reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim)
        grid = F.interpolate(
            grid.permute(0, 3, 1, 2),
            scale_factor=((w // patch + 0.1) / math.sqrt(n), (h // patch + 0.1) / math.sqrt(n)),
            mode="bicubic",
        )
        grid = grid.permute(0, 2, 3, 1).view(1, -1, dim)
        x = x + torch.cat((model.pos_embed[:, :1], grid), dim=1)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        batch, tokens, channels = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if i == len(model.blocks) - 1:
            return q, k
        weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
        x = x + attn.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, channels))
        x = x + block.mlp(block.norm2(x))
    raise AssertionError("unreachable")


def test_whole_stage_matches_reference_pipeline():
    """Image -> preprocess -> q/k -> mask equals the authors' forward and mask_generator."""
    model = load_backbone("random:patch=8,width=192,depth=3,seed=5,img=64")
    rng = np.random.default_rng(5)
    nontrivial = 0
    for height, width in [(64, 64), (45, 70), (90, 33)]:
        image = np.zeros((height, width, 3), np.uint8)
        image[:] = rng.integers(0, 256, size=3)
        image[height // 4 : height // 2, width // 3 : 2 * width // 3] = rng.integers(0, 256, 3)
        tensor, _ = preprocess(image, 64, 8, IMAGENET)
        rows, cols = tensor.shape[1] // 8, tensor.shape[2] // 8
        with torch.inference_mode():
            q, k = last_block_qk(model, tensor[None])
            q_ref, k_ref = reference_last_qk(model, tensor[None])
        for center in (False, True):
            expected, expected_source = reference_mask(
                q_ref[0], k_ref[0], cols, 2, 0.4, 0.5, center
            )
            mask, source = object_mask(q[0], k[0], (rows, cols), heads=2, center_keys=center)
            assert source == expected_source
            np.testing.assert_array_equal(mask, expected)
            nontrivial += int(0 < mask.sum() < mask.size)
    assert nontrivial >= 2  # random weights: the default masks cover everything, centred ones not
