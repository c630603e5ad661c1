"""Fixtures of the training tests: a small self-play parquet made by the project's own
generator (Stockfish at a few nodes), corrupt records next to it, and a data set built
from both. Session-scoped: the CPU budget of the whole folder is a few minutes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Scholar's mate, as LAION stores it (UCI) -- the game whose examples are checked exactly.
SCHOLAR_UCI = ["e2e4", "e7e5", "f1c4", "b8c6", "d1h5", "g8f6", "h5f7"]
SCHOLAR_SAN = ["e4", "e5", "Bc4", "Nc6", "Qh5", "Nf6", "Qxf7#"]
# Fool's mate: Black wins.
FOOL_UCI = ["f2f3", "e7e5", "g2g4", "d8h4"]

# Records a real file could hold that cannot be used, with the kind they are counted as.
CORRUPT_ROWS = [
    (["e2e4", "e7e5", "e1e3"], "CHECKMATE", "1-0", "illegal_move"),  # the king cannot jump
    (["e2e4", "e7e5"], "CHECKMATE", "2-0", "bad_result"),  # no such result
    (SCHOLAR_UCI[:5], "CHECKMATE", "1-0", "truncated"),  # cut before the mate
    (["e2e4", "zz99"], None, "1/2-1/2", "illegal_move"),  # not a UCI move
    (["e2e4", "e7e5"], "STALEMATE", "1/2-1/2", "truncated"),  # no stalemate on the board
]


def write_laion(path: Path, rows: list[tuple[list[str], str | None, str]]) -> Path:
    table = pa.table(
        {
            "Moves": pa.array([r[0] for r in rows], type=pa.list_(pa.string())),
            "Termination": pa.array([r[1] for r in rows], type=pa.string()),
            "Result": pa.array([r[2] for r in rows], type=pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="session")
def selfplay_dir(tmp_path_factory: pytest.TempPathFactory, stockfish_path: str) -> Path:
    """24 Stockfish self-play games (LAION schema) written by `mistral-chess dataset selfplay`'s code."""
    from training.config import load_selfplay_config
    from training.selfplay import run_selfplay

    out = tmp_path_factory.mktemp("selfplay")
    cfg = load_selfplay_config(
        None,
        [f"out={out}", "games=24", "chunk_games=8", "workers=2", "nodes=16", f"stockfish={stockfish_path}", "max_plies=300"],
    )
    run_selfplay(cfg, progress_bar=False)
    return out


@pytest.fixture(scope="session")
def mixed_games_dir(tmp_path_factory: pytest.TempPathFactory, selfplay_dir: Path) -> Path:
    """The self-play chunks plus a file of two known games and the corrupt records."""
    folder = tmp_path_factory.mktemp("games")
    for f in selfplay_dir.glob("*.parquet"):
        (folder / f.name).write_bytes(f.read_bytes())
    rows = [(SCHOLAR_UCI, "CHECKMATE", "1-0"), (FOOL_UCI, "CHECKMATE", "0-1")]
    rows += [(m, t, r) for m, t, r, _ in CORRUPT_ROWS]
    write_laion(folder / "zz-known-and-corrupt.parquet", rows)
    return folder


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory: pytest.TempPathFactory, mixed_games_dir: Path) -> Path:
    """A tokenized data set with short prompts (early positions) for fast CPU training."""
    from training.config import load_dataset_config
    from training.dataset import build_dataset

    out = tmp_path_factory.mktemp("dataset") / "ds"
    cfg = load_dataset_config(
        None,
        [
            f"sources=[{{path: {mixed_games_dir}}}]",
            f"out={out}",
            "workers=2",
            "examples.max_ply=12",
            "examples.positions_per_game=6",
            "split.validation_fraction=0.15",
            "split.eval_positions_per_game=2",
            "max_length=128",
        ],
    )
    build_dataset(cfg, progress_bar=False)
    return out
