"""Helpers the Snakemake rules use at parse time: code fingerprints of stage modules.

A stage rule passes ``code_fingerprint("maskdistill.commands.<stage>")`` as a ``params:`` value.
Snakemake reruns a job whose params changed, so editing the source of a stage (its command, its
core, or any project module these import, found statically) reruns that stage and everything
downstream of it, while edits to other stages' modules leave it alone.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

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


def _imported_names(name: str, path: Path) -> set[str]:
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
    return {m for m in with_parents if module_path(m) is not None}


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
