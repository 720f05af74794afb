"""A config's sweep section expanded into runs (maskdistill/sweep.py)."""

from __future__ import annotations

import pytest
import yaml
from workflow_helpers import REPO, TINY_CONFIG

from maskdistill.sweep import runs_by_setting, sweep_runs, value_label


def _config(sweep: dict) -> dict:
    return yaml.safe_load(TINY_CONFIG.read_text()) | {"sweep": sweep}


@pytest.mark.parametrize(
    ("value", "label"),
    [(0.5, "0.5"), (20, "20"), (True, "true"), (None, "null"), ("pseudo_gt", "pseudo_gt"),
     ([0.75, 1.25], "0.75,1.25")],
)  # fmt: skip
def test_a_value_is_labelled_as_written(value, label):
    assert value_label(value) == label


def test_a_value_with_other_characters_gets_a_content_key():
    assert value_label(".5").startswith("value-")  # a leading dot: a hidden folder
    label = value_label("random:patch=8")
    assert label.startswith("value-") and len(label) == len("value-") + 12
    assert label == value_label("random:patch=8") != value_label("random:patch=16")


def test_each_value_is_a_run_varying_one_setting_from_the_config():
    config = _config({"select.tau": [0.5, 0.7], "cluster.k": [3]})
    runs = sweep_runs(config)
    assert list(runs) == ["tiny/select.tau=0.5", "tiny/select.tau=0.7", "tiny/cluster.k=3"]
    tau, _, k = runs.values()
    assert tau["run_name"] == "tiny/select.tau=0.5" and tau["sweep"] == {}
    assert (tau["select"]["tau"], tau["cluster"]["k"]) == (0.5, 2)  # k as in the config
    assert (k["select"]["tau"], k["cluster"]["k"]) == (0.9, 3)  # tau: the schema's default
    assert tau["distill"] == k["distill"] == config["distill"] | tau["distill"]
    assert config["sweep"] == {"select.tau": [0.5, 0.7], "cluster.k": [3]}  # not modified
    assert runs_by_setting(config) == {
        "select.tau": {"0.5": "tiny/select.tau=0.5", "0.7": "tiny/select.tau=0.7"},
        "cluster.k": {"3": "tiny/cluster.k=3"},
    }


def test_no_sweep_is_one_run():
    assert sweep_runs(_config({})) == {}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"dataset.root": ["a"]}, "only the settings of pretrain, discover"),
        ({"select.taux": [0.5]}, "select has no setting 'taux'"),
        ({"distill.device": ["cpu", "cuda"]}, "changes no result"),
        ({"select.tau": [0.5, 0.5]}, "listed twice"),
        ({"select.tau": [1.5]}, "config key 'select.tau': 1.5 is greater than the maximum"),
        ({"select.tau": []}, "config key 'sweep.select.tau'"),
        ({"tau": [0.5]}, "config key 'sweep'"),
    ],
)
def test_a_bad_sweep_is_refused_naming_its_key(sweep, message):
    with pytest.raises(ValueError, match=message):
        sweep_runs(_config(sweep))


def _merged(*paths) -> dict:
    """Config files merged as Snakemake merges several --configfile (later ones win)."""

    def update(base: dict, new: dict) -> dict:
        for key, value in new.items():
            is_section = isinstance(value, dict) and isinstance(base.get(key), dict)
            base[key] = update(base[key], value) if is_section else value
        return base

    config: dict = {}
    for path in paths:
        update(config, yaml.safe_load(path.read_text()))
    return config


SWEEP_PRESETS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("preset", SWEEP_PRESETS, ids=lambda p: p.stem)
def test_a_sweep_preset_expands_after_its_base_config(preset):
    base = REPO / ("config.yaml" if preset.stem.startswith("demo") else "configs/voc12.yaml")
    config = _merged(base, preset)
    runs = sweep_runs(config)
    assert len(runs) == sum(len(values) for values in config["sweep"].values()) >= 2
    assert all(name.startswith(f"{config['run_name']}/") for name in runs)
    # its own run folder, apart from the base run's and from the other sweeps'
    expected = "demo-sweep-tau" if preset.stem == "demo-tau" else f"sweep-{preset.stem}"
    assert config["run_name"] == expected


def test_table_1_is_three_trainings_of_stage_5():
    runs = sweep_runs(_merged(REPO / "configs/voc12.yaml", REPO / "configs/sweeps/table1.yaml"))
    labels = {name: (run["segment"]["labels"], run["select"]["tau"]) for name, run in runs.items()}
    assert labels == {
        "sweep-table1/segment.labels=pseudo_gt": ("pseudo_gt", 0.9),
        "sweep-table1/select.tau=0.0": ("selected", 0.0),
        "sweep-table1/select.tau=0.9": ("selected", 0.9),
    }
