"""Workflow configuration: loading and validation against the JSON schema.

The Snakefile validates with Snakemake's ``validate`` (which uses the same schema); this module
lets the command line and the tests do the same without Snakemake.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(str(resources.files("maskdistill") / "schemas" / "config.schema.yaml"))


def load_schema() -> dict[str, Any]:
    """The config JSON schema, as a dict."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(validator_class):
    """A validator class that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` in place, filling defaults; raise ValueError naming the bad key."""
    schema = load_schema()
    validator = _fill_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"config key '{where}': {error.message}")
        raise ValueError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    return validate_config(config)
