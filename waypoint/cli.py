"""The `waypoint` command line: one sub-command per role or tool.

Each sub-command lives in the module that owns it; this file only lists them. A module
listed here provides ``add_parser(subparsers)``, which registers its parser and sets
``func`` (a callable taking the parsed arguments and returning an exit code) as a default.
Modules are imported only when their command runs, so ``waypoint ca`` never loads the
L7 stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command word -> module providing add_parser(); the words are public interface, keep them.
COMMANDS: dict[str, str] = {
    "ca": "waypoint.identity.cli",
    "ztunnel": "waypoint.roles.ztunnel_cli",
    "waypoint": "waypoint.roles.waypoint_cli",
    "dev": "waypoint.roles.dev_cli",
    "controller": "waypoint.controller.cli",
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waypoint", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for word, module_name in COMMANDS.items():
        if command is not None and word != command:
            subparsers.add_parser(word, help=f"see `waypoint {word} --help`")
            continue
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_word(args_list))
    args = parser.parse_args(args_list)
    from waypoint.logs import configure_logging

    configure_logging(args.log_level)
    result: int = args.func(args)
    return result
