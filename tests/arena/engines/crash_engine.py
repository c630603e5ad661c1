"""Plays two moves, then dies with exit code 3 (and a last word on stderr)."""

import sys

from uci_base import random_move, run


def on_go(board, n):
    if n >= 3:
        print("crash_engine: segmentation fault (simulated)", file=sys.stderr, flush=True)
        sys.exit(3)
    return random_move(board)


run("crash", on_go)
