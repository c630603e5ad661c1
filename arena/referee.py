"""The referee: plays one game between two engine processes and judges it.

The referee keeps the clocks, checks every move with python-chess, ends the game by
the rules (mate, stalemate, insufficient material, threefold repetition and the
fifty-move rule claimed at once), by resignation (the project's engine says
``info string resign: ...``), or by adjudication (a draw after ``max_plies``). An
engine that sends an illegal or garbled move, lets its flag fall, crashes or stops
answering loses the game, and the record says which and why.

It also reads the project's engine's ``info string`` notes (fallback moves, raw model
outputs that were not a legal move, repaired outputs, errors) into per-move notes,
so the match report can count them.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import re
import threading
from collections.abc import Callable
from typing import Any

import chess

from arena.clock import Clock, TimeControl
from arena.errors import EngineFault
from arena.openings import Opening
from arena.uci_process import GoResult, UciProcess

# Termination codes (the record's ``termination``) and the PGN Termination tag for each.
RULE_ENDINGS = {
    chess.Termination.CHECKMATE: "checkmate",
    chess.Termination.STALEMATE: "stalemate",
    chess.Termination.INSUFFICIENT_MATERIAL: "insufficient material",
    chess.Termination.SEVENTYFIVE_MOVES: "seventyfive-move rule",
    chess.Termination.FIVEFOLD_REPETITION: "fivefold repetition",
    chess.Termination.FIFTY_MOVES: "fifty-move rule",
    chess.Termination.THREEFOLD_REPETITION: "threefold repetition",
}
PGN_TERMINATION = {
    "resignation": "normal",
    "max plies": "adjudication",
    "illegal move": "rules infraction",
    "time forfeit": "time forfeit",
    "crash": "abandoned",
    "stall": "abandoned",
}
FAULTS = ("illegal move", "time forfeit", "crash", "stall")


@dataclasses.dataclass(frozen=True)
class GameTask:
    """One scheduled game: who plays White and Black, from which opening."""

    index: int  # 0-based game number in the match (PGN Round = index + 1)
    white: int  # engine indices into the match's engine list
    black: int
    opening: int  # index into the opening suite
    pair: int  # the two games of an opening pair share it (pentanomial statistics)


@dataclasses.dataclass
class Rules:
    """How games are played and judged."""

    white_tc: TimeControl
    black_tc: TimeControl
    max_plies: int = 0  # game plies after the opening; 0: no limit
    time_margin_ms: int = 50  # allowed overrun before a flag falls (pipe and scheduler delays)
    stall_timeout_s: float = 60.0  # without a time limit: the longest wait for a bestmove
    stop_grace_s: float = 1.0  # after a flag: wait this long for bestmove after `stop`
    ready_timeout_s: float = 15.0  # ucinewgame/isready before each game
    honour_resign: bool = True  # end the game when the engine says `info string resign`
    event: str = "mistral-chess arena"


@dataclasses.dataclass
class MoveNotes:
    """What an engine's ``info string`` lines said about one move."""

    fallback: str | None = None  # the reason, when the move was a fallback
    invalid_outputs: list[str] = dataclasses.field(default_factory=list)
    repaired: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    resign: bool = False
    guard: bool = False  # the tactical guard played another move than the model's first choice


_RAW_LIST_RE = re.compile(r"(?:raw output|invalid before:) (\[.*\])\s*$")


def read_notes(info_strings: list[str]) -> MoveNotes:
    """Parse the project's engine's ``info string`` notes of one move (other engines: ignored)."""
    notes = MoveNotes()
    for text in info_strings:
        if text.startswith("fallback"):
            if notes.fallback is None:
                notes.fallback = text.split(":", 1)[1].strip() if ":" in text else text
        elif text.startswith("repaired model output"):
            notes.repaired += 1
        elif text.startswith("ERROR"):
            notes.errors.append(text)
        elif text.startswith("resign:"):
            notes.resign = True
        elif text.startswith("guard: "):
            notes.guard = True
        if text.startswith(("fallback", "legal move on try")):
            m = _RAW_LIST_RE.search(text)
            if m:
                try:
                    raws = ast.literal_eval(m.group(1))
                except (ValueError, SyntaxError):
                    raws = [m.group(1)]
                if isinstance(raws, list):
                    notes.invalid_outputs.extend(str(r) for r in raws)
    return notes


