"""Plays two moves, then never answers `go` (nor `stop`), but stays alive."""

from uci_base import random_move, run

run("hang", lambda board, n: None if n >= 3 else random_move(board))
