"""Time controls, engine descriptions, Stockfish discovery and the bundled openings."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest

from arena import engines
from arena.clock import Clock, parse_time_control
from arena.engines import find_stockfish, parse_engine
from arena.errors import EngineSpecError, StockfishNotFoundError, TimeControlError
from arena.openings import check_suite, load_openings


def test_time_controls_parse_as_tournament_managers_write_them() -> None:
    tc = parse_time_control("10+0.1")
    assert (tc.base_ms, tc.inc_ms, tc.moves) == (10000, 100, 0)
    tc = parse_time_control("40/60")
    assert (tc.base_ms, tc.inc_ms, tc.moves) == (60000, 0, 40)
    assert parse_time_control("2:30+1").base_ms == 150000
    assert parse_time_control("inf", nodes=1000).base_ms is None
    assert parse_time_control(None, movetime_ms=500).describe() == "movetime 500 ms"
    for bad in ("10+", "ten", "40/"):
        with pytest.raises(TimeControlError):
            parse_time_control(bad)
    with pytest.raises(TimeControlError, match="no limit"):
        parse_time_control("inf")


def test_clock_go_command_and_periods() -> None:
    tc = parse_time_control("40/60")
    clock = Clock(tc, tc)
    assert clock.go_command(chess.WHITE) == "go wtime 60000 winc 0 btime 60000 binc 0 movestogo 40"
    for _ in range(40):
        clock.charge(chess.WHITE, 1000.0)
    # 40 moves of 1 s: 20 s left, plus the next period's 60 s.
    assert clock.remaining[chess.WHITE] == pytest.approx(80000.0)
    assert clock.moves_to_go(chess.WHITE) == 40


def test_clock_never_sends_half_a_clock() -> None:
    # White has a clock, Black a fixed move time: Black must not see wtime without btime
    # (Stockfish would read the missing btime as zero and move at once).
    clock = Clock(parse_time_control("60+1"), parse_time_control(None, movetime_ms=100))
    assert clock.go_command(chess.BLACK) == "go movetime 100"
    assert clock.go_command(chess.WHITE) == "go wtime 60000 winc 1000"


def test_stockfish_elo_below_its_range_is_clamped_and_said(stockfish_path: str) -> None:
    spec = parse_engine(["stockfish:1320"], stockfish_path=stockfish_path)
    assert spec.requested_elo == 1320
    assert spec.elo is not None and spec.elo >= 1320
    assert spec.options["UCI_LimitStrength"] == "true"
    assert spec.options["UCI_Elo"] == str(spec.elo)
    if spec.elo != 1320:  # Stockfish 15.1: 1350
        assert "1320" in spec.notes[0] and str(spec.elo) in spec.notes[0]


def test_missing_stockfish_error_names_every_place_looked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STOCKFISH_PATH", str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(engines, "DEBIAN_STOCKFISH", str(tmp_path / "games" / "stockfish"))
    with pytest.raises(StockfishNotFoundError) as info:
        find_stockfish()
    text = str(info.value)
    assert "$STOCKFISH_PATH" in text and str(tmp_path / "nope") in text
    assert "'stockfish' on PATH" in text
    assert str(tmp_path / "games" / "stockfish") in text


def test_mistral_engine_spec_builds_the_engine_command(tiny_model_dir: Path) -> None:
    spec = parse_engine([f"mistral:{tiny_model_dir}", "search.mode=generate", "model.threads=1", "name=tiny"])
    assert spec.kind == "mistral" and spec.name == "tiny"
    assert spec.command[1:5] == ["-m", "engine", "--model", str(tiny_model_dir)]
    assert spec.command[-2:] == ["search.mode=generate", "model.threads=1"]


def test_bad_engine_specs_are_clear_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(EngineSpecError, match="search.mood"):
        parse_engine([f"mistral:{tiny_model_dir}", "search.mood=generate"])
    with pytest.raises(EngineSpecError, match="neither a model folder"):
        parse_engine([f"mistral:{tmp_path / 'missing'}"])
    # A folder with no model in it (the engine would start and play random fallbacks), e.g. the
    # folder a model's tarball was unpacked into: refused, naming the model folder inside.
    (tmp_path / "unpacked" / "bundled-v9").mkdir(parents=True)
    (tmp_path / "unpacked" / "bundled-v9" / "config.json").write_text("{}")
    with pytest.raises(EngineSpecError, match=r"holds no model: no config.json or adapter_config.json \(a model is in .*bundled-v9\)"):
        parse_engine([f"mistral:{tmp_path / 'unpacked'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineSpecError, match="holds no model: no config.json or adapter_config.json; the engine"):
        parse_engine([f"mistral:{tmp_path / 'empty'}"])
    with pytest.raises(EngineSpecError, match="not found"):
        parse_engine(["/no/such/engine --uci"])
    with pytest.raises(EngineSpecError, match="not key=value"):
        parse_engine(["stockfish:1500", "Hash"])


def test_bundled_openings_are_50_distinct_balanced_lines_of_4_to_8_plies() -> None:
    suite = load_openings()
    assert len(suite) >= 50
    assert check_suite(suite) == []  # plies in 4..8, distinct final positions, games not over
    assert len({o.key() for o in suite}) == len(suite)
    assert all(o.eval_cp is not None and abs(o.eval_cp) <= 50 for o in suite)
    assert all(o.fen == chess.STARTING_FEN for o in suite)  # the model sees them as PGN moves


def test_default_clock_gives_way_to_a_per_move_limit() -> None:
    from arena.match import PlaySettings

    assert PlaySettings().time_control().describe() == "10+0.1"
    only_movetime = PlaySettings(movetime_ms=100).time_control()
    assert only_movetime.base_ms is None and only_movetime.movetime_ms == 100
    both = PlaySettings(tc="5+0.05", nodes=1000).time_control()
    assert both.base_ms == 5000 and both.nodes == 1000


def test_an_explicit_stockfish_path_is_never_silently_replaced(tmp_path: Path) -> None:
    # The system Stockfish exists here, but the user named another path: that is an error.
    with pytest.raises(StockfishNotFoundError, match="given path"):
        find_stockfish(str(tmp_path / "my-stockfish"))