@dataclasses.dataclass
class MoveRecord:
    uci: str
    san: str
    ms: float
    score: str | None = None  # "+0.35", "#3", from the engine's last `info ... score`
    info_strings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class GameRecord:
    """A finished game: everything the PGN, the report and a resumed match need."""

    index: int
    pair: int
    opening: int
    opening_name: str
    white: str
    black: str
    white_engine: int
    black_engine: int
    start_fen: str
    opening_moves: list[str]
    moves: list[MoveRecord]
    result: str  # 1-0, 0-1, 1/2-1/2
    termination: str  # a code: checkmate, max plies, illegal move, time forfeit, crash, stall, ...
    reason: str  # for people: "Black (X) makes an illegal move: 'e2e5'"
    loser: int | None = None  # engine index of the side at fault / that lost, when decided
    time_control: str = ""  # described in words
    tc_tag: str = "-"  # the PGN TimeControl tag
    started: str = ""
    ended: str = ""

    def score_of(self, engine: int) -> float:
        """1, 0.5 or 0 for ``engine`` (one of this game's two)."""
        if self.result == "1/2-1/2":
            return 0.5
        white_won = self.result == "1-0"
        return 1.0 if (engine == self.white_engine) == white_won else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GameRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["moves"] = [MoveRecord(**m) for m in values.get("moves", [])]
        return cls(**values)


MoveCallback = Callable[[chess.Board, chess.Move, MoveRecord, int], None]


class GameAborted(Exception):
    """The match was stopped (Ctrl-C) during this game: it is not recorded."""


