"""The one place that writes the text the model reads.

A prompt is a PGN text: a header block, ``[SetUp "1"]`` and ``[FEN "..."]`` when the
game did not start from the standard position, then SAN move text with move numbers,
ending exactly where the model must write the side to move's next move::

    [Event "Rated Classical game"]
    ...
    [Result "1-0"]

    1. e4 e5 2.

The model's answer (the *completion*) is ``" " + SAN`` (``" Nf3"``). Templates (YAML,
bundled in ``engine/templates``) choose the header tags and their default values and,
for instruct models, wrap the PGN in the tokenizer's chat template.

Training builds its examples with this module (:class:`PromptBuilder`,
:func:`movetext`), so the text is the same at train and at play time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import chess

from engine.errors import PromptError

STANDARD_FEN = chess.STARTING_FEN
RESULTS = ("1-0", "0-1", "1/2-1/2", "*")


def escape_tag_value(value: str) -> str:
    """Escape a PGN tag value the way python-chess's exporter does."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def movetext(sans: Sequence[str], *, fullmove: int = 1, white_to_move: bool = True, open_end: bool = True) -> str:
    """SAN move text with move numbers.

    ``sans`` are the moves played from a position whose side to move is given by
    ``white_to_move`` at move number ``fullmove``. With ``open_end`` the text ends
    where the side to move after the last move writes its move: ``"1. e4 e5 2."``
    when White is next, ``"1. e4"`` when Black is next, and ``"12..."`` when Black is
    to move and no move was played yet. Without ``open_end`` it is plain move text
    (as python-chess exports it).
    """
    parts: list[str] = []
    number = fullmove
    white = white_to_move
    for i, san in enumerate(sans):
        if white:
            parts.append(f"{number}. {san}")
        elif i == 0:
            parts.append(f"{number}... {san}")
        else:
            parts.append(san)
        if not white:
            number += 1
        white = not white
    if open_end:
        if white:
            parts.append(f"{number}.")
        elif not sans:
            parts.append(f"{number}...")
    return " ".join(parts)


def legal_sans(board: chess.Board, moves: Sequence[chess.Move]) -> list[str]:
    """``[board.san(m) for m in moves]`` for legal ``moves`` of a standard-chess board,
    without python-chess's per-move search for ambiguous moves: the pieces of the same
    kind that reach the same square are read from ``moves`` themselves (so ``moves``
    must be all the legal moves, as the player passes them). The check and mate suffix
    is python-chess's own (push, look, pop), asked only of the moves that can give check
    at all (:func:`_may_give_check`: a few in a typical position)."""
    if board.chess960 or type(board) is not chess.Board:
        return [board.san(m) for m in moves]
    may_check = _may_give_check(board)
    reach: dict[tuple[int, int], int] = {}
    kinds = [board.piece_type_at(m.from_square) for m in moves]
    for m, kind in zip(moves, kinds, strict=True):
        if kind is not None and kind != chess.PAWN:
            key = (kind, m.to_square)
            reach[key] = reach.get(key, 0) | chess.BB_SQUARES[m.from_square]
    out = []
    for m, kind in zip(moves, kinds, strict=True):
        if kind is None:
            out.append(board.san(m))
            continue
        if kind == chess.KING and board.is_castling(m):
            san = "O-O-O" if chess.square_file(m.to_square) < chess.square_file(m.from_square) else "O-O"
        else:
            capture = board.is_capture(m)
            if kind == chess.PAWN:
                san = chess.FILE_NAMES[chess.square_file(m.from_square)] if capture else ""
            else:
                san = chess.piece_symbol(kind).upper()
                others = reach[(kind, m.to_square)] & ~chess.BB_SQUARES[m.from_square]
                if others:
                    row = column = False
                    if others & chess.BB_RANKS[chess.square_rank(m.from_square)]:
                        column = True
                    if others & chess.BB_FILES[chess.square_file(m.from_square)]:
                        row = True
                    else:
                        column = True
                    if column:
                        san += chess.FILE_NAMES[chess.square_file(m.from_square)]
                    if row:
                        san += chess.RANK_NAMES[chess.square_rank(m.from_square)]
            if capture:
                san += "x"
            san += chess.SQUARE_NAMES[m.to_square]
            if m.promotion:
                san += "=" + chess.piece_symbol(m.promotion).upper()
        if may_check(m, kind):
            board.push(m)
            try:
                if board.is_check():
                    san += "#" if board.is_checkmate() else "+"
            finally:
                board.pop()
        out.append(san)
    return out


