"""Command-line flags for the settings of a config section, declared from the config schema.

Each setting ``a_b`` of the section becomes ``--a-b`` with the schema's type, choices, default
and description, so a command and the workflow (``maskdistill.workflow.cli_flags``) agree on
every setting without restating it. A training command also has its resume options
(:func:`add_training_arguments`; what they do: :mod:`maskdistill.commands.training_job`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from maskdistill.config import defaults, load_schema

_TYPES = {"integer": int, "number": float, "string": str}


def _section_properties(section: str) -> dict[str, dict[str, Any]]:
    return load_schema()["properties"][section]["properties"]


def add_settings_arguments(
    parser: argparse.ArgumentParser, section: str, names: Iterable[str], title: str | None = None
) -> None:
    """One flag per setting ``names`` of config section ``section``."""
    properties = _section_properties(section)
    group = parser.add_argument_group(title or f"settings (config section {section!r})")
    for name in names:
        spec = properties[name]
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": spec.get("default"), "help": spec.get("description")}
        kind = spec.get("type")
        if kind == "boolean":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "array":
            # an array that may be empty takes no values: ``--lr-epochs`` alone is []
            nargs = "+" if spec.get("minItems", 0) >= 1 else "*"
            kwargs.update(nargs=nargs, type=_TYPES[spec["items"]["type"]])
        else:
            kwargs["type"] = _TYPES[kind]
            if "enum" in spec:
                kwargs["choices"] = spec["enum"]
        group.add_argument(flag, **kwargs)


def settings_from_args(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the settings ``names``."""
    return {name: getattr(args, name) for name in names}


def named_values(entries: list[str], flag: str, meta: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments of ``flag`` as a dict, in order; ``meta`` (e.g. ``NAME=PATH``)
    names the expected form in the error a malformed entry raises (ValueError)."""
    values = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {entry!r}: expected {meta}")
        values[name] = value
    return values


def add_training_arguments(parser: argparse.ArgumentParser, section: str, unit: str) -> None:
    """``--out --metrics --resume-dir --checkpoint-every --no-resume --keep-checkpoints``."""
    parser.add_argument("--out", required=True, help="the trained network (.pth)")
    parser.add_argument("--metrics", required=True, help=f"per-{unit} metrics (JSON lines)")
    parser.add_argument("--resume-dir", required=True, help="folder of the rolling checkpoint")
    parser.add_argument(
        "--checkpoint-every", type=int, default=defaults(section)["checkpoint_every"], help=unit
    )
    parser.add_argument("--no-resume", action="store_true", help=f"start from {unit} 0")
    parser.add_argument(
        "--keep-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the resume folder's checkpoints after a finished training",
    )
