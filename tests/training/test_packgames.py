"""Packed games (training/packgames.py): a byte a move, the games back exactly, corrupt files refused."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from training.errors import DataError
from training.packgames import (
    MAGIC,
    MAGIC2,
    decode_moves,
    encode_moves,
    encode_pieces,
    game_key,
    pack_games,
    read_packed,
    seen_games,
    unpack_games,
)

from .conftest import CORRUPT_ROWS, SCHOLAR_UCI


def rows(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_a_game_round_trips_a_byte_a_move() -> None:
    data = encode_moves(SCHOLAR_UCI + [])
    assert len(data) == len(SCHOLAR_UCI)
    assert decode_moves(data) == SCHOLAR_UCI
    promo = ["e2e4", "d7d5", "e4d5", "g8f6", "d5d6", "f6e4", "d6c7", "e4f2", "c7b8q"]
    assert decode_moves(encode_moves(promo)) == promo
    with pytest.raises(DataError, match="ply 3: 'e1e3' is not a legal move"):
        encode_moves(["e2e4", "e7e5", "e1e3"])
    with pytest.raises(DataError, match="index 200 but the position has 20 legal moves"):
        decode_moves(bytes([200]))


# Castling on both sides (White O-O, Black O-O-O), en passant (e5xd6) and captures.
SPECIAL_UCI = ["e2e4", "g8f6", "e4e5", "d7d5", "e5d6", "e7d6", "g1f3", "f8e7", "f1e2", "b8c6", "e1g1", "c8e6",
               "b1c3", "d8d7", "d2d3", "e8c8"]  # fmt: skip


def random_game(seed: int) -> list[str]:
    """A game of random legal moves (chosen from the UCI-sorted list: the same on any version)."""
    import random

    import chess

    rng, board, moves = random.Random(seed), chess.Board(), []
    while not board.is_game_over() and len(moves) < 600:
        move = rng.choice(sorted(board.legal_moves, key=lambda m: m.uci()))
        moves.append(move.uci())
        board.push(move)
    return moves


def test_both_formats_round_trip() -> None:
    promoting = random_game(25)  # 291 plies with all four promotions and an en passant capture
    assert {u[4] for u in promoting if len(u) == 5} == {"q", "r", "b", "n"}
    for moves in (SCHOLAR_UCI, SPECIAL_UCI, promoting):
        assert decode_moves(encode_moves(moves)) == moves
        data = encode_pieces(moves)
        assert len(data) == 2 * len(moves)
        assert decode_moves(data, 2) == moves


def test_version_2_refuses_what_it_cannot_decode() -> None:
    with pytest.raises(DataError, match="ply 3: 'e1e3' is not a legal move"):
        encode_pieces(["e2e4", "e7e5", "e1e3"])
    with pytest.raises(DataError, match="piece 16 but the side to move has 16 pieces"):
        decode_moves(bytes([16, 0]), 2)
    with pytest.raises(DataError, match="destination 5 of 2"):
        decode_moves(bytes([1, 5]), 2)  # the b1 knight (second white piece) reaches a3 and c3 only
    with pytest.raises(DataError, match="two bytes a ply"):
        decode_moves(bytes([1]), 2)
    with pytest.raises(DataError, match="destination 0 of 0"):
        decode_moves(bytes([4, 0]), 2)  # the king (fifth white piece, e1) has nowhere to go
    # A pseudo-legal move that leaves the king in check: 1. e4 d5 2. Ke2 dxe4 3. Kd3?? is
    # pseudo-legal for the king yet illegal (the e4 pawn attacks d3).
    moves = ["e2e4", "d7d5", "e1e2", "d5e4"]
    data = encode_pieces(moves)
    import chess

    board = chess.Board()
    for uci in moves:
        board.push_uci(uci)
    king = sorted(chess.scan_forward(board.occupied_co[chess.WHITE])).index(chess.E2)
    dests = sorted({m.to_square for m in board.generate_pseudo_legal_moves(from_mask=chess.BB_E2)})
    with pytest.raises(DataError, match="ply 5: e2d3 is not a legal move"):
        decode_moves(data + bytes([king, dests.index(chess.D3)]), 2)


@pytest.mark.parametrize("version", [1, 2])
def test_pack_and_unpack_give_the_games_back(mixed_games_dir: Path, tmp_path: Path, version: int) -> None:
    packed = tmp_path / "games.mcg"
    info = pack_games([mixed_games_dir], packed, version=version)
    assert lzma.decompress(packed.read_bytes()).startswith(MAGIC if version == 1 else MAGIC2)
    assert read_packed(packed)[0]["version"] == version
    source = rows(mixed_games_dir)
    illegal = sum(1 for *_, kind in CORRUPT_ROWS if kind == "illegal_move")
    assert info["skipped"] == illegal and "not a legal move" in info["skipped_first"][0]
    assert info["games"] == len(source) - illegal
    assert info["bytes"] < info["source_bytes"]
    out = unpack_games(packed, tmp_path / "back", chunk_games=10, workers=2)
    assert out["games"] == info["games"] and out["chunks"] == -(-info["games"] // 10)
    kept = [r for r in source if not any(r["Moves"] == m for m, *_ , kind in CORRUPT_ROWS if kind == "illegal_move")]
    assert rows(tmp_path / "back") == kept, "moves, termination (None too) and result as they were, in order"


def test_a_version_1_file_is_repacked_as_version_2(mixed_games_dir: Path, tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1.mcg", tmp_path / "v2.mcg"
    first = pack_games([mixed_games_dir], v1, version=1)
    again = pack_games([v1], v2, workers=2)
    assert again["games"] == first["games"] and again["skipped"] == 0
    assert read_packed(v2)[0]["version"] == 2
    unpack_games(v1, tmp_path / "from-v1")
    unpack_games(v2, tmp_path / "from-v2")
    assert rows(tmp_path / "from-v2") == rows(tmp_path / "from-v1")


def test_corrupt_files_are_refused_clearly(mixed_games_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mcg"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match="not a packed games file"):
        read_packed(bad)
    bad.write_bytes(lzma.compress(b"PGN? no"))
    with pytest.raises(DataError, match="no b'MCGAMES1"):
        read_packed(bad)
    good = tmp_path / "good.mcg"
    pack_games([mixed_games_dir], good, version=1)
    raw = lzma.decompress(good.read_bytes())
    assert raw.startswith(MAGIC)
    bad.write_bytes(lzma.compress(raw[:-20]))
    with pytest.raises(DataError, match="truncated|corrupt"):
        read_packed(bad)
    bad.write_bytes(lzma.compress(raw + b"xx"))
    with pytest.raises(DataError, match="2 bytes after the last"):
        read_packed(bad)
    with pytest.raises(DataError, match="no such file or folder"):
        pack_games([tmp_path / "missing"], tmp_path / "x.mcg")


def test_packed_header_is_read_from_the_start_alone(mixed_games_dir: Path, tmp_path: Path) -> None:
    from training.packgames import packed_header

    good = tmp_path / "good.mcg"
    info = pack_games([mixed_games_dir], good)
    assert packed_header(good)["games"] == info["games"]
    bad = tmp_path / "bad.mcg"
    for content, why in [
        (b"not xz at all", "not a packed games file"),
        (lzma.compress(b"PGN? no, a longer text than the magic"), "no b'MCGAMES1"),
        (lzma.compress(MAGIC + b"\xff\x00\x00\x00{"), "ends inside its header"),
        (lzma.compress(MAGIC + b"\x03\x00\x00\x00{{{"), "JSONDecodeError"),
    ]:
        bad.write_bytes(content)
        with pytest.raises(DataError, match=why):
            packed_header(bad)


def test_cli_pack_unpack(selfplay_dir: Path, tmp_path: Path, python_exe: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python_exe, "-m", "training", "dataset", *args], capture_output=True, text=True, timeout=300)

    ok = cli("pack-games", str(selfplay_dir), "--out", str(tmp_path / "s.mcg"))
    assert ok.returncode == 0, ok.stderr
    ok = cli("unpack-games", str(tmp_path / "s.mcg"), "--out", str(tmp_path / "back"))
    assert ok.returncode == 0, ok.stderr
    assert rows(tmp_path / "back") == rows(selfplay_dir)
    (tmp_path / "junk.mcg").write_text("junk")
    bad = cli("unpack-games", str(tmp_path / "junk.mcg"), "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "not a packed games file" in bad.stderr and "Traceback" not in bad.stderr


def test_a_data_set_builds_from_packed_games_as_from_their_parquet(selfplay_dir: Path, tmp_path: Path) -> None:
    """`dataset build` reads .mcg files itself (no unpacking): the examples are the ones the
    parquet chunks give, row for row; only the game's location (file and index) differs."""
    from training.config import load_dataset_config
    from training.dataset import build_dataset

    packed = tmp_path / "games.mcg"
    pack_games([selfplay_dir], packed)  # version 2, the default
    packed_v1 = tmp_path / "games-v1.mcg"
    pack_games([selfplay_dir], packed_v1, version=1)
    built = {}
    for name, source in (("parquet", selfplay_dir), ("packed", packed), ("packed-v1", packed_v1)):
        cfg = load_dataset_config(
            "configs/dataset/scratch-windows.yaml",
            [f"sources=[{{path: {source}}}]", f"out={tmp_path / name}", "workers=2", "examples.positions_per_game=0",
             "split.validation_fraction=0.2", "batch_games=5"],
        )  # fmt: skip
        stats = build_dataset(cfg, progress_bar=False)
        assert stats["games"]["read"] == 24 and stats["games"]["used"] == 24
        built[name] = {split: rows_of(tmp_path / name, split) for split in ("train", "validation", "eval")}
    for split, parquet_rows in built["parquet"].items():
        assert parquet_rows, split
        strip = lambda rs: [{k: v for k, v in r.items() if k != "game"} for r in rs]  # noqa: E731
        assert strip(built["packed"][split]) == strip(parquet_rows), split
        assert strip(built["packed-v1"][split]) == strip(parquet_rows), split
    assert all(r["game"].startswith(str(packed)) for r in built["packed"]["train"])


