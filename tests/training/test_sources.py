"""Game sources: replay of UCI moves into SAN, corrupt records, PGN reading and filters."""

from __future__ import annotations

from pathlib import Path

import chess
import pytest
import zstandard

from tests.training.conftest import CORRUPT_ROWS, SCHOLAR_SAN, SCHOLAR_UCI, write_laion
from training.config import SourceConfig
from training.errors import DataError
from training.sources import (
    CorruptRecord,
    Filtered,
    Game,
    IllegalMove,
    RawGame,
    check_ending,
    convert,
    expand_source,
    iter_units,
    replay_uci,
    speed_category,
)


def test_replay_writes_python_chess_san() -> None:
    sans, board = replay_uci(SCHOLAR_UCI)
    assert sans == SCHOLAR_SAN
    assert board.is_checkmate()


@pytest.mark.parametrize(
    ("fen", "moves", "expected"),
    [
        # promotion with check: the pawn takes on b8 and promotes to a queen
        ("1n2k3/P7/8/8/8/8/8/4K3 w - - 0 1", ["a7b8q"], ["axb8=Q+"]),
        # en passant: the d5 pawn takes e6 right after e7-e5
        ("4k3/4p3/8/3P4/8/8/8/4K3 b - - 0 1", ["e7e5", "d5e6"], ["e5", "dxe6"]),
        # castling both ways, written in UCI as the king's two-square move
        ("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1", ["e1g1", "e8c8"], ["O-O", "O-O-O"]),
        # two knights can reach d2: SAN names the file
        ("4k3/8/8/8/8/8/8/1N2KN2 w - - 0 1", ["b1d2"], ["Nbd2"]),
    ],
)
def test_replay_special_moves(fen: str, moves: list[str], expected: list[str]) -> None:
    sans, _ = replay_uci(moves, chess.Board(fen))
    assert sans == expected


@pytest.mark.parametrize(
    ("fen", "move"),
    [
        # the e2 bishop is pinned against the king by the e8 rook
        ("4r1k1/8/8/8/8/8/4B3/4K3 w - - 0 1", "e2d3"),
        # castling through the f1 square attacked by the f8 rook
        ("5rk1/8/8/8/8/8/8/4K2R w K - 0 1", "e1g1"),
        # the king steps next to the other king
        ("8/8/8/3k4/8/3K4/8/8 w - - 0 1", "d3d4"),
    ],
)
def test_replay_rejects_illegal_moves(fen: str, move: str) -> None:
    with pytest.raises(IllegalMove, match="illegal"):
        replay_uci([move], chess.Board(fen))


def test_san_until_still_checks_every_move() -> None:
    sans, board = replay_uci(SCHOLAR_UCI, san_until=3)
    assert sans == SCHOLAR_SAN[:3]
    assert board.is_checkmate()
    with pytest.raises(IllegalMove, match="ply 7"):
        replay_uci(SCHOLAR_UCI[:6] + ["h5h8"], san_until=2)


def test_check_ending() -> None:
    _, mated = replay_uci(SCHOLAR_UCI)
    assert check_ending(mated, "CHECKMATE", "1-0") is None
    assert "Result 0-1" in (check_ending(mated, "CHECKMATE", "0-1") or "")
    _, open_board = replay_uci(SCHOLAR_UCI[:5])
    assert "truncated" in (check_ending(open_board, "CHECKMATE", "1-0") or "")
    assert "not a standard-chess" in (check_ending(open_board, "KING_OF_THE_HILL", "1-0") or "")
    assert check_ending(open_board, "", "1-0") is None  # no Termination: nothing to check


def test_laion_file_counts_and_locates_corrupt_records(tmp_path: Path) -> None:
    rows = [(SCHOLAR_UCI, "CHECKMATE", "1-0")] + [(m, t, r) for m, t, r, _ in CORRUPT_ROWS]
    path = write_laion(tmp_path / "games.parquet", rows)
    src = SourceConfig(path=str(path))
    units = list(iter_units(path, "laion", unit_games=2))
    assert [len(u) for u in units if not isinstance(u, CorruptRecord)] == [2, 2, 2]
    results = [convert(raw, src) for u in units if not isinstance(u, CorruptRecord) for raw in u.raw_games()]
    good = results[0]
    assert isinstance(good, Game) and good.sans == SCHOLAR_SAN and good.location == f"{path}:0"
    bad = results[1:]
    assert all(isinstance(b, CorruptRecord) for b in bad)
    assert [b.kind for b in bad if isinstance(b, CorruptRecord)] == [kind for *_, kind in CORRUPT_ROWS]
    assert [b.index for b in bad if isinstance(b, CorruptRecord)] == [1, 2, 3, 4, 5]
    first = bad[0]
    assert isinstance(first, CorruptRecord) and "e1e3" in first.detail and "ply 3" in first.detail


def test_unreadable_parquet_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    items = list(iter_units(path, "laion", unit_games=4))
    assert len(items) == 1 and isinstance(items[0], CorruptRecord) and items[0].kind == "unreadable"


