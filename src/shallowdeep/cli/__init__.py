"""The ``shallowdeep`` command line. Each module in this package is one sub-command.

A command module defines ``NAME``, ``HELP``, ``ORDER``, ``add_arguments(parser)`` and
``run(args) -> int``; it parses, calls the library and prints. A library error about a setting
(:class:`shallowdeep.errors.SettingError`) is printed with the options that give it: the option whose
destination is the setting's name, or the one the module's optional ``SETTINGS`` maps it to. Every command's parser
is built on each call, so a command module imports nothing heavy at its top (option choices come
from :mod:`shallowdeep.choices`) and imports the library inside ``run``: torch, matplotlib and
captum load only for the command that runs, and only where it needs them. Errors the user can fix
are raised as :class:`shallowdeep.errors.UserError` and printed here as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings
from types import ModuleType
from typing import NoReturn

from ..choices import TRUST_CODE
from ..errors import SettingError, UserError


def _command_modules() -> list[ModuleType]:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    return sorted((m for m in modules if hasattr(m, "NAME") and hasattr(m, "run")), key=lambda m: m.ORDER)


class _Parser(argparse.ArgumentParser):
    """argparse's parser (and its sub-commands'), whose errors are one line: the usage is one --help away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = _Parser(
        prog="shallowdeep",
        description="Shallow-Deep Networks: internal classifiers, early exit and network overthinking for any CNN.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    common.add_argument("--trust-code", action="store_true",
                        help="import a run's backbone.py even if it changed since the run was made")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(
            module.NAME, help=module.HELP, description=module.__doc__, parents=[common],
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _options=_options(p, getattr(module, "SETTINGS", {})))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shallowdeep`` console command."""
    args = build_parser().parse_args(argv)
    if args.trust_code:
        os.environ[TRUST_CODE] = "1"
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"shallowdeep {args.command}: warning: {message}\n"
    try:
        return _dispatch(args)
    finally:
        warnings.formatwarning = previous


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; a user error, a file-system refusal or user code's ``sys.exit`` is one line (exit 2)."""
    try:
        return int(args._run(args) or 0)
    except SystemExit as exc:  # argparse is done: only user code (a backbone's forward) gets here
        if args.debug:
            raise
        print(f"shallowdeep {args.command}: error: the backbone's code called sys.exit({exc.code!r})", file=sys.stderr)
        return 2
    except (UserError, OSError) as exc:
        if args.debug:
            raise
        print(f"shallowdeep {args.command}: error: {_one_line(exc)}{_flags(exc, args._options)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shallowdeep {args.command}: interrupted", file=sys.stderr)
        return 130


def _options(parser: argparse.ArgumentParser, settings: dict[str, str]) -> dict[str, str]:
    """The option that gives each setting: by its destination, or as ``settings`` maps a library name to it."""
    found = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {**found, **settings}


def _flags(exc: Exception, options: dict[str, str]) -> str:
    """The options behind a :class:`SettingError`, as ' (--a, --b)'; '' for other errors."""
    flags = [options[s] for s in getattr(exc, "settings", ()) if s in options] if isinstance(exc, SettingError) else []
    return f" ({', '.join(dict.fromkeys(flags))})" if flags else ""


def _one_line(exc: Exception) -> str:
    """A user error's message, or what the file system refused and where (a full disk, a read-only folder)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror.lower()}: {exc.filename}" if exc.filename else exc.strerror.lower()
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