def test_a_broken_packed_file_is_reported_and_the_build_goes_on(selfplay_dir: Path, tmp_path: Path) -> None:
    from training.config import load_dataset_config
    from training.dataset import build_dataset

    folder = tmp_path / "sets"
    folder.mkdir()
    pack_games([selfplay_dir], folder / "a-good.mcg", version=1)
    (folder / "b-broken.mcg").write_bytes(b"not xz")
    # A game whose move index is past the position's legal moves: that game alone is corrupt.
    raw = bytearray(lzma.decompress((folder / "a-good.mcg").read_bytes()))
    raw[-1] = 250  # the last ply of the last game
    (folder / "c-one-bad-game.mcg").write_bytes(lzma.compress(bytes(raw)))
    cfg = load_dataset_config(
        "configs/dataset/scratch-windows.yaml",
        [f"sources=[{{path: {folder}}}]", f"out={tmp_path / 'out'}", "workers=1", "examples.positions_per_game=1"],
    )
    stats = build_dataset(cfg, progress_bar=False)
    assert stats["games"]["used"] == 24 + 23
    assert stats["games"]["corrupt"] == {"unreadable": 1, "illegal_move": 1}
    log = (tmp_path / "out" / "corrupt.jsonl").read_text()
    assert "b-broken.mcg" in log and "not a packed games file" in log
    assert "c-one-bad-game.mcg" in log and "index 250" in log


def rows_of(folder: Path, split: str) -> list[dict]:
    return [r for f in sorted(folder.glob(f"{split}-*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_seen_games_finds_a_game_in_every_format(mixed_games_dir: Path, tmp_path: Path) -> None:
    """The games of packed files (version 2 and 1) and of parquet chunks, by their moves; a corrupt
    record is no game, and a game found in none of them is not seen."""
    games = [tuple(r["Moves"]) for r in rows(mixed_games_dir)]
    pack_games([mixed_games_dir], tmp_path / "v2.mcg")
    pack_games([mixed_games_dir], tmp_path / "v1.mcg", version=1)
    for source in (tmp_path / "v2.mcg", tmp_path / "v1.mcg", mixed_games_dir):
        seen = seen_games([source])
        assert game_key(SCHOLAR_UCI) in seen
        assert game_key(["e2e4", "e7e5", "g1f3"]) not in seen
        assert seen == {game_key(list(g)) for g in games if _encodable(g)}, source
    assert sum(not _encodable(g) for g in games) == 2  # the two records with illegal moves


def _encodable(moves: tuple[str, ...]) -> bool:
    try:
        encode_pieces(list(moves))
    except DataError:
        return False
    return True
