"""Helpers the Snakemake rules use at parse time: code fingerprints, content keys, CLI flags.

A stage rule passes ``code_fingerprint("maskdistill.commands.<stage>")`` as a ``params:`` value.
Snakemake reruns a job whose params changed, so editing the source of a stage (its command, its
core, or any project module these import, found statically) reruns that stage and everything
downstream of it, while edits to other stages' modules leave it alone.

Torch-free and cheap: the workflow imports it every time it parses the rules.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PACKAGE = "maskdistill"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_path(name: str) -> Path | None:
    """The source file of project module ``name`` (``maskdistill.x.y``), or None if none exists."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(name: str, path: Path) -> str:
    """The package that relative imports in module ``name`` (at ``path``) are relative to."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@functools.cache  # every stage's closure reads the same modules: each is parsed once
def _imported_names(name: str, path: Path) -> frozenset[str]:
    """Project module names that module ``name`` imports (any scope), including their parents."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(name, path).split(".")
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # submodules
    with_parents = set()
    for module in found:
        parts = module.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(m for m in with_parents if module_path(m) is not None)


def module_closure(name: str) -> list[Path]:
    """Source files of project module ``name`` and of every project module it imports, sorted.

    Static: follows ``import`` statements in the source (also inside functions), not runtime
    behaviour. Parent packages' ``__init__.py`` files are included (importing runs them).
    """
    if module_path(name) is None:
        raise ValueError(f"{name}: no such module in the {PACKAGE} package ({PACKAGE_DIR})")
    todo = [name]
    seen: dict[str, Path] = {}
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        path = module_path(current)
        seen[current] = path
        todo.extend(_imported_names(current, path) - seen.keys())
        parts = current.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(set(seen.values()))


def code_fingerprint(*modules: str) -> str:
    """A 12-hex-digit SHA-256 of the sources in the closures of ``modules`` (paths and bytes)."""
    digest = hashlib.sha256()
    files = sorted({path for module in modules for path in module_closure(module)})
    for path in files:
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def content_key(*parts: object) -> str:
    """A short, stable hash of JSON-able values: the name of a content-addressed output folder.

    Two runs (or experiments with other run names) whose parts are equal share the folder, so
    an expensive stage is computed once and reused.
    """
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cli_flags(settings: Mapping[str, Any]) -> str:
    """A settings mapping as command-line flags, shell-quoted: key ``a_b`` -> ``--a-b``.

    ``True`` / ``False`` -> ``--a-b`` / ``--no-a-b`` (the CLI declares
    ``argparse.BooleanOptionalAction``); None -> nothing (the CLI's default applies); a list ->
    ``--a-b v1 v2``; anything else -> ``--a-b value``.
    """
    args: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return shlex.join(args)


def split_folder(splits: list[str]) -> str:
    """The folder name of a list of dataset splits: their names joined by ``+``, or, when a name
    is not a plain file name, a content key of the list (``splits-<key>``)."""
    if all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) for name in splits):
        return "+".join(splits)
    return "splits-" + content_key(splits)


def without(settings: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """``settings`` without ``keys`` (e.g. execution settings that never change a result)."""
    return {k: v for k, v in settings.items() if k not in keys}


_WARNED: set[str] = set()


def console_warning(message: str) -> None:
    """One line on Snakemake's console (stderr): a warning that changes results. Each message
    is printed once per invocation, however many runs of a sweep would give it."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"maskdistill warning: {message}", file=sys.stderr)
