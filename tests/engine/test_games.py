"""python-chess's SimpleEngine drives `mistral-chess-uci` through full games against
Stockfish at its lowest UCI_Elo: no illegal move, no time loss, no crash."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import chess
import chess.engine
import pytest

GAMES_PER_MODE = 10  # 20 full games in all: 10 per move-choice mode
BASE_S = 20.0  # the engine's clock: 20 s + 0.1 s per move
INC_S = 0.1


def _uci_command(model_dir: Path, mode: str) -> list[str]:
    exe = shutil.which("mistral-chess-uci", path=str(Path(sys.executable).parent))
    assert exe is not None, "console script mistral-chess-uci is not installed"
    return [exe, "--model", str(model_dir), f"search.mode={mode}", "log_level=WARNING"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["constrained", "generate"])
def test_full_games_against_stockfish(tiny_model_dir: Path, stockfish_path: str, mode: str) -> None:
    engine = chess.engine.SimpleEngine.popen_uci(_uci_command(tiny_model_dir, mode), timeout=60)
    stockfish = chess.engine.SimpleEngine.popen_uci(stockfish_path)
    low = stockfish.options["UCI_Elo"].min
    stockfish.configure({"UCI_LimitStrength": True, "UCI_Elo": low, "Threads": 1, "Hash": 16})
    results = []
    fallbacks = 0
    try:
        for game_no in range(GAMES_PER_MODE):
            board = chess.Board()
            engine_color = chess.WHITE if game_no % 2 == 0 else chess.BLACK
            clock = {chess.WHITE: BASE_S, chess.BLACK: BASE_S}
            engine.configure({})
            while not board.is_game_over(claim_draw=True) and board.ply() < 300:
                if board.turn == engine_color:
                    limit = chess.engine.Limit(
                        white_clock=clock[chess.WHITE], black_clock=clock[chess.BLACK], white_inc=INC_S, black_inc=INC_S
                    )
                    t0 = time.monotonic()
                    result = engine.play(board, limit, info=chess.engine.INFO_ALL, game=game_no)
                    spent = time.monotonic() - t0
                    clock[engine_color] += INC_S - spent
                    assert clock[engine_color] > 0, f"engine lost on time in game {game_no}"
                    assert result.move is not None and result.move in board.legal_moves, (result, board.fen())
                    if "string" in result.info and "fallback" in str(result.info["string"]):
                        fallbacks += 1
                    board.push(result.move)
                else:
                    board.push(stockfish.play(board, chess.engine.Limit(nodes=500)).move)  # type: ignore[arg-type]
            results.append(board.result(claim_draw=True))
    finally:
        engine.quit()
        stockfish.quit()
    assert len(results) == GAMES_PER_MODE
    # The engine process survived all games (quit() above would raise on a dead engine).
    print(f"{mode}: results {results}, fallback info lines {fallbacks}")
