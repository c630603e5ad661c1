"""A well-behaved engine that takes 30 ms a move: games long enough (about 0.5 s for 16 plies)
that a test can stop a match between games however loaded the machine is."""

import time

from uci_base import random_move, run


def on_go(board, n):
    time.sleep(0.03)
    return random_move(board)


run("paced", on_go)
