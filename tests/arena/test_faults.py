"""Deliberately broken engines lose their games with the right reason; the match goes on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import chess.pgn
import pytest

from arena.engines import parse_engine
from arena.match import MatchOptions, PlaySettings, run_match
from arena.sprt import Sprt

ENGINES = Path(__file__).parent / "engines"


def engine(script: str, name: str) -> list[str]:
    return [f"{sys.executable} {ENGINES / script}", f"name={name}"]


def play(tmp_path: Path, broken: str, *, games: int = 2, **settings: object) -> dict:
    specs = [parse_engine(engine(broken, "broken")), parse_engine(engine("random_engine.py", "random"))]
    base = {"movetime_ms": 200, "tc": "inf", "max_plies": 30, "stop_grace_s": 0.5}
    base.update(settings)
    opts = MatchOptions(
        games=games, pgn=str(tmp_path / "m.pgn"), json=str(tmp_path / "m.json"), show_progress=False
    )
    return run_match(specs, PlaySettings(**base), opts)  # type: ignore[arg-type]


def pgn_games(path: Path) -> list[chess.pgn.Game]:
    out = []
    with path.open() as f:
        while (g := chess.pgn.read_game(f)) is not None:
            out.append(g)
    return out


@pytest.mark.timeout(60)
def test_illegal_move_loses_with_the_move_named(tmp_path: Path) -> None:
    report = play(tmp_path, "illegal_engine.py")
    assert report["games"] == 2 and report["losses"] == 2
    st = report["per_engine"]["broken"]
    assert st["illegal_moves"] == 2 and st["crashes"] == 0
    assert report["terminations"] == {"illegal move": 2}
    games = pgn_games(tmp_path / "m.pgn")
    assert len(games) == 2
    assert games[0].headers["Termination"] == "rules infraction"
    assert "makes an illegal move: 'e2e5'" in games[0].headers["TerminationDetails"]
    assert games[0].headers["Result"] == "0-1" and games[1].headers["Result"] == "1-0"  # colours alternate


@pytest.mark.timeout(60)
def test_crash_loses_and_the_engine_is_restarted(tmp_path: Path) -> None:
    report = play(tmp_path, "crash_engine.py")
    st = report["per_engine"]["broken"]
    assert report["games"] == 2 and st["crashes"] == 2
    assert st["restarts"] == 1  # restarted for game 2, which it played (and crashed in) again
    details = [g.headers["TerminationDetails"] for g in pgn_games(tmp_path / "m.pgn")]
    assert all("crashes" in d and "code 3" in d and "segmentation fault (simulated)" in d for d in details)


@pytest.mark.timeout(60)
def test_hang_is_a_stall_and_the_process_is_replaced(tmp_path: Path) -> None:
    report = play(tmp_path, "hang_engine.py")
    st = report["per_engine"]["broken"]
    assert report["games"] == 2 and st["stalls"] == 2 and st["time_losses"] == 0
    assert st["restarts"] == 1
    assert report["terminations"] == {"stall": 2}
    detail = pgn_games(tmp_path / "m.pgn")[0].headers["TerminationDetails"]
    assert "stalls" in detail and "after 'stop'" in detail


@pytest.mark.timeout(60)
def test_hang_without_a_clock_is_caught_by_the_stall_timeout(tmp_path: Path) -> None:
    report = play(tmp_path, "hang_engine.py", games=1, movetime_ms=0, nodes=1000, stall_timeout_s=1.0)
    assert report["per_engine"]["broken"]["stalls"] == 1
    assert "no bestmove within 1 s" in pgn_games(tmp_path / "m.pgn")[0].headers["TerminationDetails"]


@pytest.mark.timeout(60)
def test_slow_engine_loses_on_time_but_is_not_restarted(tmp_path: Path) -> None:
    report = play(tmp_path, "slow_engine.py")
    st = report["per_engine"]["broken"]
    assert report["games"] == 2 and st["time_losses"] == 2 and st["stalls"] == 0
    assert st["restarts"] == 0  # it answered `stop`: alive and well
    assert report["terminations"] == {"time forfeit": 2}
    detail = pgn_games(tmp_path / "m.pgn")[0].headers["TerminationDetails"]
    assert "loses on time" in detail
    assert pgn_games(tmp_path / "m.pgn")[0].headers["Termination"] == "time forfeit"
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["per_engine"]["random"]["time_losses"] == 0


@pytest.mark.timeout(60)
def test_resignation_in_info_string_ends_the_game(tmp_path: Path) -> None:
    report = play(tmp_path, "resign_engine.py")
    st = report["per_engine"]["broken"]
    assert report["terminations"] == {"resignation": 2} and st["resignations"] == 2
    assert st["illegal_moves"] == 0 and report["losses"] == 2
    game = pgn_games(tmp_path / "m.pgn")[0]
    assert game.headers["TerminationDetails"] == "White (broken) resigns"
    # The move sent with the resignation is not played: two moves per game stand.
    assert st["moves"] == 4
    assert game.headers["Result"] == "0-1"


@pytest.mark.timeout(60)
def test_sprt_stops_the_match_when_decided(tmp_path: Path) -> None:
    specs = [
        parse_engine(engine("illegal_engine.py", "broken")),
        parse_engine(engine("random_engine.py", "random")),
    ]
    settings = PlaySettings(tc="inf", movetime_ms=200, max_plies=30)
    opts = MatchOptions(
        games=20,
        json=str(tmp_path / "s.json"),
        show_progress=False,
        sprt=Sprt(elo0=0, elo1=200, alpha=0.2, beta=0.2),
    )
    report = run_match(specs, settings, opts)
    assert report["sprt"]["decision"] == "H0"
    assert report["sprt"]["statistics"] == "pentanomial"
    assert report["games"] == 4  # two lost pairs push the LLR below log(0.2 / 0.8)
    assert report["complete"] is True



def test_a_stream_that_fails_to_close_does_not_stop_the_kill() -> None:
    # Seen once in a full test run under load: Ctrl-C of a match killed the engines while their
    # games went on, and closing one of an engine's pipes raised ValueError ("PyMemoryView_
    # FromBuffer(): info->buf must not be NULL") out of kill(): exit 1 instead of 130, with no
    # report. Not reproduced on demand; kill() now closes stdin under the lock send() takes,
    # closes stdout and stderr after their readers have left them, and gets past such an error.
    from arena.uci_process import UciProcess

    class BadStream:
        def __init__(self, real: object) -> None:
            self.real = real

        def close(self) -> None:
            self.real.close()  # type: ignore[attr-defined]
            raise ValueError("PyMemoryView_FromBuffer(): info->buf must not be NULL")

    proc = UciProcess(parse_engine(engine("random_engine.py", "random")))
    proc.start()
    popen = proc._proc
    assert popen is not None
    readers = list(proc._threads)
    popen.stdin = BadStream(popen.stdin)  # type: ignore[assignment]
    proc.kill()
    assert not proc.alive and popen.returncode is not None
    assert not any(t.is_alive() for t in readers)
