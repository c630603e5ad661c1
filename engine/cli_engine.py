"""Engine subcommands: ``uci``, ``make-tiny-model``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from engine import uci

    p = sub.add_parser("uci", help="run the UCI engine on stdin/stdout (for GUIs and tournament managers)")
    uci.add_arguments(p)
    p.set_defaults(func=uci.run_uci)

    t = sub.add_parser(
        "make-tiny-model",
        help="write a small random-weight Mistral model with the real Mistral tokenizer (tests, demos)",
    )
    t.add_argument("folder", help="output folder")
    t.add_argument("--hidden-size", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:
    from engine.tiny import make_tiny_mistral

    folder = make_tiny_mistral(args.folder, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    print(folder)
    return 0
