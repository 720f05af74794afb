"""Thin command-line front ends: each module reads files, calls a pure core, writes files.

Every module here defines ``add_arguments(parser)`` and ``run(args)``; ``maskdistill.cli``
registers them as ``maskdistill <name>`` subcommands.
"""
