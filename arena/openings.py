"""Opening suites: the positions games start from.

The bundled suite (``arena/data/openings.pgn``) holds named opening lines of 4 to 8
plies from the standard position, each kept because Stockfish judged it balanced
(the ``Eval`` tag, White's view, in centipawns, and ``EvalDepth``). The file is
written by ``benchmarks/arena_make_openings.py``; ``mistral-chess arena openings
--evaluate`` checks it again. Openings are given as moves from the start position, so
the project's engine sees them as PGN move text, the way it was trained.

A suite may also be any PGN file (the main line of each game is one opening) or an
EPD file (one position per line; games then start from a FEN).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
from importlib import resources
from pathlib import Path

import chess
import chess.pgn

from arena.errors import OpeningsError

BUNDLED_NAME = "openings.pgn"
MIN_PLIES = 4
MAX_PLIES = 8


@dataclasses.dataclass(frozen=True)
class Opening:
    name: str
    fen: str  # the position the moves start from
    moves: tuple[chess.Move, ...]
    eco: str = ""
    eval_cp: int | None = None  # Stockfish's view of the final position, White's side

    def board(self) -> chess.Board:
        """The position after the opening, with the moves on its stack."""
        board = chess.Board(self.fen)
        for move in self.moves:
            board.push(move)
        return board

    def sans(self) -> list[str]:
        board = chess.Board(self.fen)
        out = []
        for move in self.moves:
            out.append(board.san(move))
            board.push(move)
        return out

    def key(self) -> str:
        """The final position (no clocks): two openings with one key are the same opening."""
        return self.board().epd()


def bundled_path() -> Path:
    return Path(str(resources.files("arena") / "data" / BUNDLED_NAME))


def load_openings(path: str | Path | None = None) -> list[Opening]:
    """The suite in ``path`` (PGN or EPD), or the bundled one."""
    p = Path(path) if path else bundled_path()
    if not p.is_file():
        raise OpeningsError(f"opening suite not found: {p}")
    text = p.read_text(encoding="utf-8", errors="replace")
    suffix = p.suffix.lower()
    openings = _read_epd(text, p) if suffix in (".epd", ".fen") else _read_pgn(text, p)
    if not openings:
        raise OpeningsError(f"{p}: no openings in it")
    return openings


def _read_pgn(text: str, path: Path) -> list[Opening]:
    out = []
    stream = io.StringIO(text)
    n = 0
    while True:
        game = chess.pgn.read_game(stream)
        if game is None:
            break
        n += 1
        if game.errors:
            raise OpeningsError(f"{path}: opening {n}: {game.errors[0]}")
        board = game.board()
        fen = board.fen()
        moves = tuple(game.mainline_moves())
        name = game.headers.get("Opening", "") or game.headers.get("Event", "") or f"opening {n}"
        variation = game.headers.get("Variation", "")
        if variation:
            name = f"{name}: {variation}"
        raw_eval = game.headers.get("Eval")
        try:
            eval_cp = int(raw_eval) if raw_eval not in (None, "", "?") else None
        except ValueError:
            raise OpeningsError(
                f"{path}: opening {n} ({name}): Eval {raw_eval!r} is not an integer (centipawns)"
            ) from None
        out.append(Opening(name=name, fen=fen, moves=moves, eco=game.headers.get("ECO", ""), eval_cp=eval_cp))
    return out


def _read_epd(text: str, path: Path) -> list[Opening]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        board = chess.Board()
        try:
            ops = board.set_epd(line.strip())
        except ValueError as exc:
            raise OpeningsError(f"{path}:{lineno}: not an EPD position: {exc}") from None
        if board.status() != chess.STATUS_VALID:
            raise OpeningsError(f"{path}:{lineno}: not a legal position")
        name = str(ops.get("id") or ops.get("c0") or f"{path.name}:{lineno}")
        ce = ops.get("ce")
        eval_cp = int(ce) if isinstance(ce, (int, float)) else None
        out.append(Opening(name=name, fen=board.fen(), moves=(), eval_cp=eval_cp))
    return out


def suite_digest(openings: list[Opening]) -> str:
    """A short fingerprint of a suite: a resumed match must use the same one."""
    h = hashlib.sha256()
    for o in openings:
        h.update(o.fen.encode())
        h.update(" ".join(m.uci() for m in o.moves).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def order(openings: list[Opening], seed: int | None) -> list[int]:
    """Indices in play order: the file's order, or shuffled by ``seed``."""
    idx = list(range(len(openings)))
    if seed is not None:
        random.Random(seed).shuffle(idx)
    return idx


def check_suite(
    openings: list[Opening], *, min_plies: int = MIN_PLIES, max_plies: int = MAX_PLIES
) -> list[str]:
    """Problems with a suite meant as the bundled one (empty: fine)."""
    problems = []
    seen: dict[str, str] = {}
    for o in openings:
        if not min_plies <= len(o.moves) <= max_plies:
            problems.append(f"{o.name}: {len(o.moves)} plies (want {min_plies}..{max_plies})")
        board = o.board()
        if board.is_game_over():
            problems.append(f"{o.name}: the game is already over")
        key = o.key()
        if key in seen:
            problems.append(f"{o.name}: same position as {seen[key]}")
        seen[key] = o.name
    return problems


def evaluate(openings: list[Opening], stockfish: str, *, depth: int = 18, threads: int = 1) -> list[int]:
    """Stockfish's evaluation (centipawns, White's view) of each opening's final position."""
    import chess.engine

    scores = []
    with chess.engine.SimpleEngine.popen_uci(stockfish) as sf:
        sf.configure({"Threads": threads, "Hash": 64})
        for o in openings:
            info = sf.analyse(o.board(), chess.engine.Limit(depth=depth), game=object())
            pov = info["score"].white()
            scores.append(int(pov.score(mate_score=10000) or 0))
    return scores


def write_pgn(
    openings: list[Opening], path: str | Path, *, depth: int | None = None, header: str = ""
) -> None:
    """Write a suite as PGN (one game per opening, result ``*``)."""
    chunks = []
    if header:
        chunks.append("".join(f"; {line}\n" if line else ";\n" for line in header.splitlines()))
    for o in openings:
        game = chess.pgn.Game()
        game.headers.clear()
        game.headers["Event"] = "mistral-chess opening suite"
        game.headers["Opening"] = o.name
        if o.eco:
            game.headers["ECO"] = o.eco
        if o.eval_cp is not None:
            game.headers["Eval"] = str(o.eval_cp)
        if depth is not None:
            game.headers["EvalDepth"] = str(depth)
        game.headers["Result"] = "*"
        if o.fen != chess.STARTING_FEN:
            game.setup(chess.Board(o.fen))
        node: chess.pgn.GameNode = game
        for move in o.moves:
            node = node.add_variation(move)
        chunks.append(str(game) + "\n\n")
    Path(path).write_text("".join(chunks), encoding="utf-8")
