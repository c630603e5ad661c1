"""The game log a match resumes from, and the PGN written beside it.

Every finished game is appended to a JSON-lines log (first line: a header naming the
match: engines, time control, opening suite) and to the PGN file, flushed and synced
at once, so Ctrl-C, a crash or a power cut loses at most the games in progress. A
resumed match reads the log, checks that it describes the same match, skips the
games it holds and rewrites the PGN from it (so the two agree).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import chess
import chess.pgn

from arena.errors import GameLogError
from arena.referee import PGN_TERMINATION, RULE_ENDINGS, GameRecord

LOG_VERSION = 1


def default_log_path(json_path: str | None, pgn_path: str | None) -> Path | None:
    """``<report>.games.jsonl`` beside the JSON report, else beside the PGN."""
    for base in (json_path, pgn_path):
        if base:
            p = Path(base)
            return p.with_name(p.name + ".games.jsonl") if p.suffix == "" else p.with_suffix(".games.jsonl")
    return None


class GameLog:
    """Append-only JSONL of finished games."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(
        cls, path: Path, identity: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> tuple[GameLog, list[GameRecord]]:
        """Start a log, or (``resume``) read the games of an earlier run of the same match."""
        log = cls(path)
        if path.exists() and path.stat().st_size > 0:
            if resume:
                return log, log._read(identity)
            if not overwrite:
                raise GameLogError(
                    f"{path} holds games of an earlier match: pass --resume to continue it, "
                    "--overwrite to start over, or choose other output files"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"type": "header", "version": LOG_VERSION, "identity": identity}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return log, []

    def _read(self, identity: dict[str, Any]) -> list[GameRecord]:
        records: dict[int, GameRecord] = {}
        header: dict[str, Any] | None = None
        with self.path.open(encoding="utf-8") as f:
            lines = f.readlines()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):  # a line cut short by a kill: drop it
                    break
                raise GameLogError(f"{self.path}:{lineno}: not JSON; the log is damaged") from None
            if item.get("type") == "header":
                header = item
            elif item.get("type") == "game":
                try:
                    rec = GameRecord.from_dict(item["game"])
                except (KeyError, TypeError) as exc:
                    raise GameLogError(f"{self.path}:{lineno}: unreadable game record ({exc})") from None
                records[rec.index] = rec
        if header is None:
            raise GameLogError(f"{self.path}: no header line; not a mistral-chess arena game log")
        old = header.get("identity", {})
        diffs = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
        if diffs:
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {identity.get(k)!r}" for k in diffs[:3])
            raise GameLogError(
                f"{self.path} belongs to another match ({details}); use other output files or --overwrite"
            )
        # Rewrite compactly, without a torn last line.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for rec in sorted(records.values(), key=lambda r: r.index):
                f.write(json.dumps({"type": "game", "game": rec.to_dict()}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        return sorted(records.values(), key=lambda r: r.index)

    def append(self, record: GameRecord) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"type": "game", "game": record.to_dict()}) + "\n")
            f.flush()
            os.fsync(f.fileno())


# -- PGN -----------------------------------------------------------------------------


def game_pgn(record: GameRecord, *, event: str = "mistral-chess arena") -> chess.pgn.Game:
    """A record as a python-chess game, with clocks and scores as move comments."""
    game = chess.pgn.Game()
    game.headers["Event"] = event
    game.headers["Site"] = "?"
    game.headers["Date"] = record.started[:10].replace("-", ".") if record.started else "????.??.??"
    game.headers["Round"] = str(record.index + 1)
    game.headers["White"] = record.white
    game.headers["Black"] = record.black
    game.headers["Result"] = record.result
    board = chess.Board(record.start_fen)
    if record.start_fen != chess.STARTING_FEN:
        game.setup(board)
    if record.opening_name:
        game.headers["Opening"] = record.opening_name
    game.headers["TimeControl"] = record.tc_tag or "-"
    game.headers["Termination"] = (
        "normal"
        if record.termination in RULE_ENDINGS.values()
        else PGN_TERMINATION.get(record.termination, "unterminated")
    )
    game.headers["TerminationDetails"] = record.reason
    game.headers["PlyCount"] = str(len(record.opening_moves) + len(record.moves))
    node: chess.pgn.GameNode = game
    for i, uci in enumerate(record.opening_moves):
        move = chess.Move.from_uci(uci)
        node = node.add_variation(move)
        if i == len(record.opening_moves) - 1:
            node.comment = "book"
        board.push(move)
    for m in record.moves:
        move = chess.Move.from_uci(m.uci)
        node = node.add_variation(move)
        node.comment = " ".join(p for p in (m.score, f"{m.ms / 1000:.3f}s") if p)
        board.push(move)
    if node is not game:
        node.comment = (node.comment + " " if node.comment else "") + record.reason
    else:
        game.comment = record.reason
    return game


def pgn_text(record: GameRecord, *, event: str = "mistral-chess arena") -> str:
    exporter = chess.pgn.StringExporter(headers=True, variations=False, comments=True)
    return game_pgn(record, event=event).accept(exporter) + "\n\n"


class PgnWriter:
    """Appends each finished game to a PGN file (rewritten in full on resume)."""

    def __init__(self, path: Path, *, event: str) -> None:
        self.path = path
        self.event = event

    def check_new(self, *, resume: bool, overwrite: bool) -> None:
        if self.path.exists() and self.path.stat().st_size > 0 and not (resume or overwrite):
            raise GameLogError(
                f"{self.path} exists: pass --resume to continue that match, --overwrite to replace it, "
                "or choose another file"
            )

    def rewrite(self, records: list[GameRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        for rec in sorted(records, key=lambda r: r.index):
            buf.write(pgn_text(rec, event=self.event))
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        tmp.replace(self.path)

    def append(self, record: GameRecord) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(pgn_text(record, event=self.event))
            f.flush()
            os.fsync(f.fileno())
