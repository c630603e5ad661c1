"""Self-play generation: LAION schema, determinism, resume after a kill without duplicates."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import chess
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError
from training.config import SelfPlayConfig, load_selfplay_config
from training.errors import SelfPlayError
from training.selfplay import (
    UciPipe,
    find_stockfish,
    game_book_line,
    game_nodes,
    game_rng,
    load_book,
    missing_ranges,
    move_mistakes,
    move_nodes,
    play_game,
    run_selfplay,
)


def games_of(folder: Path) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for f in sorted(folder.glob("games-*.parquet")):
        t = pq.read_table(f)
        rows += [tuple(m) for m in t.column("Moves").to_pylist()]
    return rows


def test_selfplay_writes_legal_laion_games(selfplay_dir: Path) -> None:
    files = sorted(selfplay_dir.glob("games-*.parquet"))
    assert [f.name for f in files] == [
        "games-00000000-00000008.parquet", "games-00000008-00000016.parquet", "games-00000016-00000024.parquet",
    ]  # fmt: skip
    table = pq.read_table(files[0])
    assert table.column_names == ["Moves", "Termination", "Result"]
    manifest = json.loads((selfplay_dir / "manifest.json").read_text())
    assert manifest["games_written"] == 24 and manifest["complete"]
    cols = table.to_pydict()
    for moves, term, result in zip(cols["Moves"], cols["Termination"], cols["Result"], strict=True):
        board = chess.Board()
        for uci in moves:
            move = chess.Move.from_uci(uci)
            assert board.is_legal(move)
            board.push(move)
        outcome = board.outcome(claim_draw=True)
        assert outcome is not None and outcome.termination.name == term and outcome.result() == result
    # The random openings make the games differ.
    assert len(set(games_of(selfplay_dir))) == 24


def test_missing_ranges_fill_gaps_at_chunk_boundaries() -> None:
    cfg = SelfPlayConfig(games=10, chunk_games=4)
    assert missing_ranges(cfg, []) == [(0, 4), (4, 8), (8, 10)]
    assert missing_ranges(cfg, [(4, 8)]) == [(0, 4), (8, 10)]
    # A folder made for 6 games, extended to 10: only the missing games are played.
    assert missing_ranges(cfg, [(0, 4), (4, 6)]) == [(6, 8), (8, 10)]


def test_resume_after_kill_gives_the_same_games(tmp_path: Path, stockfish_path: str) -> None:
    args = ["games=12", "chunk_games=2", "workers=1", "nodes=40", f"stockfish={stockfish_path}", "max_plies=200"]
    whole = tmp_path / "whole"
    expected = run_selfplay(load_selfplay_config(None, [f"out={whole}", *args]), progress_bar=False)

    killed = tmp_path / "killed"
    code = (
        "import sys; from training.config import load_selfplay_config; from training.selfplay import run_selfplay; "
        "run_selfplay(load_selfplay_config(None, sys.argv[1:]), progress_bar=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, f"out={killed}", *args])
    deadline = time.time() + 60
    while time.time() < deadline and not list(killed.glob("games-*.parquet")):
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, a chunk may be half written
    proc.wait()
    time.sleep(1.0)  # the orphaned worker notices within a game and stops
    done_before = len(list(killed.glob("games-*.parquet")))
    assert 1 <= done_before < 6, "the kill should land while games are still being played"

    manifest = run_selfplay(load_selfplay_config(None, [f"out={killed}", *args]), progress_bar=False)
    assert manifest["games_written"] == expected["games_written"]  # games over max_plies are dropped alike
    assert manifest["last_run"]["games_played"] == 12 - 2 * done_before
    assert not list(killed.glob("*.tmp*"))
    assert games_of(killed) == games_of(whole)


def test_changed_settings_in_an_existing_folder_are_refused(tmp_path: Path, stockfish_path: str) -> None:
    base = [f"out={tmp_path}", "games=2", "workers=1", "nodes=8", f"stockfish={stockfish_path}"]
    run_selfplay(load_selfplay_config(None, base), progress_bar=False)
    with pytest.raises(SelfPlayError, match="nodes: 8 -> 9"):
        run_selfplay(load_selfplay_config(None, [*base, "nodes=9"]), progress_bar=False)


def test_bad_stockfish_and_elo_are_clear_errors(tmp_path: Path, stockfish_path: str) -> None:
    with pytest.raises(SelfPlayError, match="not found"):
        run_selfplay(SelfPlayConfig(out=str(tmp_path / "a"), stockfish=str(tmp_path / "nope")), progress_bar=False)
    with pytest.raises(SelfPlayError, match="UCI_Elo range"):
        run_selfplay(SelfPlayConfig(out=str(tmp_path / "b"), stockfish=stockfish_path, elo=99), progress_bar=False)


def test_node_jitter_and_book_lines_are_fixed_by_seed_and_index() -> None:
    cfg = SelfPlayConfig(nodes=600, nodes_jitter=0.25, book_fraction=0.3, seed=7)
    budgets = [game_nodes(cfg, i) for i in range(400)]
    assert budgets == [game_nodes(cfg, i) for i in range(400)]  # a rerun gets the same budgets
    assert min(budgets) >= 450 and max(budgets) <= 750 and len(set(budgets)) > 100
    assert game_nodes(SelfPlayConfig(nodes=600), 5) == 600  # no jitter: the configured budget
    book = load_book(cfg)
    assert len(book) > 50 and all(4 <= len(line) <= 8 for line in book)
    lines = [game_book_line(cfg, i, book) for i in range(400)]
    assert lines == [game_book_line(cfg, i, book) for i in range(400)]
    assert 0.2 < sum(line is not None for line in lines) / 400 < 0.4
    assert load_book(SelfPlayConfig()) == []  # book_fraction 0: no book read, random plies as before


def test_per_move_budgets_are_fixed_by_seed_and_index() -> None:
    cfg = SelfPlayConfig(nodes=600, nodes_jitter=0.25, jitter_per_move=True, seed=7)
    first = [next(b) for b in [move_nodes(cfg, 3)] for _ in range(200)]
    again = move_nodes(cfg, 3)
    assert first == [next(again) for _ in range(200)]  # a rerun gets the same budgets, move by move
    assert min(first) >= 450 and max(first) <= 750 and len(set(first)) > 100
    other = move_nodes(cfg, 4)
    assert first != [next(other) for _ in range(200)]
    with pytest.raises(ConfigError, match="jitter_per_move needs nodes_jitter"):
        SelfPlayConfig(nodes=600, jitter_per_move=True)


def test_book_games_repeat_with_one_budget_a_game_and_differ_with_one_a_move(stockfish_path: str) -> None:
    """One book line and a game's budget fix the game: 30 games of one line with budgets from 21
    values (30-50 nodes) hold at most 21 distinct games; drawn move by move from the same range,
    all 30 differ."""
    line = load_book(SelfPlayConfig(book_fraction=1.0))[:1]
    engine = UciPipe(find_stockfish(stockfish_path), hash_mb=16, elo=0)
    try:
        played = {}
        for per_move in (False, True):
            cfg = SelfPlayConfig(nodes=40, nodes_jitter=0.25, jitter_per_move=per_move, book_fraction=1.0, seed=3)
            games = [play_game(engine, cfg, i, line) for i in range(30)]
            assert all(g is not None and tuple(g.moves[: len(line[0])]) == tuple(line[0]) for g in games)
            played[per_move] = {tuple(g.moves) for g in games if g is not None}
    finally:
        engine.close()
    assert len(played[False]) <= 21
    assert len(played[True]) == 30


def test_mistakes_are_the_games_own_random_moves_and_fixed_by_seed_and_index(stockfish_path: str) -> None:
    """With ``mistake_rate`` a move after the opening is, when the game's own stream says so, the
    stream's random legal move instead of Stockfish's: replaying the stream over the game finds
    exactly those moves; a rerun plays the same games, and the games differ from the ones without
    mistakes, which stay as they were."""
    engine = UciPipe(find_stockfish(stockfish_path), hash_mb=16, elo=0)
    try:
        plain_cfg = SelfPlayConfig(nodes=20, seed=5)
        cfg = SelfPlayConfig(nodes=20, seed=5, mistake_rate=0.3)
        plain = [play_game(engine, plain_cfg, i) for i in range(6)]
        games = [play_game(engine, cfg, i) for i in range(6)]
        again = [play_game(engine, cfg, i) for i in range(6)]
        plain_again = [play_game(engine, plain_cfg, i) for i in range(6)]
    finally:
        engine.close()
    assert all(g is not None for g in plain + games)
    assert [g.moves for g in games] == [g.moves for g in again if g is not None]
    assert [g.moves for g in plain] == [g.moves for g in plain_again if g is not None]
    assert sum(g.moves != p.moves for g, p in zip(games, plain, strict=True)) >= 5  # type: ignore[union-attr]
    total_mistakes = 0
    for i, game in enumerate(games):
        assert game is not None
        opening = game_rng(cfg.seed, i).randint(cfg.random_plies_min, cfg.random_plies_max)
        board = chess.Board()
        for uci in game.moves[:opening]:
            board.push_uci(uci)
        stream = move_mistakes(cfg, i)
        for uci in game.moves[opening:]:
            if stream.random() < cfg.mistake_rate:
                expected = stream.choice(list(board.legal_moves)).uci()
                assert uci == expected, f"game {i}: the mistake at ply {board.ply()} is not the stream's move"
                total_mistakes += 1
            board.push_uci(uci)
        assert board.is_game_over(claim_draw=True)
    plies = sum(len(g.moves) for g in games if g is not None)
    assert 0.15 * plies < total_mistakes < 0.45 * plies  # about 30% of the moves after the opening


def test_shallow_mistakes_and_bad_mistake_settings(stockfish_path: str) -> None:
    engine = UciPipe(find_stockfish(stockfish_path), hash_mb=16, elo=0)
    try:
        cfg = SelfPlayConfig(nodes=200, seed=2, mistake_rate=0.5, mistake_nodes=1)
        game = play_game(engine, cfg, 0)
        assert game is not None and game.moves == play_game(engine, cfg, 0).moves  # type: ignore[union-attr]
        assert game.moves != play_game(engine, SelfPlayConfig(nodes=200, seed=2), 0).moves  # type: ignore[union-attr]
    finally:
        engine.close()
    with pytest.raises(ConfigError, match=r"mistake_rate must be in \[0, 1\)"):
        SelfPlayConfig(mistake_rate=1.0)
    with pytest.raises(ConfigError, match="mistake_rate must be"):
        SelfPlayConfig(mistake_rate=-0.1)
    with pytest.raises(ConfigError, match="mistake_nodes needs mistake_rate"):
        SelfPlayConfig(mistake_nodes=1)
    with pytest.raises(ConfigError, match="mistake_nodes must be >= 0"):
        SelfPlayConfig(mistake_rate=0.1, mistake_nodes=-1)


def test_time_limit_keeps_played_games_and_resumes_exactly(tmp_path: Path, stockfish_path: str) -> None:
    args = [
        "games=300", "chunk_games=300", "workers=1", "nodes=20", "nodes_jitter=0.3", "book_fraction=0.5",
        f"stockfish={stockfish_path}", "max_plies=200",
    ]  # fmt: skip
    whole = tmp_path / "whole"
    run_selfplay(load_selfplay_config(None, [f"out={whole}", *args]), progress_bar=False)
    cut = tmp_path / "cut"
    manifest = run_selfplay(load_selfplay_config(None, [f"out={cut}", *args, "max_seconds=1.5"]), progress_bar=False)
    played = manifest["last_run"]["games_played"]
    assert manifest["last_run"]["stopped_at_time_limit"] and not manifest["complete"]
    assert 1 <= played < 300, "the deadline should fall inside the one chunk"
    # The games played before the deadline are kept, in a chunk named by their range.
    assert [f.name for f in cut.glob("games-*.parquet")] == [f"games-00000000-{played:08d}.parquet"]
    manifest = run_selfplay(load_selfplay_config(None, [f"out={cut}", *args]), progress_bar=False)
    assert manifest["complete"] and manifest["last_run"]["games_played"] == 300 - played
    assert games_of(cut) == games_of(whole)
    book = {tuple(line) for line in load_book(load_selfplay_config(None, args))}
    assert any(g[:n] in book for g in games_of(whole) for n in range(4, 9))  # some games open from the book


def test_a_folder_from_before_the_jitter_keys_resumes_only_without_jitter(tmp_path: Path, stockfish_path: str) -> None:
    base = [f"out={tmp_path}", "games=2", "workers=1", "nodes=8", f"stockfish={stockfish_path}"]
    run_selfplay(load_selfplay_config(None, base), progress_bar=False)
    cfg_file = tmp_path / "selfplay_config.yaml"
    old = "\n".join(
        line for line in cfg_file.read_text().splitlines() if not line.startswith(("nodes_jitter", "book"))
    )  # as an earlier version wrote it
    cfg_file.write_text(old + "\n")
    run_selfplay(load_selfplay_config(None, [*base, "games=3"]), progress_bar=False)
    with pytest.raises(SelfPlayError, match=r"nodes_jitter: 0.0 -> 0.2"):
        run_selfplay(load_selfplay_config(None, [*base, "games=4", "nodes_jitter=0.2"]), progress_bar=False)
    cfg_file.write_text(old + "\n")  # written before jitter_per_move too: it resumes as False only
    with pytest.raises(SelfPlayError, match=r"jitter_per_move: False -> True"):
        run_selfplay(
            load_selfplay_config(None, [*base, "games=4", "nodes_jitter=0.2", "jitter_per_move=true"]),
            progress_bar=False,
        )
    cfg_file.write_text(old + "\n")  # and before the mistakes: it resumes without them only
    with pytest.raises(SelfPlayError, match=r"mistake_rate: 0.0 -> 0.05"):
        run_selfplay(load_selfplay_config(None, [*base, "games=4", "mistake_rate=0.05"]), progress_bar=False)


def test_sigterm_keeps_finished_chunks_and_writes_the_manifest(tmp_path: Path, stockfish_path: str) -> None:
    out = tmp_path / "sp"
    cmd = [
        sys.executable, "-m", "engine.cli", "dataset", "selfplay", "--out", str(out), "--games", "400",
        "--workers", "1", "chunk_games=2", "nodes=40", f"stockfish={stockfish_path}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("games-*.parquet")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    manifest = json.loads((out / "manifest.json").read_text())
    chunks = sorted(out.glob("games-*.parquet"))
    assert manifest["complete"] is False
    assert 1 <= len(chunks) < 200
    assert 1 <= manifest["games_written"] == len(games_of(out)) <= 2 * len(chunks)  # over-long games are dropped
