"""The ``imsim-lab`` command line: one module per sub-command family.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``func`` (called with the parsed arguments, returns an exit code).
Errors about user input (:class:`~imsim_lab.errors.ImsimError`) and what the file system refuses
(``OSError``: a read-only or full output folder) are printed on one line naming the file and exit with
code 2; a closed standard output (``| head``) ends quietly with 141.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import ImsimError

#: sub-command modules, in the order of ``imsim-lab --help``
COMMAND_MODULES = ["eval_cmd", "run_cmd", "data_cmd", "bench_cmd", "explore_cmd", "demo_cmd", "robustness_cmd",
                   "train_cmd"]


#: commands whose parser is built alone when they come first on the command line, so that their
#: process imports nothing of the other commands (``imsim-lab eval`` is timed as a whole process)
LEAN_COMMANDS = {"eval": "eval_cmd"}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``imsim-lab`` parser; with ``only`` (a module of :data:`COMMAND_MODULES`), that module's
    commands alone."""
    parser = argparse.ArgumentParser(
        prog="imsim-lab",
        description="Teach, reproduce and compare image copy detection (ISC2021 / DISC21).",
    )
    parser.add_argument("--version", action="version", version=f"imsim-lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only else COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` with ``parser`` (default: the ``imsim-lab`` parser) and run the chosen command."""
    args_list = sys.argv[1:] if argv is None else argv
    parser = parser or build_parser(LEAN_COMMANDS.get(args_list[0]) if args_list else None)
    try:
        args = parser.parse_args(args_list)
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader of our output went away (``imsim-lab eval ... | head -2``): stop quietly
        _silence_stdout()
        return 141
    except ImsimError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; what was finished is kept", file=sys.stderr)
        return 130
    except OSError as e:
        # the file system refused a write or a read (read-only or full --out, permissions): name the
        # path and the reason; what was finished before is kept (every file is written atomically)
        where = e.filename if e.filename is not None else "a file"
        print(f"{parser.prog}: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
