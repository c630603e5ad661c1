"""Matches end to end: the project's engine on a tiny model against Stockfish, Ctrl-C and
resume, ladder and tournament reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import chess.pgn
import pytest

from arena.engines import parse_engine
from arena.ladder import LadderOptions, run_ladder
from arena.match import MatchOptions, PlaySettings, run_match
from arena.tournament import TournamentOptions, checkpoint_engines, run_tournament

ENGINES = Path(__file__).parent / "engines"
RANDOM = f"{sys.executable} {ENGINES / 'random_engine.py'}"
# 30 ms a move: the random engine answers at once, so on a loaded machine a whole 8-game match
# could end before a test that waits for two finished games gets to stop it.
PACED = f"{sys.executable} {ENGINES / 'paced_engine.py'}"


def read_pgn(path: Path) -> list[chess.pgn.Game]:
    games = []
    with path.open() as f:
        while (g := chess.pgn.read_game(f)) is not None:
            games.append(g)
    return games


@pytest.mark.timeout(120)
def test_engine_on_tiny_model_plays_stockfish_at_its_lowest_elo(
    tiny_model_dir: Path, stockfish_path: str, tmp_path: Path
) -> None:
    specs = [
        parse_engine([f"mistral:{tiny_model_dir}", "name=tiny", "model.threads=1"]),
        parse_engine(["stockfish:1320", "movetime=50", "tc=inf"], stockfish_path=stockfish_path),
    ]
    settings = PlaySettings(tc="30+0.5", max_plies=12)
    opts = MatchOptions(
        games=2, pgn=str(tmp_path / "m.pgn"), json=str(tmp_path / "m.json"), show_progress=False
    )
    report = run_match(specs, settings, opts)
    assert report["games"] == 2 and report["wins"] + report["draws"] + report["losses"] == 2
    tiny = report["per_engine"]["tiny"]
    # The engine never plays an illegal move and answers inside its clock.
    assert tiny["illegal_moves"] == tiny["time_losses"] == tiny["crashes"] == tiny["stalls"] == 0
    assert tiny["moves"] >= 6 and tiny["move_time_ms"]["median"] is not None
    assert set(report["elo"]) >= {"diff", "lower", "upper", "error"} and "los" in report
    sf = report["engines"][1]
    assert sf["requested_elo"] == 1320 and sf["elo"] == int(sf["options"]["UCI_Elo"])
    games = read_pgn(tmp_path / "m.pgn")
    assert [g.headers["White"] for g in games] == ["tiny", sf["name"]]  # colours alternate
    assert games[0].headers["Opening"] == games[1].headers["Opening"]  # one opening, both colours
    assert all(g.headers["Termination"] and g.headers["TerminationDetails"] for g in games)
    assert json.loads((tmp_path / "m.json").read_text())["games"] == 2


def _games_in_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item.get("type") == "game":
            out.append(item["game"])
    return out


def _eight_game_match(tmp_path: Path) -> tuple[list[str], Path, Path, Path]:
    pgn, report = tmp_path / "r.pgn", tmp_path / "r.json"
    log = tmp_path / "r.games.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "arena",
        "match",
        "--engine",
        PACED,
        "name=a",
        "--engine",
        PACED,
        "name=b",
        "--games",
        "8",
        "--movetime",
        "30",
        "--tc",
        "inf",
        "--max-plies",
        "16",
        "--pgn",
        str(pgn),
        "--json",
        str(report),
        "--quiet",
    ]
    return cmd, pgn, report, log


def _stop_after_two_games(cmd: list[str], pgn: Path, report: Path, log: Path, sig: int) -> list[dict[str, Any]]:
    """Start the match, send ``sig`` once two games are logged; check what was kept."""
    # The child gets Ctrl-C's default disposition: a suite started in the background of a
    # non-interactive shell (`.ci/run &`) ignores SIGINT, and a child would inherit that.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while len(_games_in_log(log)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "--resume" in err
    kept = _games_in_log(log)
    assert 2 <= len(kept) < 8
    assert len(read_pgn(pgn)) == len(kept)
    assert json.loads(report.read_text())["games"] == len(kept)
    return kept


@pytest.mark.timeout(120)
def test_sigterm_stops_like_ctrl_c(tmp_path: Path) -> None:
    cmd, pgn, report, log = _eight_game_match(tmp_path)
    _stop_after_two_games(cmd, pgn, report, log, signal.SIGTERM)


@pytest.mark.timeout(120)
def test_ctrl_c_keeps_finished_games_and_resume_plays_the_rest(tmp_path: Path) -> None:
    cmd, pgn, report, log = _eight_game_match(tmp_path)
    kept = _stop_after_two_games(cmd, pgn, report, log, signal.SIGINT)

    # Without --resume the earlier games are not overwritten.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert len(_games_in_log(log)) == len(kept)

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    final = _games_in_log(log)
    assert sorted(g["index"] for g in final) == list(range(8))
    by_index = {g["index"]: g for g in final}
    assert all(by_index[g["index"]] == g for g in kept)  # finished games untouched
    assert [int(g.headers["Round"]) for g in read_pgn(pgn)] == list(range(1, 9))
    assert json.loads(report.read_text())["games"] == 8

    # A different match cannot resume from this log.
    other = subprocess.run(
        [*cmd[:-1], "--movetime", "40", "--quiet", "--resume"], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 2 and "belongs to another match" in other.stderr


@pytest.mark.timeout(120)
def test_ladder_writes_a_fit_and_a_plot(stockfish_path: str, tmp_path: Path) -> None:
    engine = parse_engine([RANDOM, "name=random"])
    # A node budget, not a move time: on a loaded machine 20 ms a move left Stockfish too weak
    # to mate the random mover within the ply limit, and the drawn games broke the fit check.
    settings = PlaySettings(tc="inf", nodes=20_000, max_plies=120)
    opts = LadderOptions(
        levels=[1320, 1700],
        games=2,
        json=str(tmp_path / "l.json"),
        pgn=str(tmp_path / "l.pgn"),
        show_progress=False,
        stockfish=stockfish_path,
    )
    report = run_ladder(engine, settings, opts)
    assert report["games"] == 4
    assert [lv["games"] for lv in report["levels"]] == [2, 2]
    assert report["levels"][0]["requested"] == 1320
    fit = report["fit"]
    # A random mover scores (almost) nothing: either an upper bound or a low estimate.
    assert fit["upper"] is not None and fit["upper"] < 1700
    png = tmp_path / "l.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "l.json").read_text())["fit"] == fit


@pytest.mark.timeout(120)
def test_round_robin_gives_ratings_and_a_cross_table(tmp_path: Path) -> None:
    specs = [parse_engine([RANDOM, f"name=r{i}"]) for i in range(3)]
    settings = PlaySettings(tc="inf", movetime_ms=20, max_plies=10)
    opts = TournamentOptions(games=2, json=str(tmp_path / "t.json"), show_progress=False)
    report = run_tournament(specs, settings, opts)
    assert report["games"] == 6  # 3 pairings x 2 games
    assert {r["name"] for r in report["ratings"]} == {"r0", "r1", "r2"}
    assert report["anchor"] == {"name": "r0", "elo": 0.0}
    assert all(r["games"] == 4 for r in report["ratings"])
    cross = report["cross_table"]
    assert cross["r0"]["r1"]["wins"] == cross["r1"]["r0"]["losses"]
    assert (tmp_path / "t.png").is_file()


def test_checkpoints_of_a_run_become_engines_in_step_order(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (1000, 200, 50):
        shutil.copytree(tiny_model_dir, run / f"checkpoint-{step}")
    (run / "logs").mkdir()
    specs = checkpoint_engines(str(run), ["model.threads=1"])
    assert [s.name for s in specs] == ["checkpoint-50", "checkpoint-200", "checkpoint-1000"]
    assert all(s.kind == "mistral" and "model.threads=1" in s.command for s in specs)


def test_cli_rejects_a_third_engine_for_a_match(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "arena",
            "match",
            "--engine",
            RANDOM,
            "--engine",
            RANDOM,
            "--engine",
            RANDOM,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
    )
    assert res.returncode == 2 and "exactly two --engine" in res.stderr


@pytest.mark.timeout(120)
def test_repeated_games_are_counted_and_the_distinct_ones_rated(
    stockfish_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two deterministic engines and one opening: six games are two games played three times
    each. The report says so and gives the result over the two distinct games."""
    from loguru import logger

    suite = tmp_path / "one.pgn"
    suite.write_text('[Event "?"]\n[Result "*"]\n[Opening "Italian"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bc4 Bc5 *\n')
    specs = [
        parse_engine(["stockfish", "depth=1", "name=d1"], stockfish_path=stockfish_path),
        parse_engine(["stockfish", "depth=3", "name=d3"], stockfish_path=stockfish_path),
    ]
    settings = PlaySettings(tc="60+1", max_plies=30, openings=str(suite))
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        report = run_match(specs, settings, MatchOptions(games=6, json=str(tmp_path / "r.json"), show_progress=False))
    finally:
        logger.remove(sink)
    assert report["games"] == 6 and report["repeated_games"] == 4
    dist = report["distinct"]
    assert dist["games"] == 2 and dist["wins"] + dist["draws"] + dist["losses"] == 2
    assert dist["score"] == report["score"]  # each game counted three times: the same share
    assert dist["elo"]["games"] == 2 and report["elo"]["games"] == 6
    assert any("6 games from 1 openings" in m for m in messages)
    assert any("4 of the 6 games repeat an earlier game" in m for m in messages)
    assert json.loads((tmp_path / "r.json").read_text())["distinct"]["games"] == 2
