"""Hub weights offline: one line naming the setting, at once, with no retries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def test_an_unreachable_hub_fails_at_once_naming_the_setting(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    env = os.environ | {
        "HF_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing listens, as offline
        "HF_HOME": str(tmp_path / "hf"),  # an empty cache
    }
    env.pop("HF_HUB_OFFLINE", None)
    command = [sys.executable, "-m", "maskdistill", "discover", "--images", str(images),
               "--backbone", "vit_small_patch16_224.dino", "--feature-backbone", "same",
               "--device", "cpu", "--out", str(tmp_path / "s.h5")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "discover.backbone" in last and "'vit_small_patch16_224.dino'" in last, last
    assert str(tmp_path / "hf") in last and "local checkpoint file" in last
    assert "Retrying" not in result.stderr  # no retry storm
    assert not (tmp_path / "s.h5").exists()


def test_an_unknown_name_that_is_no_file_says_so(tmp_path: Path):
    from maskdistill.models import vit

    with pytest.raises(ValueError, match=r"^segment.init: 'vit_does_not_exist' is neither"):
        vit.load_backbone("vit_does_not_exist", setting="segment.init")
