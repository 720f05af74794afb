"""The ``maskdistill`` command: one subcommand per stage.

Each subcommand lives in ``maskdistill.commands.<module>`` and defines ``add_arguments(parser)``
and ``run(args)``, or sets ``_run`` on its own subcommands: a function, or ``"module:function"``
for a job kept in a module of its own (imported only when that job runs, and left out of the
other jobs' code fingerprints, :mod:`maskdistill.workflow`). The command logs the package
version, the git SHA (when run from a checkout) and the sorted arguments before it starts, so
that every log says what produced it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from maskdistill.provenance import provenance

# subcommand name -> module in maskdistill.commands
COMMANDS: dict[str, str] = {
    "make-demo-data": "demo_data",
    "discover": "discover",
    "cluster": "cluster",
    "distill": "distill",
    "select": "select",
    "segment": "segment",
    "evaluate": "evaluate",
    "visualize": "visualize",
    "cache": "cache",
    "pretrain": "pretrain",
    "gpu-run": "gpu_run",
}

log = logging.getLogger("maskdistill")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` keeps the module docstring's line breaks and shows every default."""


def first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring (up to the first period that ends it or is followed by
    a space), its line breaks joined: a command's one-line help."""
    text = " ".join(doc.strip().split())
    for index, char in enumerate(text):
        if char == "." and (index + 1 == len(text) or text[index + 1] == " "):
            return text[:index]
    return text or None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand, or only with ``only``.

    Building one subcommand imports only its module: a job that runs ``maskdistill gpu-run``
    or ``maskdistill cluster`` does not pay for importing every stage's dependencies.
    """
    parser = argparse.ArgumentParser(
        prog="maskdistill", description="MaskDistill pipeline stages (see README.md)."
    )
    parser.add_argument("--version", action="version", version=provenance()["version"])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"maskdistill.commands.{module_name}")
        sub = subparsers.add_parser(
            name,
            help=first_sentence(module.__doc__ or ""),
            description=module.__doc__,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(sub)
        if hasattr(module, "run"):  # a command with subcommands sets _run on each of them
            sub.set_defaults(_run=module.run)
    return parser


def job(run: Callable[[argparse.Namespace], None] | str) -> Callable[[argparse.Namespace], None]:
    """The function a subcommand runs: ``run`` itself, or the one ``"module:function"`` names."""
    if callable(run):
        return run
    module, _, function = run.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``maskdistill`` console script and ``python -m maskdistill``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    info = provenance()
    log.info("maskdistill %s (git %s)", info["version"], info["git_sha"] or "unknown")
    settings = {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_")}
    log.info("arguments: %s", settings)
    try:
        job(args._run)(args)
    except (ValueError, OSError, FloatingPointError, MemoryError) as error:
        log.error("%s", error)
        sys.exit(1)
    log.info("done; peak memory %.0f MB", peak_memory_mb())


def peak_memory_mb() -> float:
    """The largest resident memory of this process or of one of its finished children (data
    loading workers), in MB: what a job's ``resources.mem_mb`` must hold."""
    import resource

    peaks = [
        resource.getrusage(who).ru_maxrss
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    ]
    return max(peaks) / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, else kB
