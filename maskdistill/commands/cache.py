"""The content-addressed cache: a run's view of it, and the entries no run uses.

Subcommands:
  ``view``: link ``--run-dir/<stage>`` to each stage's cache folder (``--stage name=folder``,
  relative symbolic links) and write the run's manifest ``--run-dir/stages.json``; the workflow
  runs it at the end of every run.
  ``clean``: list the cache folders (``<results>/cache/<stage>/<key>``) that no run's manifest
  names, with their sizes; ``--remove`` deletes them. Run it when no workflow is running: a
  run that has not finished has no manifest yet.
"""

from __future__ import annotations

import argparse
import logging

from maskdistill.commands.settings_args import named_values
from maskdistill.run_view import remove_entries, unused_entries, write_run_view

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    view = sub.add_parser("view", help="link a run folder to its stages' cache folders")
    view.add_argument("--run-dir", required=True, help="the run folder (results/<run_name>)")
    view.add_argument(
        "--stage", nargs="+", required=True, metavar="NAME=FOLDER", help="stage cache folders"
    )
    view.set_defaults(_run=run_view)
    clean = sub.add_parser("clean", help="list (and remove) cache folders no run uses")
    clean.add_argument("--results", default="results", help="the results folder")
    clean.add_argument("--remove", action="store_true", help="delete them (default: list)")
    clean.set_defaults(_run=run_clean)


def run_view(args: argparse.Namespace) -> None:
    kept = write_run_view(args.run_dir, named_values(args.stage, "--stage", "NAME=FOLDER"))
    log.info("linked %s to %d stage folders", args.run_dir, len(args.stage) - len(kept))


def run_clean(args: argparse.Namespace) -> None:
    entries = unused_entries(args.results)
    for entry in entries:
        print(f"{entry.size / 2**20:10.1f} MiB  {entry.path}")
    total = sum(entry.size for entry in entries) / 2**20
    if args.remove:
        remove_entries(entries)
        log.info("removed %d unused cache folders (%.1f MiB)", len(entries), total)
    else:
        log.info("%d cache folders no run uses (%.1f MiB); --remove deletes them", len(entries),
                 total)  # fmt: skip
