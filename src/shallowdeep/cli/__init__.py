"""The ``shallowdeep`` command line. Each module in this package is one sub-command.

A command module defines ``NAME``, ``HELP``, ``ORDER``, ``add_arguments(parser)`` and
``run(args) -> int``; it parses, calls the library, prints and writes JSON. Every command's parser
is built on each call, so a command module imports nothing heavy at its top (option choices come
from :mod:`shallowdeep.choices`) and imports the library inside ``run``: torch, matplotlib and
captum load only for the command that runs, and only where it needs them. Errors the user can fix
are raised as :class:`shallowdeep.errors.UserError` and printed here as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from ..errors import UserError


def _command_modules() -> list[ModuleType]:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return sorted((m for m in modules if hasattr(m, "NAME") and hasattr(m, "run")), key=lambda m: m.ORDER)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="shallowdeep",
        description="Shallow-Deep Networks: internal classifiers, early exit and network overthinking for any CNN.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(
            module.NAME, help=module.HELP, description=module.__doc__, parents=[common],
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shallowdeep`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"shallowdeep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shallowdeep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
