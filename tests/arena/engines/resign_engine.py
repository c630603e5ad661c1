"""Says it resigns on its 3rd move, the way the project's engine does (and still sends a legal move)."""

from uci_base import random_move, run


def on_go(board, n):
    if n >= 3:
        print("info string resign: the model gives this game up", flush=True)
    return random_move(board)


run("resign", on_go)
