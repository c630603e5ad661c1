"""benchmarks/move_quality.py: the held-out positions it picks, its figures, and a whole run
on a tiny model with Stockfish."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import chess
import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("move_quality", REPO / "benchmarks" / "move_quality.py")
mq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mq)


def random_games(folder: Path, n: int, seed: int = 3) -> list[list[str]]:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = random.Random(seed)
    games = []
    while len(games) < n:
        board = chess.Board()
        while not board.is_game_over() and board.ply() < 40:
            board.push(rng.choice(list(board.legal_moves)))
        if board.ply() >= 12:
            games.append([m.uci() for m in board.move_stack])
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"Moves": games, "Termination": ["UNTERMINATED"] * n, "Result": ["*"] * n})
    pq.write_table(table, folder / "games-0.parquet")
    return games


def test_summary_figures() -> None:
    # Two positions: Stockfish's scores of each legal move; the view picks index 1, then 0.
    cps = [[50, -300, 20], [10, 5]]
    r = mq.summary([1, 0], cps, None)
    assert r == {"mean_cp_loss": (350 + 0) / 2, "blunders": 1, "best_move": 1}
    other = mq.summary([0, 1], cps, [1, 0])
    assert other["mean_cp_loss"] == (0 + 5) / 2 and other["blunders"] == 0 and other["best_move"] == 1
    assert other["vs_first_mean_cp"] == ((50 - -300) + (5 - 10)) / 2
    assert other["vs_first_same_move"] == 0
    # A mate counts as a capped loss and a clipped evaluation.
    capped = mq.summary([1], [[10_000, 0]], None)
    assert capped["mean_cp_loss"] == mq.CP_CAP and capped["blunders"] == 1


def test_positions_come_from_validation_games_only(tmp_path: Path) -> None:
    from training.examples import split_of
    from training.sources import moves_key

    games = random_games(tmp_path / "g", 300)
    held = mq.held_out_positions(str(tmp_path / "g"), 1000, 11, 0.1, 0)
    valid = [g for g in games if split_of(moves_key(chess.STARTING_FEN, g), 0.1, 0) == "validation"]
    assert 10 < len(held) == len(valid) < 60
    for moves in held:  # a prefix of a validation game, 8 to 119 plies long, not the whole game
        game = next(g for g in valid if g[: len(moves)] == moves)
        assert 8 <= len(moves) < len(game)
    assert held == mq.held_out_positions(str(tmp_path / "g"), 1000, 11, 0.1, 0)  # seeded
    assert len(mq.held_out_positions(str(tmp_path / "g"), 1000, 11, 0.0, 0)) == 300  # every game
    # --exclude-games: the same pick less the positions of the excluded games
    from training.packgames import game_key

    seen = {game_key(next(g for g in valid if g[: len(m)] == m)) for m in held[::3]}
    kept = mq.held_out_positions(str(tmp_path / "g"), 1000, 11, 0.1, 0, seen)
    assert kept == [m for i, m in enumerate(held) if i % 3] and len(kept) < len(held)


def test_bad_arguments_say_what_was_wrong() -> None:
    with pytest.raises(SystemExit, match="give NAME=DIR"):
        mq.parse_view("just-a-name")
    with pytest.raises(SystemExit, match="is not a key=value override"):
        mq.parse_view("v=dir prompt.window_offset")
    assert mq.parse_view("v=dir prompt.result=1-0") == ("v", "dir", ["prompt.result=1-0"])
    with pytest.raises(SystemExit, match="no view named c"):
        mq.parse_ensemble("e=a+c", ["a", "b"])
    with pytest.raises(SystemExit, match="NAME=VIEW\\+VIEW"):
        mq.parse_ensemble("e=a", ["a", "b"])


def test_a_whole_run_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path, stockfish_path: str) -> None:
    random_games(tmp_path / "g", 20)
    out = tmp_path / "mq.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "move_quality.py"), "--games", str(tmp_path / "g"),
        "--positions", "4", "--validation-fraction", "0", "--nodes", "2000", "--stockfish", stockfish_path,
        "--view", f"a={tiny_model_dir}", "--view", f"b={tiny_model_dir} prompt.result=1/2-1/2",
        "--ensemble", "ab=a+b", "--json", str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    assert 1 <= data["positions"] <= 4
    assert set(data["results"]) == {"a", "b", "ab"}
    for name, r in data["results"].items():
        assert 0 <= r["mean_cp_loss"] <= mq.CP_CAP and 0 <= r["best_move"] <= data["positions"]
        assert ("vs_first_mean_cp" in r) == (name != "a")
    assert [v["overrides"] for v in data["views"]] == [[], ["prompt.result=1/2-1/2"]]
