"""The tactical guard (``search.guard: material``): a check of the model's own candidates.

The model chooses with one forward pass and no look-ahead, so it hangs pieces and walks
into short mates (the bundled model's card, "Blunders"). With the guard on, the engine
still plays one of the model's ``search.guard_moves`` most likely moves, in the model's
order, but looks at each first with python-chess:

- a move that mates at once is played, however low the model ranked it;
- a candidate after which the opponent mates in one is dropped, and one that stalemates is
  valued as a draw (0);
- every other candidate is valued by a quiescence search over captures and promotions
  (all replies when in check) with material values, from the opponent's side after it;
  with ``search.guard_checks`` the opponent's first reply may also be a quiet check, so a
  knight or queen fork with check, or a discovered check that wins what it uncovers, counts;
- the model's most likely candidate whose value is within ``search.guard_margin_cp`` of
  the best candidate's is played.

So the guard catches a piece left where it is taken, a capture that loses the exchange and
mate on the next move (and, with ``guard_checks``, a fork or discovery that starts with
check); it does not see quiet threats, pins or forks without check. It is bounded by
``search.guard_ms`` (and the deadline of the move, when the caller gives one): what it has
not looked at when time is up keeps the model's order, and with no candidate looked at
the model's choice stands. It is off by default (``search.guard: none``): the engine's strength figures (the model
card, the ladder) are the model's alone unless they say otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import chess

# Material values in centipawns (the king is never captured).
PIECE_CP = {
    chess.PAWN: 100,
    chess.KNIGHT: 320,
    chess.BISHOP: 330,
    chess.ROOK: 500,
    chess.QUEEN: 900,
    chess.KING: 0,
}
MATE_CP = 100_000
QS_MAX_PLIES = 12  # a capture sequence longer than this is cut (stand-pat value)


class _OutOfTime(Exception):
    pass


@dataclasses.dataclass
class GuardLook:
    """What the guard found for one candidate (values in centipawns, the mover's view)."""

    move: chess.Move
    probability: float
    value: int
    reason: str  # "mates", "stalemates", "allows mate", "captures"


@dataclasses.dataclass
class GuardResult:
    move: chess.Move
    looks: list[GuardLook]
    probability: float  # the model's probability of ``move``
    changed: bool  # the guard played another move than the model's first choice
    complete: bool  # every candidate was looked at within the time
    nodes: int
    note: str  # "guard: ..." when it changed the move, "guard cut: ..." when it had no time to look, else ""


def material(board: chess.Board, color: chess.Color) -> int:
    return sum(PIECE_CP[p] * len(board.pieces(p, color)) for p in PIECE_CP)


def _balance(board: chess.Board) -> int:
    """Material of the side to move less the opponent's, in centipawns."""
    return material(board, board.turn) - material(board, not board.turn)


def _captured_value(board: chess.Board, move: chess.Move) -> int:
    if board.is_en_passant(move):
        return PIECE_CP[chess.PAWN]
    piece = board.piece_at(move.to_square)
    return PIECE_CP[piece.piece_type] if piece is not None else 0


class _Search:
    def __init__(self, deadline: float | None, max_nodes: int, checks: bool = False):
        self.deadline = deadline
        self.max_nodes = max_nodes
        self.checks = checks  # the opponent's first reply (ply 1) may be a quiet check
        self.nodes = 0

    def tick(self) -> None:
        self.nodes += 1
        if self.nodes >= self.max_nodes or (
            self.deadline is not None and self.nodes % 64 == 0 and time.monotonic() >= self.deadline
        ):
            raise _OutOfTime

    def qsearch(self, board: chess.Board, alpha: int, beta: int, ply: int) -> int:
        """Material value for the side to move, captures and promotions only (every reply
        when in check; quiet checks too at ply 1 when ``checks``), fail-hard alpha-beta."""
        self.tick()
        if board.is_check():
            moves = list(board.legal_moves)
            if not moves:
                return -MATE_CP + ply
            if ply >= QS_MAX_PLIES:  # in check, deep in a sequence: value it as it stands
                return _balance(board)
        else:
            stand = _balance(board)
            if stand >= beta or ply >= QS_MAX_PLIES:
                return stand
            alpha = max(alpha, stand)
            quiet_checks = self.checks and ply == 1
            moves = [
                m
                for m in board.generate_legal_moves()
                if board.is_capture(m) or m.promotion or (quiet_checks and board.gives_check(m))
            ]
        # Most valuable victim first, least valuable attacker first among equals.
        moves.sort(
            key=lambda m: (
                -_captured_value(board, m) - (PIECE_CP[m.promotion] if m.promotion else 0),
                PIECE_CP[board.piece_type_at(m.from_square) or chess.PAWN],
            )
        )
        for move in moves:
            board.push(move)
            try:
                score = -self.qsearch(board, -beta, -alpha, ply + 1)
            finally:
                board.pop()
            if score >= beta:
                return beta
            alpha = max(alpha, score)
        return alpha


def _mates(board: chess.Board, move: chess.Move) -> bool:
    board.push(move)
    try:
        return board.is_checkmate()
    finally:
        board.pop()


def _allows_mate_in_one(board: chess.Board, search: _Search) -> bool:
    """Whether the side to move of ``board`` (the opponent, after our candidate) mates at once."""
    for reply in board.legal_moves:
        search.tick()
        if _mates(board, reply):
            return True
    return False


def guard_choice(
    board: chess.Board,
    ranked: Sequence[tuple[chess.Move, float]],
    *,
    moves: int,
    margin_cp: int,
    deadline: float | None,
    checks: bool = False,
    max_nodes: int = 200_000,
) -> GuardResult:
    """The move to play among the model's ``ranked`` moves (most likely first: every move the
    caller allows, with its probability), as the module says; ``checks``: the opponent's first
    reply may be a quiet check (``search.guard_checks``). ``board`` is left as it was."""
    if not ranked:
        raise ValueError("guard_choice needs the model's ranked moves")
    board = board.copy(stack=False)
    search = _Search(deadline, max_nodes, checks)
    first = ranked[0][0]
    looks: list[GuardLook] = []
    # A mate in one is played, however low the model ranks it (one push per candidate; ``ranked``
    # holds every move the caller allows, so UCI ``searchmoves`` is kept).
    try:
        for move, prob in ranked:
            search.tick()
            if _mates(board, move):
                look = GuardLook(move, prob, MATE_CP, "mates")
                note = (
                    ""
                    if move == first
                    else f"guard: {board.san(move)} mates (the model chose {board.san(first)})"
                )
                return GuardResult(move, [look], prob, move != first, True, search.nodes, note)
    except _OutOfTime:
        return GuardResult(first, [], ranked[0][1], False, False, search.nodes, "guard cut: no time to look")
    complete = True
    for move, prob in ranked[: max(1, moves)]:
        try:
            board.push(move)
            try:
                if board.is_stalemate():  # a draw, whatever the material says
                    looks.append(GuardLook(move, prob, 0, "stalemates"))
                    continue
                if _allows_mate_in_one(board, search):
                    looks.append(GuardLook(move, prob, -MATE_CP + 1, "allows mate"))
                    continue
                value = -search.qsearch(board, -MATE_CP, MATE_CP, 1)
            finally:
                board.pop()
        except _OutOfTime:
            complete = False
            break
        looks.append(GuardLook(move, prob, value, "captures"))
    if not looks:
        return GuardResult(first, [], ranked[0][1], False, False, search.nodes, "guard cut: no time to look")
    best = max(look.value for look in looks)
    chosen = next(look for look in looks if look.value >= best - margin_cp)
    note = ""
    if chosen.move != first:
        dropped = looks[0]
        top = next(look for look in looks if look.value == best)
        if dropped.reason == "allows mate":
            what = "allows mate in one"
        elif dropped.reason == "stalemates":
            what = f"stalemates, {best} cp below {board.san(top.move)}"
        else:
            after = "the captures and checks" if checks else "the captures"
            what = f"comes out {best - dropped.value} cp below {board.san(top.move)} after {after}"
        note = (
            f"guard: {board.san(first)} (p {ranked[0][1]:.2f}) {what}; played {board.san(chosen.move)} "
            f"(p {chosen.probability:.2f}, the model's choice {looks.index(chosen) + 1} of {len(looks)} looked at)"
        )
    return GuardResult(
        chosen.move, looks, chosen.probability, chosen.move != first, complete, search.nodes, note
    )


def instant_move(
    board: chess.Board, legal: Sequence[chess.Move], order: Sequence[chess.Move] | None = None
) -> tuple[chess.Move, str]:
    """A move from one pass over ``legal`` (no search) for when the model cannot answer in time
    (``time.emergency: material``), with a note of why: a mate in one, else the move of best
    one-ply exchange value. A move gains what it captures (and what its promotion adds); the
    opponent then takes the moved piece with its least valuable attacker when that pays
    (always when nothing of ours defends the square, else when the piece is worth more than
    the attacker, which we take back). Ties keep ``order`` (``legal``'s when None; the engine
    shuffles it, so equal quiet moves are chosen at random). It sees no more than that: not a
    piece left hanging elsewhere, nor a fork."""
    if not legal:
        raise ValueError("instant_move needs at least one legal move")
    board = board.copy(stack=False)
    us = board.turn
    best: chess.Move | None = None
    best_value = -MATE_CP
    for move in order if order is not None else legal:
        gain = _captured_value(board, move)
        if move.promotion:
            gain += PIECE_CP[move.promotion] - PIECE_CP[chess.PAWN]
        moved = PIECE_CP[move.promotion or board.piece_type_at(move.from_square) or chess.PAWN]
        board.push(move)
        try:
            if board.is_checkmate():
                return move, "mates"
            defended = board.is_attacked_by(us, move.to_square)
            attackers = [board.piece_type_at(sq) for sq in board.attackers(not us, move.to_square)]
        finally:
            board.pop()
        if defended:  # a king cannot take a defended piece
            attackers = [t for t in attackers if t != chess.KING]
        if not attackers:
            loss = 0
        elif not defended:
            loss = moved
        else:
            loss = max(0, moved - min(PIECE_CP[t] for t in attackers if t is not None))
        value = gain - loss
        if value > best_value:
            best, best_value = move, value
    assert best is not None
    return best, f"best one-ply exchange ({best_value:+d} cp)"