def _score_text(info: list[str]) -> str | None:
    for line in reversed(info):
        words = line.split()
        if "score" not in words or line.startswith("info string"):
            continue
        i = words.index("score")
        if i + 2 >= len(words):
            continue
        kind, value = words[i + 1], words[i + 2]
        try:
            n = int(value)
        except ValueError:
            continue
        if kind == "cp":
            return f"{n / 100:+.2f}"
        if kind == "mate":
            return f"#{n}"
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def play_game(
    task: GameTask,
    names: list[str],
    white: UciProcess,
    black: UciProcess,
    opening: Opening,
    rules: Rules,
    stop: threading.Event,
    *,
    on_move: MoveCallback | None = None,
) -> GameRecord:
    """Play ``task`` to the end; raises :class:`GameAborted` when ``stop`` is set."""
    board = opening.board()
    engines = {chess.WHITE: white, chess.BLACK: black}
    index_of = {chess.WHITE: task.white, chess.BLACK: task.black}
    clock = Clock(rules.white_tc, rules.black_tc)
    record = GameRecord(
        index=task.index,
        pair=task.pair,
        opening=task.opening,
        opening_name=opening.name,
        white=names[task.white],
        black=names[task.black],
        white_engine=task.white,
        black_engine=task.black,
        start_fen=opening.fen,
        opening_moves=[m.uci() for m in opening.moves],
        moves=[],
        result="*",
        termination="",
        reason="",
        time_control=rules.white_tc.describe()
        if rules.white_tc == rules.black_tc
        else f"White {rules.white_tc.describe()}; Black {rules.black_tc.describe()}",
        tc_tag=rules.white_tc.pgn_tag() if rules.white_tc == rules.black_tc else "?",
        started=_now(),
    )
    side_name = {c: f"{'White' if c else 'Black'} ({names[index_of[c]]})" for c in (chess.WHITE, chess.BLACK)}

    def finish(result: str, termination: str, reason: str, loser: chess.Color | None) -> GameRecord:
        record.result = result
        record.termination = termination
        record.reason = reason
        record.loser = index_of[loser] if loser is not None else None
        record.ended = _now()
        return record

    def lose(color: chess.Color, termination: str, reason: str) -> GameRecord:
        if stop.is_set() and termination in FAULTS:
            raise GameAborted  # the fault may be our own doing (engines killed at Ctrl-C)
        result = "0-1" if color == chess.WHITE else "1-0"
        return finish(result, termination, f"{side_name[color]} {reason}", color)

    for color in (chess.WHITE, chess.BLACK):
        try:
            engines[color].new_game(rules.ready_timeout_s)
        except EngineFault as exc:
            engines[color].broken = True
            return lose(
                color, exc.kind, f"{'crashes' if exc.kind == 'crash' else 'stalls'} before the game: {exc}"
            )

    root_fen = board.root().fen()
    position_head = "position startpos" if root_fen == chess.STARTING_FEN else f"position fen {root_fen}"
    game_plies = 0
    while True:
        if stop.is_set():
            raise GameAborted
        outcome = board.outcome(claim_draw=True)
        if outcome is not None:
            code = RULE_ENDINGS.get(outcome.termination, outcome.termination.name.lower())
            loser = None if outcome.winner is None else (not outcome.winner)
            text = code if loser is None else f"{side_name[not loser]} wins by {code}"
            return finish(outcome.result(), code, text, loser)
        if rules.max_plies and game_plies >= rules.max_plies:
            return finish(
                "1/2-1/2", "max plies", f"draw by adjudication after {game_plies} plies (max plies)", None
            )

        color = board.turn
        proc = engines[color]
        moves_text = " ".join(m.uci() for m in board.move_stack)
        position = position_head + (f" moves {moves_text}" if moves_text else "")
        allowance = clock.allowance_ms(color)
        deadline = None if allowance is None else allowance + rules.time_margin_ms
        try:
            res: GoResult | None = proc.go(
                position, clock.go_command(color), deadline, stall_timeout=rules.stall_timeout_s
            )
        except EngineFault as exc:
            proc.broken = True
            if exc.kind == "crash":
                return lose(color, "crash", f"crashes (disconnects): {exc}")
            proc.kill()
            return lose(color, "stall", f"stalls: {exc}")
        assert res is not None
        if res.bestmove is None:
            try:
                late = proc.stop_search(rules.stop_grace_s)
            except EngineFault as exc:  # it died while we waited for the late move
                proc.broken = True
                return lose(color, "crash", f"crashes (disconnects) after its flag fell: {exc}")
            if late is None:
                proc.broken = True
                proc.kill()
                return lose(
                    color,
                    "stall",
                    f"stalls: no bestmove within {deadline:.0f} ms of its clock, nor {rules.stop_grace_s:g} s after 'stop'",
                )
            return lose(
                color,
                "time forfeit",
                f"loses on time: no bestmove within {deadline:.0f} ms ({allowance:.0f} ms left on its clock)",
            )
        if allowance is not None and res.elapsed_ms > allowance + rules.time_margin_ms:
            return lose(
                color,
                "time forfeit",
                f"loses on time: {res.elapsed_ms:.0f} ms used, {allowance:.0f} ms allowed",
            )
        clock.charge(color, res.elapsed_ms)

        raw = res.bestmove
        move: chess.Move | None = None
        if raw and raw not in ("0000", "(none)"):
            try:
                move = board.parse_uci(raw)
            except ValueError:
                move = None
        if move is None:
            return lose(color, "illegal move", f"makes an illegal move: {raw!r} in {board.fen()}")

        notes = read_notes(res.info_strings)
        mrec = MoveRecord(
            uci=move.uci(),
            san=board.san(move),
            ms=round(res.elapsed_ms, 1),
            score=_score_text(res.info),
            info_strings=res.info_strings,
        )
        if notes.resign and rules.honour_resign:
            # The engine still sent a legal move (UCI has no resignation); it is not played.
            return finish(
                "0-1" if color == chess.WHITE else "1-0", "resignation", f"{side_name[color]} resigns", color
            )
        record.moves.append(mrec)
        if on_move is not None:
            on_move(board, move, mrec, index_of[color])
        board.push(move)
        game_plies += 1
