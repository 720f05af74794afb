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


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("segment", "lr_epochs", []),
        ("segment", "lr_epochs", [3, 7]),
        ("segment", "scale_range", [0.5, 2.0]),
    ],
)
def test_list_settings_round_trip_through_the_command_line(section, name, value):
    """What a rule writes with cli_flags parses back to the config value, an empty list too."""
    import argparse
    import shlex

    from maskdistill.commands.settings_args import add_settings_arguments
    from maskdistill.workflow import cli_flags

    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, section, [name, "epochs"])
    args = parser.parse_args(shlex.split(cli_flags({name: value, "epochs": 9})))
    assert (getattr(args, name), args.epochs) == (value, 9)


def test_the_order_of_a_files_keys_changes_no_command_line():
    """Settings come out in the schema's order, whatever the file's: reordering a config's keys
    reruns nothing (the workflow builds its rules' flags from them in order)."""
    from maskdistill.workflow import cli_flags

    written = {"run_name": "a", "dataset": {"root": "r", "kind": "voc"}}
    written["discover"] = {"topk": 0.3, "heads": 2, "resize": 64}
    reordered = {
        "discover": {"resize": 64, "heads": 2, "topk": 0.3},
        "dataset": {"kind": "voc", "root": "r"},
        "run_name": "a",
    }
    first, second = validate_config(written), validate_config(reordered)
    assert list(first) == list(second)
    for section in ("discover", "dataset", "resources"):
        assert list(first[section]) == list(second[section])
        assert cli_flags(first[section]) == cli_flags(second[section])
    assert list(first["discover"]).index("resize") < list(first["discover"]).index("heads")
