"""Plays legal moves, then on its 3rd move an illegal one (a pawn move three squares ahead)."""

from uci_base import random_move, run

run("illegal", lambda board, n: "e2e5" if n >= 3 else random_move(board))
