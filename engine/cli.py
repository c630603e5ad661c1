"""``mistral-chess``: one command with subcommands.

Each package registers its own subcommands (``register(subparsers)`` in its
``cli`` module), imported lazily so ``mistral-chess --help`` and ``uci`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine import __version__
from engine.errors import MistralChessError

# Modules that add subcommands, in help order.
REGISTRARS = ("engine.cli_engine", "arena.cli", "training.cli", "bot.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mistral-chess",
        description="A chess engine whose moves come from a fine-tuned language model.",
    )
    parser.add_argument("--version", action="version", version=f"mistral-chess {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no CLI yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MistralChessError as exc:
        print(f"mistral-chess {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mistral-chess {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
