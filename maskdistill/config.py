"""Workflow configuration: loading, validation against the JSON schema, and its defaults.

The schema (``maskdistill/schemas/config.schema.yaml``) is the one home of every setting's
default: the Snakefile validates with Snakemake's ``validate`` (which fills them in), and the
command-line flags and settings classes take theirs from :func:`defaults`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import jsonschema
import yaml

SCHEMA_PATH = Path(str(resources.files("maskdistill") / "schemas" / "config.schema.yaml"))


@functools.cache
def _schema_text() -> str:
    return SCHEMA_PATH.read_text()


def load_schema() -> dict[str, Any]:
    """The config JSON schema, as a (fresh) dict."""
    return yaml.safe_load(_schema_text())


def defaults(section: str) -> dict[str, Any]:
    """The schema's default of every setting of a config section, e.g. ``defaults("discover")``.

    Settings without a default (required ones) are left out.
    """
    return {
        name: spec["default"]
        for name, spec in section_settings(section).items()
        if "default" in spec
    }


def section_settings(section: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema of every setting of a config section (``{name: its schema}``, in order)."""
    schema = load_schema() if schema is None else schema
    return _resolved(schema["properties"][section], schema).get("properties", {})


def _resolved(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """A schema node, or the definition its ``$ref`` points at."""
    return schema["$defs"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


def _fill_defaults(validator_class):
    """A validator class that also writes each property's ``default`` into the instance.

    A missing property gets a copy of its default; a mapping given in part gets the missing
    keys of a mapping default (so ``resources.discover: {threads: 2}`` keeps the other
    defaults of that job).
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" not in subschema:
                    continue
                default = copy.deepcopy(subschema["default"])
                value = instance.setdefault(name, default)
                if isinstance(value, dict) and isinstance(default, dict):
                    for key, item in default.items():
                        value.setdefault(key, item)
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
    _in_schema_order(config, schema, schema)
    return config


def _in_schema_order(instance: Any, node: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Reorder, in place, the settings of every mapping in ``instance`` as the schema lists
    them (others keep their order, after them): the order of a config file's keys then changes
    no command line built from it, so reordering them reruns nothing."""
    properties = _resolved(node, schema).get("properties", {})
    if not isinstance(instance, dict) or not properties:
        return
    others = [key for key in instance if key not in properties]
    for key in [*(k for k in properties if k in instance), *others]:
        instance[key] = instance.pop(key)
        if key in properties:
            _in_schema_order(instance[key], properties[key], schema)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config must be a mapping of keys to values")
    return validate_config(config)


S = TypeVar("S", bound="Settings")


class Settings:
    """Base of the frozen dataclasses that hold a config section's settings (or some of them)."""

    config_prefix: ClassVar[str] = ""  # the settings' names in the section: prefix + field name

    @classmethod
    def from_config(cls: type[S], values: Mapping[str, Any]) -> S:
        """The settings among ``values`` (a config section, a command's parsed arguments or a
        model file's settings); lists become tuples, as the fields are annotated."""
        names = (f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        found = {name: values[cls.config_prefix + name] for name in names}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in found.items()})
