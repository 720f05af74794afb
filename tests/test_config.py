"""The config schema rejects misspelled keys and wrong types, naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from maskdistill.config import load_config, validate_config


def demo_config(repo):
    return yaml.safe_load((repo / "config.yaml").read_text())


def test_default_config_is_valid_and_defaults_are_filled(repo):
    config = load_config(repo / "config.yaml")
    assert config["dataset"]["kind"] == "voc"
    assert config["dataset"]["annotations"] is None  # default filled in


def test_unknown_key_is_rejected_with_its_name(repo):
    config = demo_config(repo)
    config["dataset"]["learn_split"] = ["train"]  # misspelled learn_splits
    with pytest.raises(ValueError, match=r"dataset.*learn_split"):
        validate_config(config)


def test_wrong_type_is_rejected_with_its_name(repo):
    config = copy.deepcopy(demo_config(repo))
    config["demo_data"]["seed"] = "zero"
    with pytest.raises(ValueError, match=r"demo_data\.seed"):
        validate_config(config)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("run_name: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_config(path)
