"""ResNet weight loading: every checkpoint format, strict errors, offline hub names."""

from __future__ import annotations

import socket
import time

import pytest
import torch
from safetensors.torch import save_file
from torchvision.ops import FrozenBatchNorm2d

from maskdistill.models.norm import IMAGENET
from maskdistill.models.resnet import (
    build_resnet,
    checkpoint_kind,
    load_resnet_weights,
    resnet_weights,
)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """A random ResNet-18's state dict with distinct values (classifier included)."""
    torch.manual_seed(0)
    model = build_resnet("resnet18")
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.dtype.is_floating_point:
                buffer.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _formats(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """The same backbone in each supported file layout."""
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    moco_head = {"fc.0.weight": torch.zeros(8, 512), "fc.2.weight": torch.zeros(4, 8)}
    return {
        "torchvision": state,
        "wrapped_ddp": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "moco": {
            "arch": "resnet18",
            "state_dict": {
                **{f"module.encoder_q.{k}": v for k, v in {**backbone, **moco_head}.items()},
                **{f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in backbone.items()},
                "module.queue": torch.zeros(8, 16),
            },
        },
        "moco_v3": {
            "state_dict": {
                **{f"module.base_encoder.{k}": v for k, v in {**backbone, **moco_head}.items()},
                **{f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in state.items()},
                "module.predictor.0.weight": torch.zeros(8, 4),
            },
        },
        "dino": {
            "teacher": {
                **{f"backbone.{k}": v for k, v in backbone.items()},
                "head.mlp.0.weight": torch.zeros(8, 512),
            },
            "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in backbone.items()},
        },
    }


@pytest.mark.parametrize("layout", ["torchvision", "wrapped_ddp", "moco", "moco_v3", "dino"])
def test_every_checkpoint_layout_loads_the_same_backbone(tmp_path, reference, layout):
    path = tmp_path / f"{layout}.pth"
    torch.save(_formats(reference)[layout], path)
    weights = resnet_weights(str(path), "resnet18", "distill.init")
    assert weights.normalization == IMAGENET
    assert checkpoint_kind(torch.load(path, weights_only=True)) in weights.source
    kind = {"wrapped_ddp": "torchvision", "moco_v3": "moco"}.get(layout, layout)
    assert checkpoint_kind(torch.load(path, weights_only=True)) == kind
    model = build_resnet("resnet18", norm_layer=FrozenBatchNorm2d)
    load_resnet_weights(model, weights)
    loaded = model.state_dict()
    for key, value in reference.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(loaded[key], value), key


def test_safetensors_file_loads(tmp_path, reference):
    save_file(reference, tmp_path / "weights.safetensors")
    model = build_resnet("resnet18")
    load_resnet_weights(
        model, resnet_weights(str(tmp_path / "weights.safetensors"), "resnet18", "x")
    )
    assert torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])


def test_a_wrong_file_names_the_file_and_the_missing_keys(tmp_path, reference):
    partial = {k: v for k, v in reference.items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pth")
    model = build_resnet("resnet18")
    with pytest.raises(ValueError, match=r"partial\.pth.*missing keys: layer4\.0\.bn1"):
        load_resnet_weights(model, resnet_weights(str(tmp_path / "partial.pth"), "resnet18", "x"))
    torch.save(reference, tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18\.pth.*shape mismatches: layer1\.0\.conv1\.weight"):
        bigger = build_resnet("resnet50")
        load_resnet_weights(bigger, resnet_weights(str(tmp_path / "r18.pth"), "resnet50", "x"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: not a readable checkpoint"):
        resnet_weights(str(tmp_path / "garbage.pth"), "resnet18", "x")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resnet_weights(str(tmp_path / "missing.pth"), "resnet18", "x")


def test_hub_weights_offline_fail_fast_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def no_network(*args, **kwargs):
        raise OSError("network is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"segment\.init: cannot download .*IMAGENET1K_V1.*local"):
        resnet_weights("torchvision:IMAGENET1K_V1", "resnet18", "segment.init")
    assert time.monotonic() - started < 15
    with pytest.raises(ValueError, match="no torchvision weights 'IMAGENET9K'; known"):
        resnet_weights("torchvision:IMAGENET9K", "resnet18", "segment.init")


def test_none_is_random_init_and_basic_blocks_cannot_dilate():
    assert resnet_weights("none", "resnet50", "x").state_dict is None
    with pytest.raises(ValueError, match="cannot dilate"):
        build_resnet("resnet18", replace_stride_with_dilation=(False, True, True))
    with pytest.raises(ValueError, match="not one of"):
        build_resnet("resnet7")
