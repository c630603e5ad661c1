"""Plays two moves, then takes 0.6 s per move whatever the clock says (answers late, but answers)."""

import time

from uci_base import random_move, run


def on_go(board, n):
    if n >= 3:
        time.sleep(0.6)
    return random_move(board)


run("slow", on_go)