def test_missing_source_and_wrong_columns_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        expand_source(SourceConfig(path=str(tmp_path / "nope.parquet")))
    with pytest.raises(DataError, match="min_elo"):
        write_laion(tmp_path / "a.parquet", [(SCHOLAR_UCI, "CHECKMATE", "1-0")])
        expand_source(SourceConfig(path=str(tmp_path / "a.parquet"), min_elo=2000))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"moves": [["e2e4"]]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="missing column"):
        list(iter_units(tmp_path / "b.parquet", "laion", unit_games=4))


PGN = """[Event "Rated Blitz game"]
[White "alice"]
[Black "bob"]
[Result "1-0"]
[WhiteElo "2100"]
[BlackElo "2050"]
[TimeControl "180+2"]

1. e4 { [%clk 0:03:00]

a comment with a blank line } e5 2. Bc4 Nc6 3. Qh5 Nf6?? 4. Qxf7# 1-0

[Event "Rated Bullet game"]
[White "carol"]
[Black "dave"]
[Result "0-1"]
[WhiteElo "2300"]
[BlackElo "2250"]
[TimeControl "60+0"]

1. f3 e5 2. g4 Qh4# 0-1

[Event "Low rated"]
[Result "1-0"]
[WhiteElo "1200"]
[BlackElo "2200"]
[TimeControl "600+0"]

1. e4 e5 2. Bc4 Nc6 3. Qh5 Nf6 4. Qxf7# 1-0

[Event "Illegal"]
[Result "1/2-1/2"]
[WhiteElo "2400"]
[BlackElo "2400"]
[TimeControl "600+0"]

1. e4 e5 2. Ke3 1/2-1/2

[Event "Unfinished"]
[Result "*"]
[WhiteElo "2400"]
[BlackElo "2400"]
[TimeControl "600+0"]

1. d4 d5 *

[Event "Cut off"]
[Result "1-0"]
[WhiteElo "2400"]
[BlackElo "2400"]
[TimeControl "600+0"]

1. d4 d5 2. c4
"""


def _pgn_results(path: Path, src: SourceConfig) -> list[Game | CorruptRecord | Filtered]:
    out: list[Game | CorruptRecord | Filtered] = []
    for unit in iter_units(path, "pgn", unit_games=2):
        assert not isinstance(unit, CorruptRecord)
        out.extend(convert(raw, src) for raw in unit.raw_games())
    return out


@pytest.mark.parametrize("compressed", [False, True])
def test_pgn_reader_filters_and_corrupt_games(tmp_path: Path, compressed: bool) -> None:
    if compressed:
        path = tmp_path / "games.pgn.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(PGN.encode()))
    else:
        path = tmp_path / "games.pgn"
        path.write_text(PGN)
    src = SourceConfig(path=str(path), min_elo=2000)
    res = _pgn_results(path, src)
    assert len(res) == 6
    first = res[0]
    assert isinstance(first, Game)
    assert first.sans == SCHOLAR_SAN and first.result == "1-0"
    assert (first.white, first.black, first.white_elo, first.black_elo) == ("alice", "bob", 2100, 2050)
    assert isinstance(res[1], Game) and res[1].sans == ["f3", "e5", "g4", "Qh4#"]
    assert isinstance(res[2], Filtered) and res[2].reason == "min_elo"
    kinds = [(r.kind, r.index) for r in res[3:] if isinstance(r, CorruptRecord)]
    assert kinds == [("illegal_move", 3), ("bad_result", 4), ("truncated", 5)]

    blitz_only = _pgn_results(path, SourceConfig(path=str(path), time_controls=["blitz"]))
    assert isinstance(blitz_only[0], Game)
    assert isinstance(blitz_only[1], Filtered) and blitz_only[1].reason == "time_control"
    black_wins = _pgn_results(path, SourceConfig(path=str(path), results=["0-1"], min_plies=4))
    assert [type(r).__name__ for r in black_wins[:2]] == ["Filtered", "Game"]


def test_pgn_with_fen_start(tmp_path: Path) -> None:
    pgn = '[Result "1-0"]\n[SetUp "1"]\n[FEN "4k3/8/4K3/8/8/8/8/R7 w - - 0 1"]\n\n1. Ra8# 1-0\n'
    path = tmp_path / "fen.pgn"
    path.write_text(pgn)
    (game,) = _pgn_results(path, SourceConfig(path=str(path)))
    assert isinstance(game, Game)
    assert game.sans == ["Ra8#"] and game.root_fen == "4k3/8/4K3/8/8/8/8/R7 w - - 0 1"


def test_speed_categories() -> None:
    assert [speed_category(tc) for tc in ("15+0", "60+1", "180+2", "600+5", "1800+20", "-")] == [
        "ultrabullet", "bullet", "blitz", "rapid", "classical", "correspondence",
    ]  # fmt: skip


def test_raw_laion_record_with_null_moves() -> None:
    got = convert(RawGame("x.parquet", 7, moves=None, termination="CHECKMATE", result="1-0"), SourceConfig(path="x"))
    assert isinstance(got, CorruptRecord) and got.kind == "malformed" and got.location == "x.parquet:7"
