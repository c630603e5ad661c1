"""Game sources: LAION parquet files, PGN files (plain or ``.zst``) and packed games
(``.mcg``, :mod:`training.packgames`), read as a stream.

Reading is split in two so the expensive half runs in worker processes:

1. *Readers* (:func:`iter_raw_games`) run in the main process and only cut the input
   into raw records: a parquet row's ``Moves``/``Termination``/``Result`` values
   (``pyarrow.parquet.ParquetFile.iter_batches``, so a file larger than memory works),
   or one game's PGN text (a line scanner; ``.zst`` files are decompressed as a stream),
   or a packed game's bytes (the file is decompressed whole: about 10 MB a 100,000 games).
2. *Converters* (:func:`convert`) run in the workers: they decode packed games into UCI
   moves, replay the moves with python-chess into SAN, check them, and apply the filters.

A record that cannot be used is a :class:`CorruptRecord` (illegal move, unknown
result, a Termination the final position does not show, a truncated PGN game): it is
counted and reported with its file and row/game index, and the reading goes on.
Filtered games (too short, Elo too low, ...) are counted separately.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import chess
import chess.pgn

from training.config import RESULTS, SourceConfig
from training.errors import DataError

STANDARD_FEN = chess.STARTING_FEN
PARQUET_COLUMNS = ("Moves", "Termination", "Result")
PGN_SUFFIXES = (".pgn", ".pgn.zst")
PACKED_SUFFIX = ".mcg"


# -- records ---------------------------------------------------------------------------------


@dataclasses.dataclass
class RawGame:
    """One record as read, before any chess work. Exactly one of ``moves`` / ``pgn`` is set."""

    source: str  # file path
    index: int  # row (parquet) or game number (PGN), from 0
    moves: list[Any] | None = None  # LAION: the Moves cell (UCI strings)
    termination: Any = None
    result: Any = None
    pgn: str | None = None
    error: str | None = None  # the record could not even be read (a packed game that does not decode)

    @property
    def location(self) -> str:
        return f"{self.source}:{'row' if self.pgn is None else 'game'} {self.index}"


@dataclasses.dataclass
class Game:
    """A checked game: its moves (SAN) from ``root_fen``, the real result, players where known.

    ``sans`` may hold only the first plies (as many as the examples need: SAN is the
    expensive part); ``n_plies`` is the game's length. Every move was checked either way.
    """

    source: str
    index: int
    sans: list[str]
    result: str
    key: bytes  # hash of the moves: equal games share it (the split and sampling use it)
    n_plies: int = -1
    termination: str = ""
    root_fen: str = STANDARD_FEN
    white: str | None = None
    black: str | None = None
    white_elo: int | None = None
    black_elo: int | None = None
    # The moves as the source gave them in UCI, when it did (LAION ``Moves``): replaying the
    # game again (FENs of board windows) pushes these instead of parsing SAN, several times faster.
    uci: list[str] | None = None

    def __post_init__(self) -> None:
        if self.n_plies < 0:
            self.n_plies = len(self.sans)

    @property
    def location(self) -> str:
        return f"{self.source}:{self.index}"


def moves_key(root_fen: str, moves: list[str]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(root_fen.encode())
    h.update(b"\0")
    h.update(" ".join(moves).encode())
    return h.digest()


# How many plies need SAN, given (n_plies, result, key, root_fen): the example plan decides.
SanNeeded = Callable[[int, str, bytes, str], int]


@dataclasses.dataclass
class CorruptRecord:
    source: str
    index: int
    kind: str  # illegal_move | bad_result | bad_termination | truncated | unreadable | malformed
    detail: str

    @property
    def location(self) -> str:
        return f"{self.source}:{self.index}"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "index": self.index, "kind": self.kind, "detail": self.detail}


@dataclasses.dataclass
class Filtered:
    reason: str  # min_plies | result | min_elo | time_control | variant


# -- files ------------------------------------------------------------------------------------


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "laion"
    if name.endswith(PGN_SUFFIXES):
        return "pgn"
    if name.endswith(PACKED_SUFFIX):
        return "packed"
    raise DataError(
        f"{path}: cannot tell the format from the name (use .parquet, .pgn, .pgn.zst or .mcg, or set format)"
    )


def expand_source(src: SourceConfig) -> list[tuple[Path, str]]:
    """The files a source names, with their format. A missing path is an error."""
    p = Path(src.path).expanduser()
    if any(ch in src.path for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"source {src.path!r}: the pattern matches no file")
    elif p.is_dir():
        suffixes = (".parquet", *PGN_SUFFIXES, PACKED_SUFFIX)
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(suffixes))
        if not files:
            raise DataError(f"source {src.path!r}: the folder holds no .parquet, .pgn, .pgn.zst or .mcg file")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"source {src.path!r}: no such file or folder")
    out = [(f, detect_format(f, src.format)) for f in files]
    for f, fmt in out:
        if fmt != "pgn" and (src.min_elo or src.time_controls):
            raise DataError(f"source {src.path!r}: min_elo and time_controls apply to PGN files only ({f} is {fmt})")
    return out


@dataclasses.dataclass
class WorkUnit:
    """A slice of one file for a worker: parquet rows as an Arrow batch (no per-row work in
    the main process), PGN game texts, or packed games (decoded by the worker)."""

    source: str
    start: int  # index of the first game in the file
    batch: Any = None  # pyarrow.RecordBatch with the LAION columns
    pgns: list[str] | None = None
    packed: list[tuple[bytes, str | None, str]] | None = None  # (move bytes, termination, result)
    packed_version: int = 1  # training.packgames format of ``packed``

    def __len__(self) -> int:
        if self.batch is not None:
            return int(self.batch.num_rows)
        return len(self.packed) if self.packed is not None else len(self.pgns or ())

    def raw_games(self) -> Iterator[RawGame]:
        if self.packed is not None:
            from training.packgames import decode_moves

            for i, (data, term, result) in enumerate(self.packed):
                try:
                    moves: list[Any] | None = decode_moves(data, self.packed_version)
                    error = None
                except DataError as exc:
                    moves, error = None, str(exc)
                yield RawGame(self.source, self.start + i, moves=moves, termination=term, result=result, error=error)
        elif self.batch is not None:
            cols = self.batch.to_pydict()
            rows = zip(cols["Moves"], cols["Termination"], cols["Result"], strict=True)
            for i, (moves, term, result) in enumerate(rows):
                yield RawGame(self.source, self.start + i, moves=moves, termination=term, result=result)
        else:
            for i, text in enumerate(self.pgns or ()):
                yield RawGame(self.source, self.start + i, pgn=text)


def iter_units(path: Path, fmt: str, unit_games: int) -> Iterator[WorkUnit | CorruptRecord]:
    """Work units of one file, streaming. A file that breaks off is reported once and ended."""
    if fmt == "laion":
        yield from _iter_parquet(path, unit_games)
    elif fmt == "packed":
        yield from _iter_packed(path, unit_games)
    else:
        pgns: list[str] = []
        start = 0
        for item in _iter_pgn(path):
            if isinstance(item, CorruptRecord):
                if pgns:
                    yield WorkUnit(str(path), start, pgns=pgns)
                    start, pgns = start + len(pgns), []
                yield item
                continue
            pgns.append(item)
            if len(pgns) >= unit_games:
                yield WorkUnit(str(path), start, pgns=pgns)
                start, pgns = start + len(pgns), []
        if pgns:
            yield WorkUnit(str(path), start, pgns=pgns)


def _iter_parquet(path: Path, unit_games: int) -> Iterator[WorkUnit | CorruptRecord]:
    import pyarrow.parquet as pq

    source = str(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # not parquet, truncated footer, ...
        yield CorruptRecord(source, -1, "unreadable", f"not a readable parquet file: {exc}")
        return
    names = set(pf.schema_arrow.names)
    missing = [c for c in PARQUET_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a LAION chess file has {list(PARQUET_COLUMNS)}")
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=unit_games, columns=list(PARQUET_COLUMNS)):
            yield WorkUnit(source, index, batch=batch)
            index += batch.num_rows
    except Exception as exc:  # a damaged row group: keep what was read, report the rest
        yield CorruptRecord(source, index, "unreadable", f"the file breaks off after row {index - 1}: {exc}")


def _iter_packed(path: Path, unit_games: int) -> Iterator[WorkUnit | CorruptRecord]:
    from training.packgames import read_packed

    try:
        header, records = read_packed(path)
    except DataError as exc:  # not xz, no magic, cut off: the file is reported, the build goes on
        yield CorruptRecord(str(path), -1, "unreadable", str(exc))
        return
    for start in range(0, len(records), unit_games):
        yield WorkUnit(str(path), start, packed=records[start : start + unit_games], packed_version=header["version"])


def open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".zst"):
        import zstandard

        # The caller closes the text wrapper, which closes the reader and the file.
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)  # noqa: SIM115
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)
    return open(path, encoding="utf-8-sig", errors="replace", newline=None)  # noqa: SIM115 - returned to the caller


def _iter_pgn(path: Path) -> Iterator[str | CorruptRecord]:
    """Cut a PGN stream into games' texts: headers, a blank line, movetext up to a blank line.

    Braces are tracked so a blank line inside a ``{comment}`` does not end the game
    (the rule python-chess's own reader follows).
    """
    source = str(path)
    index = 0
    lines: list[str] = []
    in_movetext = False
    depth = 0
    try:
        with open_text(path) as f:
            for line in f:
                blank = not line.strip()
                if not in_movetext:
                    if blank:
                        continue  # blank lines between games / after the header block
                    if line.startswith("["):
                        lines.append(line)
                        continue
                    if line.startswith(("%", ";")):
                        continue
                    in_movetext = True
                if blank and depth <= 0:
                    yield "".join(lines)
                    index += 1
                    lines, in_movetext, depth = [], False, 0
                    continue
                depth += line.count("{") - line.count("}")
                lines.append(line)
    except Exception as exc:  # a damaged .zst stream, an unreadable file
        if lines:
            yield "".join(lines)  # the worker reports it as truncated
            index += 1
        yield CorruptRecord(source, index, "unreadable", f"the file breaks off in game {index}: {exc}")
        return
    if lines:
        yield "".join(lines)


# -- conversion (worker side) ------------------------------------------------------------------


class _MoveCache(dict):  # type: ignore[type-arg]
    """UCI string -> chess.Move: ~30 distinct strings cover most of a game's moves."""

    def __missing__(self, uci: str) -> chess.Move:
        move = chess.Move.from_uci(uci)
        self[uci] = move
        return move


_MOVES = _MoveCache()


def uci_move(uci: str) -> chess.Move:
    """A UCI string as a ``chess.Move`` (cached: a few thousand strings cover all games)."""
    return _MOVES[uci]


class IllegalMove(ValueError):
    def __init__(self, ply: int, move: str, fen: str, why: str) -> None:
        super().__init__(f"ply {ply + 1}: {why} {move!r} in {fen}")


def replay_uci(
    moves: list[Any], board: chess.Board | None = None, *, san_until: int | None = None
) -> tuple[list[str], chess.Board]:
    """SAN of the first ``san_until`` moves (all by default), checking every move's legality;
    raises :class:`IllegalMove`.

    The hot loop of data building. Legality is checked as pseudo-legal before the
    move plus "does not leave the own king attacked" after it (``was_into_check``),
    which together are exactly ``Board.is_legal`` but reuse the push that SAN needs.
    Moves past ``san_until`` are only checked and pushed.
    """
    board = chess.Board() if board is None else board
    sans: list[str] = []
    append = sans.append
    cache = _MOVES
    limit = len(moves) if san_until is None else min(san_until, len(moves))
    # Bound methods, looked up once: three attribute lookups per ply add up over ~10^8 plies.
    pseudo_legal, san_and_push, push, into_check = board.is_pseudo_legal, board.san_and_push, board.push, board.was_into_check
    for ply, uci in enumerate(moves):
        try:
            move = cache[uci]
        except (ValueError, TypeError):
            raise IllegalMove(ply, str(uci), board.fen(), "not a UCI move") from None
        if not pseudo_legal(move):
            raise IllegalMove(ply, uci, board.fen(), "illegal move")
        if ply < limit:
            append(san_and_push(move))
        else:
            push(move)
        if into_check():
            board.pop()
            raise IllegalMove(ply, uci, board.fen(), "illegal move (leaves the king in check)")
    return sans, board


_TERMINATION_CHECKS = {
    "CHECKMATE": lambda b: b.is_checkmate(),
    "STALEMATE": lambda b: b.is_stalemate(),
    "INSUFFICIENT_MATERIAL": lambda b: b.is_insufficient_material(),
    "SEVENTYFIVE_MOVES": lambda b: b.is_seventyfive_moves(),
    "FIVEFOLD_REPETITION": lambda b: b.is_fivefold_repetition(),
    "FIFTY_MOVES": lambda b: b.can_claim_fifty_moves(),
    "THREEFOLD_REPETITION": lambda b: b.can_claim_threefold_repetition(),
}


def check_ending(board: chess.Board, termination: str, result: str) -> str | None:
    """Why the final position contradicts Termination/Result (a truncated record), or None."""
    if not termination:
        return None
    check = _TERMINATION_CHECKS.get(termination)
    if check is None:
        return f"Termination {termination!r} is not a standard-chess python-chess Termination name"
    if not check(board):
        return f"Termination {termination} but the final position ({board.fen()}) does not show it (truncated?)"
    if termination == "CHECKMATE":
        expected = "0-1" if board.turn == chess.WHITE else "1-0"
        if result != expected:
            return f"checkmate by {'Black' if expected == '0-1' else 'White'} but Result {result}"
    elif result != "1/2-1/2":
        return f"Termination {termination} is a draw but Result {result}"
    return None


def convert(raw: RawGame, src: SourceConfig, san_needed: SanNeeded | None = None) -> Game | CorruptRecord | Filtered:
    """Check a raw record and replay it into a :class:`Game` (or say why not)."""
    if raw.pgn is not None:
        return _convert_pgn(raw, src)
    return _convert_laion(raw, src, san_needed)


def _convert_laion(raw: RawGame, src: SourceConfig, san_needed: SanNeeded | None) -> Game | CorruptRecord | Filtered:
    def bad(kind: str, detail: str) -> CorruptRecord:
        return CorruptRecord(raw.source, raw.index, kind, detail)

    if raw.error is not None:
        return bad("illegal_move", raw.error)
    result = raw.result
    if result not in RESULTS:
        return bad("bad_result", f"unknown Result {result!r}")
    if not isinstance(raw.moves, list) or not raw.moves:
        return bad("malformed", "no Moves")
    # Filters that need no chess come first: a filtered game costs no replay.
    if len(raw.moves) < src.min_plies:
        return Filtered("min_plies")
    if src.results and result not in src.results:
        return Filtered("result")
    if not all(isinstance(m, str) for m in raw.moves):
        return bad("malformed", "Moves holds a value that is not a string")
    key = moves_key(STANDARD_FEN, raw.moves)
    n = len(raw.moves)
    until = san_needed(n, result, key, STANDARD_FEN) if san_needed is not None else n
    try:
        sans, board = replay_uci(raw.moves, san_until=until)
    except IllegalMove as exc:
        return bad("illegal_move", str(exc))
    termination = raw.termination or ""
    if not isinstance(termination, str):
        return bad("bad_termination", f"Termination {termination!r} is not a string")
    why = check_ending(board, termination, result)
    if why is not None:
        return bad("bad_termination" if "not a standard" in why else "truncated", why)
    return Game(raw.source, raw.index, sans, result, key, n_plies=n, termination=termination, uci=raw.moves)


def speed_category(time_control: str) -> str:
    """Lichess's speed category of a TimeControl header value (``300+3`` -> blitz)."""
    if time_control in ("-", "", "?"):
        return "correspondence"
    base, _, inc = time_control.partition("+")
    try:
        total = int(base) + 40 * int(inc or 0)
    except ValueError:
        return "unknown"
    if total < 30:
        return "ultrabullet"
    if total < 180:
        return "bullet"
    if total < 480:
        return "blitz"
    if total < 1500:
        return "rapid"
    return "classical"


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


class _SanCollector(chess.pgn.BaseVisitor["_SanCollector"]):
    """A PGN visitor that keeps headers and the mainline's SAN, builds no game tree, and
    skips a game's movetext when its headers fail the filters."""

    def __init__(self, src: SourceConfig) -> None:
        self.src = src
        self.headers: dict[str, str] = {}
        self.sans: list[str] = []
        self.error: str | None = None
        self.error_kind = "malformed"
        self.filtered: str | None = None
        self.movetext_result: str | None = None
        self.root_fen: str | None = None

    def visit_header(self, tagname: str, tagvalue: str) -> None:
        self.headers[tagname] = tagvalue

    def end_headers(self) -> chess.pgn.SkipType | None:
        h, src = self.headers, self.src
        variant = h.get("Variant", "Standard").lower()
        if variant not in ("standard", "chess", "from position", ""):
            self.filtered = "variant"
        elif src.min_elo:
            we, be = _int_or_none(h.get("WhiteElo")), _int_or_none(h.get("BlackElo"))
            if we is None or be is None or min(we, be) < src.min_elo:
                self.filtered = "min_elo"
        if self.filtered is None and src.time_controls:
            tc = h.get("TimeControl", "-")
            if tc not in src.time_controls and speed_category(tc) not in src.time_controls:
                self.filtered = "time_control"
        if self.filtered is None and src.results and h.get("Result") not in src.results:
            self.filtered = "result"
        return chess.pgn.SKIP if self.filtered else None

    def begin_variation(self) -> chess.pgn.SkipType:
        return chess.pgn.SKIP

    def visit_board(self, board: chess.Board) -> None:
        if self.root_fen is None:
            self.root_fen = board.fen()

    def visit_move(self, board: chess.Board, move: chess.Move) -> None:
        if self.error is None:
            self.sans.append(board.san(move))

    def visit_result(self, result: str) -> None:
        self.movetext_result = result

    def handle_error(self, error: Exception) -> None:
        if self.error is None:
            illegal = isinstance(error, (chess.IllegalMoveError, chess.AmbiguousMoveError))
            self.error_kind = "illegal_move" if illegal else "malformed"
            self.error = f"ply {len(self.sans) + 1}: {error}"

    def result(self) -> _SanCollector:
        return self


def _convert_pgn(raw: RawGame, src: SourceConfig) -> Game | CorruptRecord | Filtered:
    def bad(kind: str, detail: str) -> CorruptRecord:
        return CorruptRecord(raw.source, raw.index, kind, detail)

    assert raw.pgn is not None
    try:
        v = chess.pgn.read_game(io.StringIO(raw.pgn), Visitor=lambda: _SanCollector(src))
    except Exception as exc:  # python-chess is forgiving; anything left is a malformed game
        return bad("malformed", f"unreadable PGN game: {exc}")
    if v is None:
        return bad("malformed", "no game in the text")
    if v.filtered:
        return Filtered(v.filtered)
    h = v.headers
    if v.error is not None:
        return bad(v.error_kind, v.error)
    result = h.get("Result", "")
    if result not in RESULTS:
        return bad("bad_result", f"unknown Result {result!r}")
    if v.movetext_result is None:
        return bad("truncated", f"the movetext ends without a result after {len(v.sans)} plies (truncated?)")
    if v.movetext_result != result:
        return bad("bad_result", f"Result header {result} but the movetext ends with {v.movetext_result}")
    if not v.sans:
        return bad("malformed", "no moves")
    if len(v.sans) < src.min_plies:
        return Filtered("min_plies")
    fen = v.root_fen or STANDARD_FEN
    return Game(
        raw.source,
        raw.index,
        v.sans,
        result,
        moves_key(fen, v.sans),
        termination=h.get("Termination", ""),
        root_fen=fen,
        white=h.get("White"),
        black=h.get("Black"),
        white_elo=_int_or_none(h.get("WhiteElo")),
        black_elo=_int_or_none(h.get("BlackElo")),
    )
