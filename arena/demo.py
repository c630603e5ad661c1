"""``mistral-chess demo``: one short game, the project's engine against Stockfish.

The engine runs the bundled model when one is installed; otherwise a tiny
random-weight Mistral (made once in the user's cache folder), which plays legal but
aimless moves: the demo shows the plumbing (prompt, model, move choice, UCI, the
referee), not chess strength. Stockfish plays at the lowest ``UCI_Elo`` it accepts.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import chess

from arena.engines import parse_engine
from arena.gamelog import PgnWriter, pgn_text
from arena.match import PlaySettings, Runner
from arena.openings import Opening
from arena.referee import GameRecord, GameTask, MoveRecord, read_notes

DEMO_FOLDER = "tiny-demo"
LOWEST_ELO = 1320  # clamped up to what the installed Stockfish accepts


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mistral-chess"


def demo_model(explicit: str | None) -> tuple[str, bool]:
    """(model folder, is it a random-weight model)."""
    if explicit:
        return explicit, False
    from engine.model import bundled_model_dir

    bundled = bundled_model_dir()
    if bundled is not None and (Path(bundled) / "config.json").is_file():
        return str(bundled), False
    folder = cache_dir() / DEMO_FOLDER
    if not (folder / "config.json").is_file():
        print(f"making a tiny random-weight model in {folder} (once) ...", flush=True)
        from engine.tiny import make_tiny_mistral

        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make_tiny_mistral(tmp, seed=0)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    return str(folder), True


def run_demo(
    *, model: str | None = None, max_plies: int = 40, stockfish: str | None = None, pgn: str | None = None
) -> int:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level} {message}")
    started = time.monotonic()
    folder, random_weights = demo_model(model)
    if random_weights:
        print(
            "PLUMBING DEMO: the engine runs a tiny RANDOM-WEIGHT model (no chess knowledge). It shows the "
            "whole path (PGN prompt -> language model -> legal move -> UCI -> referee), not playing strength."
        )
    engine = parse_engine([f"mistral:{folder}", "name=mistral-chess", "tc=60+1"])
    sf = parse_engine([f"stockfish:{LOWEST_ELO}", "tc=inf", "movetime=100"], stockfish_path=stockfish)
    print(f"White: mistral-chess ({folder})")
    print(f"Black: {sf.name} (UCI_Limitstrength, 100 ms per move)" + (f"; {sf.notes[0]}" if sf.notes else ""))
    print(f"At most {max_plies} plies, then the game is adjudicated a draw.\n", flush=True)
    # A showcase, not a rated game: on a busy machine a 100 ms move can come late, and the
    # demo should show the game rather than a flag (rated matches keep the 50 ms margin).
    settings = PlaySettings(tc="60+1", max_plies=max_plies, concurrency=1, time_margin_ms=1000)
    start = Opening(name="", fen=chess.STARTING_FEN, moves=())
    names = [engine.name, sf.name]

    def on_move(board: chess.Board, move: chess.Move, rec: MoveRecord, who: int) -> None:
        number = f"{board.fullmove_number}." if board.turn == chess.WHITE else f"{board.fullmove_number}..."
        notes = read_notes(rec.info_strings)
        extra = f"  [fallback: {notes.fallback}]" if notes.fallback else ""
        print(f"{number:>5s} {rec.san:8s} {names[who]:18s} {rec.ms / 1000:5.2f} s{extra}", flush=True)

    runner = Runner(
        [engine, sf], settings, [start], event="mistral-chess demo", on_move=on_move, show_progress=False
    )
    result = runner.run([GameTask(index=0, white=0, black=1, opening=0, pair=0)], [])
    if not result.records:
        print("demo interrupted", file=sys.stderr)
        return 130
    record: GameRecord = result.records[0]
    print(f"\n{record.result}: {record.reason}\n")
    print(pgn_text(record, event="mistral-chess demo").strip())
    if pgn:
        PgnWriter(Path(pgn), event="mistral-chess demo").rewrite([record])
        print(f"\nPGN written to {pgn}")
    print(
        f"\n(demo took {time.monotonic() - started:.1f} s"
        + ("; random-weight model: expect nonsense moves" if random_weights else "")
        + ")"
    )
    return 0
