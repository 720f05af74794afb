"""Sweeps: one config's ``sweep:`` section expanded into the runs it names.

``sweep: {select.tau: [0.5, 0.7, 0.9], cluster.k: [4, 8]}`` names one run per value of each
setting, that setting varied alone from the rest of the config (one setting at a time, as the
paper's ablation figures vary K, top-k and tau; not a grid): five runs here, named
``<run_name>/<setting>=<value>``. The Snakefile includes the workflow once per run; runs that
agree on a stage's settings share its content-addressed cache folder, so a stage is computed
once per distinct input.

Torch-free: the workflow imports it every time it parses the rules.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from maskdistill.config import load_schema, section_settings, validate_config
from maskdistill.workflow import content_key

# the config sections whose settings may be swept (those that decide a stage's result)
SWEEPABLE_SECTIONS = ("pretrain", "discover", "cluster", "distill", "select", "segment", "probe")
# settings that change no result: sweeping one would compute the same thing again
EXECUTION_SETTINGS = ("device", "checkpoint_every", "num_shards")
SWEEP_FOLDER = "sweep"  # <results_dir>/<run_name>/sweep/: the sweep's report
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_,+-][A-Za-z0-9_.,+-]*")  # no leading dot


def value_label(value: Any) -> str:
    """A setting's value as it appears in a run name: ``0.5``, ``true``, ``0.5,2.0`` (a list);
    a value with other characters becomes ``value-<content key>``."""
    if isinstance(value, (list, tuple)):
        text = ",".join(value_label(item) for item in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text if _PLAIN_LABEL.fullmatch(text) else "value-" + content_key(value)


def sweep_run_name(run_name: str, setting: str, value: Any) -> str:
    """The sweep run that sets ``setting`` to ``value``: ``<run_name>/<setting>=<value>``."""
    return f"{run_name}/{setting}={value_label(value)}"


def _check_setting(setting: str, schema: dict[str, Any]) -> tuple[str, str]:
    """(section, key) of a swept setting, or ValueError naming what is wrong with it."""
    section, _, key = setting.partition(".")
    where = f"config key 'sweep.{setting}'"
    if section not in SWEEPABLE_SECTIONS:
        raise ValueError(
            f"{where}: only the settings of {', '.join(SWEEPABLE_SECTIONS)} can be swept"
        )
    if key not in section_settings(section, schema):
        raise ValueError(f"{where}: {section} has no setting {key!r}")
    if key in EXECUTION_SETTINGS:
        raise ValueError(
            f"{where}: {key} changes no result, so a sweep over it computes nothing new"
        )
    return section, key


def sweep_runs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs of ``config``'s sweep: ``{run name: validated run config}`` in the order of the
    settings and values; ``{}`` when the config has no sweep (it is then one run).

    Each run config is ``config`` (validated, defaults filled) with one setting set to one of
    its values, ``run_name`` set to ``<run_name>/<setting>=<value>`` and no sweep.
    """
    base = validate_config(copy.deepcopy(config))
    schema = load_schema()
    runs: dict[str, dict[str, Any]] = {}
    for setting, values in base["sweep"].items():
        section, key = _check_setting(setting, schema)
        for value in values:
            name = sweep_run_name(base["run_name"], setting, value)
            if name in runs:
                raise ValueError(
                    f"config key 'sweep.{setting}': the value {value!r} is listed twice"
                )
            run = copy.deepcopy(base) | {"run_name": name, "sweep": {}}
            run[section][key] = copy.deepcopy(value)
            runs[name] = validate_config(run)
    return runs


def runs_by_setting(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{setting: {value label: run name}}`` of ``config``'s sweep (the report's groups)."""
    return {
        setting: {value_label(v): sweep_run_name(config["run_name"], setting, v) for v in values}
        for setting, values in config["sweep"].items()
    }
