"""A fast, well-behaved engine: a legal move at once."""

from uci_base import random_move, run

run("random", lambda board, n: random_move(board))
