"""The benchmark games of benchmarks/fastpath_latency.py (used by fastpath_cpu.py too): the engine
plays itself for a fixed number of plies, so a mate or stalemate must be stepped back without
ever looping (a v17 run hung there once: two moves that both mated were swapped forever)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import chess

_spec = importlib.util.spec_from_file_location(
    "fastpath_latency", Path(__file__).resolve().parents[2] / "benchmarks" / "fastpath_latency.py"
)
assert _spec is not None and _spec.loader is not None
fastpath_latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fastpath_latency)


GAME = (  # 164 plies of a random walk that plays mates; then Qd7#, g8=Q# and g8=R# all mate
    "f2f4 d7d6 d2d3 b8a6 b1d2 g7g5 b2b4 b7b6 g2g4 a6b8 d3d4 e7e5 c2c3 f8g7 d4d5 c7c5 a1b1 e5f4 "
    "a2a3 g8h6 d2c4 d8c7 b1b2 e8g8 d1d3 c5b4 c1f4 b8d7 e1d1 b4b3 f4e5 d7f6 f1g2 c8b7 e5f6 a8b8 "
    "c4a5 b8c8 d1e1 b7c6 b2c2 f8e8 g2h3 c8b8 e2e3 c7d8 c3c4 b8b7 d3d4 g8f8 c2b2 b7d7 b2b1 c6a8 "
    "a5b7 b6b5 g1e2 g7f6 e2c1 f6g7 d4a1 g7b2 h3f1 a7a5 c1e2 e8e7 h2h3 b2e5 e3e4 a8b7 h1h2 a5a4 "
    "h2f2 e7e8 e2g3 f7f6 f2e2 b7c6 g3f5 h6f5 b1b3 f5e7 e2g2 c6a8 f1e2 f6f5 g2g1 e5g7 a1d1 d7a7 "
    "b3c3 g7c3 e1f1 c3e5 d1d3 e5f6 f1g2 a7d7 d3c2 e7g6 e4f5 f6e7 g1b1 h7h6 e2d1 a8d5 g2g3 d8b8 "
    "c2g2 b5b4 d1a4 b4b3 b1c1 e8c8 g2g1 g6h4 g1h2 d5f7 c1h1 f7g6 f5g6 c8e8 h2d2 e7f6 a4d7 f8e7 "
    "h1c1 h4f3 c1b1 f6e5 g3f2 e5g3 f2e3 e7d8 e3f3 d6d5 b1a1 e8e4 h3h4 g3d6 f3g2 d6a3 g2h1 b8b5 "
    "h4h5 b5b6 d2c1 e4g4 g6g7 g4h4 d7h3 h4d4 c4c5 d4c4 c1d1 b6c6 h1g1 d5d4 a1a2 b3a2 d1f3 c6e4 "
    "f3f7 e4f4"
)


def goes_on(board: chess.Board) -> bool:
    return any(board.legal_moves)


def test_a_mate_is_replaced_by_a_move_after_which_the_game_goes_on() -> None:
    board = chess.Board()
    for uci in ("f2f3", "e7e5", "g2g4"):
        board.push_uci(uci)
    forced: list[chess.Move] = []
    fastpath_latency.next_board(board, chess.Move.from_uci("d8h4"), forced)  # Qh4#
    assert board.ply() == 4 and board.peek() != chess.Move.from_uci("d8h4")
    assert forced == [board.peek()] and goes_on(board)
    assert any(fastpath_latency._goes_on(board, reply) for reply in board.legal_moves)


def old_rule_cycles(board: chess.Board, move: chess.Move, bound: int = 50) -> bool:
    """The rule before the fix: the mating move replaced by the other moves in turn, by the ply."""
    board = board.copy()
    board.push(move)
    for _ in range(bound):
        if any(board.legal_moves):
            return False
        last = board.pop()
        others = [m for m in board.legal_moves if m != last]
        board.push(others[len(board.move_stack) % len(others)] if others else last)
    return True


def test_two_mating_moves_are_not_swapped_forever() -> None:
    board = chess.Board()
    for uci in GAME.split():
        board.push_uci(uci)
    mate = chess.Move.from_uci("f7d7")
    assert old_rule_cycles(board, mate)  # the hazard is real here
    forced: list[chess.Move] = []
    fastpath_latency.next_board(board, mate, forced)
    assert board.ply() == 165 and goes_on(board)
    assert any(fastpath_latency._goes_on(board, reply) for reply in board.legal_moves)


def test_games_that_prefer_mates_still_reach_the_ply_count() -> None:
    rng = random.Random(1)
    forced: list[chess.Move] = []
    for _ in range(30):
        board = chess.Board()
        while board.ply() < 150:
            move = rng.choice(list(board.legal_moves))
            for m in board.legal_moves:  # play a mate or stalemate whenever there is one
                board.push(m)
                ends = not goes_on(board)
                board.pop()
                if ends:
                    move = m
                    break
            fastpath_latency.next_board(board, move, forced)
            assert goes_on(board) and board.is_valid()
    assert len(forced) > 30, "the walks hardly had to step a mate back: the test proves little"
