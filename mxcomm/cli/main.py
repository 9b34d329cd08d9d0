"""``mxcomm`` console script: one subcommand group per module in COMMAND_MODULES.

Each module exposes ``register(subparsers)``, adding its subcommands with a
``func(args) -> int`` default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ["codec", "sweep", "collective", "evaluate", "generate", "tune"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxcomm", description="Block-scaled compression of TP communication")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mxcomm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
