"""A well-behaved engine that thinks a little: a legal move after 25 ms (a random mover that
answers at once can finish a match's last games before a test's Ctrl-C reaches it)."""

import time

from uci_base import random_move, run


def on_go(board, n):
    time.sleep(0.025)
    return random_move(board)


run("paced", on_go)
