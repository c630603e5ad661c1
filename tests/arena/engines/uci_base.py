"""A minimal UCI loop for the deliberately broken test engines (stdin/stdout only)."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

import chess


def parse_position(words: list[str]) -> chess.Board:
    if words[0] == "startpos":
        board = chess.Board()
        rest = words[1:]
    else:
        i = words.index("moves") if "moves" in words else len(words)
        board = chess.Board(" ".join(words[1:i]))
        rest = words[i:]
    if rest[:1] == ["moves"]:
        for uci in rest[1:]:
            board.push_uci(uci)
    return board


def run(name: str, on_go: Callable[[chess.Board, int], str | None]) -> None:
    """Answer uci/isready/position/go; ``on_go(board, n)`` (n: the engine's move number in this game)
    returns the bestmove text (None: say nothing)."""
    board = chess.Board()
    n = 0
    for raw in sys.stdin:
        words = raw.split()
        if not words:
            continue
        cmd = words[0]
        if cmd == "uci":
            print(f"id name {name}\nid author tests\nuciok", flush=True)
        elif cmd == "ucinewgame":
            n = 0  # `n` counts the moves of this game
        elif cmd == "isready":
            print("readyok", flush=True)
        elif cmd == "position":
            board = parse_position(words[1:])
        elif cmd == "go":
            n += 1
            answer = on_go(board, n)
            if answer is not None:
                print(f"info depth 1 score cp 0\nbestmove {answer}", flush=True)
        elif cmd == "quit":
            return


def random_move(board: chess.Board) -> str:
    moves = sorted(m.uci() for m in board.legal_moves)
    return random.Random(len(board.move_stack)).choice(moves)
