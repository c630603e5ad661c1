"""benchmarks/mistake_probe.py: it finds a set's mistakes exactly where self-play made them,
and judges them and the set's other moves with Stockfish."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import chess
import pytest

from training.config import load_selfplay_config
from training.selfplay import run_selfplay

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mistake_probe", REPO / "benchmarks" / "mistake_probe.py")
assert _spec is not None and _spec.loader is not None
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _play(out: Path, stockfish: str, *extra: str) -> None:
    args = [f"out={out}", "games=6", "chunk_games=3", "workers=1", "nodes=30", f"stockfish={stockfish}", *extra]
    run_selfplay(load_selfplay_config(None, args), progress_bar=False)


def test_the_probe_finds_the_mistakes_self_play_made(tmp_path: Path, stockfish_path: str) -> None:
    """The probe replays each game's stream over its moves (after a book line or random plies):
    the mistakes it finds and the budget's moves it samples are legal moves of the games, never
    the same position twice, and about the set's share of mistakes."""
    _play(tmp_path / "m", stockfish_path, "mistake_rate=0.2", "book_fraction=0.5")
    cfg = load_selfplay_config(None, [f"out={tmp_path / 'm'}", "mistake_rate=0.2", "book_fraction=0.5", "nodes=30"])
    mistakes, budget = probe.mistake_positions(tmp_path / "m", cfg, 10_000)
    assert mistakes and budget
    fens = {fen for fen, _ in mistakes}
    assert not any(fen in fens for fen, _ in budget)
    for fen, uci in mistakes + budget:  # every recorded move is legal where it was played
        assert chess.Move.from_uci(uci) in chess.Board(fen).legal_moves
    # About a fifth of the moves after the opening are mistakes.
    assert 0.1 < len(mistakes) / (len(mistakes) + 10 * len(budget)) < 0.3


def test_the_probe_runs_and_refuses_a_set_without_mistakes(
    tmp_path: Path, stockfish_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _play(tmp_path / "m", stockfish_path, "mistake_rate=0.1")
    out = tmp_path / "probe.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "mistake_probe.py"), "--games", str(tmp_path / "m"),
           "--mistakes", "8", "--nodes", "500", "--stockfish", stockfish_path, "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    result = json.loads(out.read_text())
    for side in ("mistakes", "budget_moves"):
        r = result[side]
        assert r["moves"] >= 1 and r["same_as_judge_best"] + r["other"] == r["moves"]
        assert r["blunders_200cp"] <= r["other"]
    _play(tmp_path / "plain", stockfish_path)
    cmd[3] = str(tmp_path / "plain")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "without mistakes" in done.stderr
    monkeypatch.setattr(sys, "argv", ["mistake_probe.py", "--games", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit):  # not a self-play folder: argparse's error, exit 2
        probe.main()