def _may_give_check(board: chess.Board) -> Callable[[chess.Move, int], bool]:
    """A test that is true for every move of the side to move that gives check (and for
    some that do not): the moved piece attacks the enemy king from its new square, or it
    leaves a line between the king and one of its own sliders, or the move is a
    castling, an en passant capture or a promotion. Only those moves are pushed."""
    king = board.king(not board.turn)
    if king is None or board.is_attacked_by(board.turn, king):  # no king, or already in check (not a legal position)
        return lambda m, kind: True
    ours = board.occupied_co[board.turn]
    orth = (board.rooks | board.queens) & ours
    diag = (board.bishops | board.queens) & ours
    king_rank, king_file = chess.square_rank(king), chess.square_file(king)
    occupied = board.occupied
    knight_checks = chess.BB_KNIGHT_ATTACKS[king]
    pawn_checks = chess.BB_PAWN_ATTACKS[not board.turn][king]  # squares from which our pawn attacks the king

    def same_line(a: int) -> tuple[bool, bool]:
        """(orthogonal, diagonal) alignment of square ``a`` with the king."""
        if a == king or not chess.BB_RAYS[a][king]:
            return False, False
        orthogonal = chess.square_rank(a) == king_rank or chess.square_file(a) == king_file
        return orthogonal, not orthogonal

    def test(m: chess.Move, kind: int) -> bool:
        if m.promotion or kind == chess.KING and board.is_castling(m) or board.is_en_passant(m):
            return True
        to, frm = m.to_square, m.from_square
        # discovered: the square left lies between the king and one of our sliders
        o, d = same_line(frm)
        if (o and chess.BB_RAYS[frm][king] & orth) or (d and chess.BB_RAYS[frm][king] & diag):
            return True
        if kind == chess.KNIGHT:
            return bool(knight_checks & chess.BB_SQUARES[to])
        if kind == chess.PAWN:
            return bool(pawn_checks & chess.BB_SQUARES[to])
        if kind == chess.KING:
            return False
        o, d = same_line(to)
        if not ((o and kind in (chess.ROOK, chess.QUEEN)) or (d and kind in (chess.BISHOP, chess.QUEEN))):
            return False
        after = (occupied & ~chess.BB_SQUARES[frm]) | chess.BB_SQUARES[to]
        return not (chess.between(to, king) & after)

    return test


def window_start(ply: int, window: int, offset: int = 0) -> int:
    """The ply a prompt for the position after ``ply`` plies starts at, with board windows of
    ``window`` plies (0: the whole game, so ply 0) whose roots lie at plies ``offset``,
    ``offset + window``, ... of the game (and at ply 0, for the plies before ``offset``).

    The engine and the data set builder both use it, so a model trained with an offset
    (``examples.window_offset``) is prompted as it was trained (``prompt.window_offset``).
    """
    if not window:
        return 0
    if not 0 <= offset < window:
        raise PromptError(f"window offset must be in 0..{window - 1} for windows of {window} plies, not {offset}")
    if ply < offset:
        return 0
    return offset + ((ply - offset) // window) * window


def window_end(ply: int, window: int, offset: int = 0) -> int:
    """The first ply of the window after the one :func:`window_start` puts ``ply`` in (windows
    of ``window`` > 0 plies): ``offset`` for the plies before it, else that window's start + ``window``."""
    start = window_start(ply, window, offset)  # (which also checks the offset)
    return offset if ply < offset else start + window


def board_sans(board: chess.Board) -> tuple[chess.Board, list[str]]:
    """The root position of ``board`` and the SAN of every move played since."""
    root = board.root()
    replay = root.copy(stack=False)
    sans: list[str] = []
    for move in board.move_stack:
        sans.append(replay.san(move))
        replay.push(move)
    return root, sans


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A prompt template, read from YAML.

    ``headers`` maps PGN tags to values that may use ``{white}``, ``{black}``,
    ``{white_elo}``, ``{black_elo}``, ``{result}`` and any other variable the caller
    passes; a tag whose value renders empty is left out. ``user`` (instruct only)
    is the user message, with ``{pgn}`` where the PGN goes.
    """

    name: str
    kind: Literal["base", "instruct"] = "base"
    headers: tuple[tuple[str, str], ...] = ()
    user: str = "{pgn}"
    system: str | None = None
    completion_prefix: str = " "
    description: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<template>") -> PromptTemplate:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PromptError(f"{source}: unknown template key(s) {unknown} (allowed: {sorted(allowed)})")
        kind = data.get("kind", "base")
        if kind not in ("base", "instruct"):
            raise PromptError(f"{source}: kind must be 'base' or 'instruct', not {kind!r}")
        headers_raw = data.get("headers") or {}
        if not isinstance(headers_raw, Mapping):
            raise PromptError(f"{source}: headers must be a mapping of PGN tag -> value")
        headers = tuple((str(k), "" if v is None else str(v)) for k, v in headers_raw.items())
        for tag, _ in headers:
            if not tag.isidentifier():
                raise PromptError(f"{source}: {tag!r} is not a valid PGN tag name")
        user = str(data.get("user", "{pgn}"))
        if kind == "instruct" and "{pgn}" not in user:
            raise PromptError(f"{source}: an instruct template's 'user' message must contain {{pgn}}")
        return cls(
            name=str(data.get("name") or source),
            kind=kind,
            headers=headers,
            user=user,
            system=data.get("system"),
            completion_prefix=str(data.get("completion_prefix", " ")),
            description=str(data.get("description", "")),
        )

    @classmethod
    def load(cls, name_or_path: str) -> PromptTemplate:
        """A bundled template by name (``pgn-base``, ``pgn-instruct``) or a YAML file path."""
        import yaml

        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise PromptError(f"prompt template file not found: {path}")
            text = path.read_text(encoding="utf-8")
            source = str(path)
        else:
            ref = resources.files("engine") / "templates" / f"{name_or_path}.yaml"
            if not ref.is_file():
                raise PromptError(
                    f"unknown prompt template {name_or_path!r} (bundled: {', '.join(bundled_templates())};"
                    " or give a path to a .yaml file)"
                )
            text = ref.read_text(encoding="utf-8")
            source = name_or_path
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PromptError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise PromptError(f"{source}: a template must be a YAML mapping")
        return cls.from_mapping(data, source=source)

    def header_block(self, variables: Mapping[str, Any], *, fen: str | None = None) -> str:
        lines = []
        values = _Vars(variables)  # once, not per tag: data building renders millions of headers
        for tag, value in self.headers:
            try:
                rendered = value.format_map(values)
            except (KeyError, ValueError, IndexError) as exc:
                raise PromptError(f"template {self.name}: header {tag} = {value!r}: {exc}") from None
            if rendered != "":
                lines.append(f'[{tag} "{escape_tag_value(rendered)}"]')
        if fen is not None and fen != STANDARD_FEN:
            lines.append('[SetUp "1"]')
            lines.append(f'[FEN "{escape_tag_value(fen)}"]')
        return "\n".join(lines)


class _Vars(dict):  # type: ignore[type-arg]
    """format_map helper: a missing variable renders as an empty string."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        super().__init__({k: ("" if v is None else v) for k, v in data.items()})

    def __missing__(self, key: str) -> str:
        return ""


def bundled_templates() -> list[str]:
    folder = resources.files("engine") / "templates"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def own_loss_result(turn: chess.Color) -> str:
    """The result string by which the side to move would resign (``0-1`` for White)."""
    return "0-1" if turn == chess.WHITE else "1-0"


def side_wins_result(color: chess.Color) -> str:
    return "1-0" if color == chess.WHITE else "0-1"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A rendered prompt and how to tokenize it."""

    text: str
    add_special_tokens: bool
    completion_prefix: str

    def completion(self, san: str) -> str:
        return self.completion_prefix + san


class PromptBuilder:
    """Renders positions (or SAN lists) into prompts with one template.

    ``tokenizer`` is needed only for instruct templates (its chat template wraps the
    PGN). ``defaults`` fills template variables not given per call.
    """

    def __init__(self, template: PromptTemplate, tokenizer: Any = None, defaults: Mapping[str, Any] | None = None):
        self.template = template
        self.tokenizer = tokenizer
        self.defaults = dict(defaults or {})
        if template.kind == "instruct":
            if tokenizer is None:
                raise PromptError(f"template {template.name} is an instruct template and needs a tokenizer")
            if not getattr(tokenizer, "chat_template", None):
                raise PromptError(
                    f"template {template.name} wraps the PGN in the tokenizer's chat template, "
                    "but this tokenizer has none (use the pgn-base template for base models)"
                )

    def pgn(self, sans: Sequence[str], *, root_fen: str = STANDARD_FEN, variables: Mapping[str, Any] | None = None) -> str:
        """The PGN text: header block, blank line, open-ended move text."""
        vars_ = {**self.defaults, **(variables or {})}
        root = chess.Board(root_fen) if root_fen != STANDARD_FEN else None
        fullmove = root.fullmove_number if root is not None else 1
        white = root.turn == chess.WHITE if root is not None else True
        header = self.template.header_block(vars_, fen=root_fen)
        body = movetext(sans, fullmove=fullmove, white_to_move=white, open_end=True)
        return f"{header}\n\n{body}" if header else body

    def wrap(self, pgn: str) -> Prompt:
        """Turn a PGN text into the full prompt the model reads."""
        t = self.template
        if t.kind == "base":
            return Prompt(pgn, add_special_tokens=True, completion_prefix=t.completion_prefix)
        messages = []
        if t.system:
            messages.append({"role": "system", "content": t.system})
        messages.append({"role": "user", "content": t.user.replace("{pgn}", pgn)})
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors, e.g. a template without system-role support
            raise PromptError(f"template {t.name}: the tokenizer's chat template failed: {exc}") from None
        return Prompt(str(text), add_special_tokens=False, completion_prefix=t.completion_prefix)

    def from_sans(
        self, sans: Sequence[str], *, root_fen: str = STANDARD_FEN, variables: Mapping[str, Any] | None = None
    ) -> Prompt:
        return self.wrap(self.pgn(sans, root_fen=root_fen, variables=variables))

    def from_board(self, board: chess.Board, variables: Mapping[str, Any] | None = None) -> Prompt:
        """The prompt for the side to move of ``board``, with the game since its root."""
        root, sans = board_sans(board)
        return self.from_sans(sans, root_fen=root.fen(), variables=variables)


def play_variables(
    board: chess.Board,
    *,
    engine_color: chess.Color | None = None,
    engine_name: str = "mistral-chess",
    opponent_name: str = "?",
    engine_elo: int | None = None,
    opponent_elo: int | None = None,
    result: str = "auto",
) -> dict[str, Any]:
    """Template variables at play time.

    ``result="auto"`` writes the result in which the engine's side wins: the model is
    conditioned on a game its side goes on to win, as in Acher's prompt.
    """
    color = board.turn if engine_color is None else engine_color
    if result == "auto":
        result = side_wins_result(color)
    elif result not in RESULTS:
        raise PromptError(f"result must be auto or one of {RESULTS}, not {result!r}")
    white_is_engine = color == chess.WHITE
    return {
        "white": engine_name if white_is_engine else opponent_name,
        "black": opponent_name if white_is_engine else engine_name,
        "white_elo": engine_elo if white_is_engine else opponent_elo,
        "black_elo": opponent_elo if white_is_engine else engine_elo,
        "result": result,
    }
