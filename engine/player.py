"""Move choice: from a position to a legal move (or a resignation), never an illegal one.

Two modes (``search.mode``):

``constrained``
    Every legal move's SAN is scored under the model (log-probability of its tokens
    after the prompt); the best is played, or one is sampled with ``temperature``.
    An illegal move cannot happen by construction.
``generate``
    Free generation, the first move read with python-chess (SAN, then UCI), known
    slips repaired; ``1-0``/``0-1`` written against itself counts as a resignation
    attempt; up to ``retries`` sampled retries, then the ``fallback`` policy
    (``constrained``, ``random`` or ``resign``). Every fallback is counted and logged
    at WARNING with the FEN and the raw output.

The resign policy and the draw-offer answer live here too, so the Lichess bot and
the UCI front end share them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import chess
from loguru import logger

from engine.config import EngineConfig
from engine.errors import ConfigError, MoveParseError, PromptError
from engine.guard import guard_choice, instant_move
from engine.prompt import (
    Prompt,
    PromptBuilder,
    PromptTemplate,
    legal_sans,
    own_loss_result,
    play_variables,
    window_start,
)
from engine.scoring import Cancelled, LMScorer

# Confidence -> centipawns: cp = CP_SCALE * log10(p / (1 - p)), clamped.
CP_SCALE = 400.0
CP_LIMIT = 2000
GUARD_DEADLINE_MARGIN_S = 0.005  # the guard stops this long before the move is due

_RESULT_RE = re.compile(r"^(1-0|0-1|1/2-1/2|½-½|\*)")
_MOVE_NUMBER_RE = re.compile(r"^\d+\.(\.\.)?")
_ANNOTATION_RE = re.compile(r"[!?]+$")


@dataclasses.dataclass
class Decision:
    """What the player decided for one position."""

    move: chess.Move | None
    resign: bool = False
    score_cp: int = 0
    probability: float | None = None  # of the chosen move among legal moves (constrained)
    play_on: float | None = None  # 1 - P(own resignation) among moves + resignation
    tokens: int = 0  # tokens through the model: UCI `nodes`
    source: str = "model"  # model | forced | fallback-<policy> | error
    raw_outputs: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # for `info string`
    # constrained choice: every candidate with its probability, most likely first (UCI MultiPV)
    ranked: list[tuple[chess.Move, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PlayerStats:
    moves: int = 0
    fallbacks: int = 0
    invalid_outputs: int = 0
    resign_attempts: int = 0
    resignations: int = 0
    errors: int = 0
    timeouts: int = 0
    guard_looks: int = 0  # moves the tactical guard looked at (search.guard)
    guard_changes: int = 0  # of them, where it played another move than the model's choice
    guard_cut: int = 0  # of them, where its time ran out before every candidate was looked at
    by_source: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


def probability_to_cp(p: float) -> int:
    p = min(max(p, 1e-9), 1 - 1e-9)
    cp = CP_SCALE * math.log10(p / (1 - p))
    return int(max(-CP_LIMIT, min(CP_LIMIT, round(cp))))


def first_move_token(text: str) -> str | None:
    """The word of generated text that should be the move: the first one, or the one
    after a move number the model repeated (``"12."``/``"12..."``); None if there is none."""
    parts = text.split()
    if not parts:
        return None
    token = parts[0]
    m = _MOVE_NUMBER_RE.match(token)
    if m:
        rest = token[m.end() :]
        if rest:
            return rest
        return parts[1] if len(parts) > 1 else None
    return token


def parse_model_move(board: chess.Board, text: str) -> tuple[chess.Move | None, str]:
    """Read the first move of generated text.

    Returns ``(move, kind)`` where kind is ``san``, ``uci``, ``repaired``,
    ``resign`` (the side to move wrote its own loss), ``result`` (another result),
    or ``invalid``.
    """
    token = first_move_token(text)
    if token is None:
        return None, "invalid"
    r = _RESULT_RE.match(token)
    if r:
        return None, "resign" if r.group(1) == own_loss_result(board.turn) else "result"
    try:
        move = board.parse_san(token)
        # python-chess reads "--", "Z0", "0000" and "@@@@" as the null move: not a move.
        if move and board.is_legal(move):
            return move, "san"
    except ValueError:
        pass
    try:
        move = chess.Move.from_uci(token.lower())
        if move and board.is_legal(move):
            return move, "uci"
    except ValueError:
        pass
    repaired = _repair(board, token)
    if repaired is not None:
        return repaired, "repaired"
    return None, "invalid"


def _repair(board: chess.Board, token: str) -> chess.Move | None:
    candidates = []
    t = _ANNOTATION_RE.sub("", token).rstrip(",;.")
    candidates.append(t)
    candidates.append(t.replace("0-0-0", "O-O-O").replace("0-0", "O-O"))
    if t.endswith("="):  # promotion without a piece (Acher's `gxh8=`)
        candidates.append(t + "Q")
    if re.fullmatch(r"[a-h]x?[a-h]?[18]", t):  # promotion with no '=' and no piece
        candidates.append(t + "=Q")
    if re.fullmatch(r"[a-h]x?[a-h]?[18][qrbn]", t):
        candidates.append(t[:-1] + "=" + t[-1].upper())
    if t[:1] in "nkqr" and len(t) >= 3:  # lower-case piece letter (not b: the b-pawn)
        candidates.append(t[0].upper() + t[1:])
    for c in candidates:
        if not c:
            continue
        try:
            move = board.parse_san(c)
        except ValueError:
            continue
        if move and board.is_legal(move):
            return move
    return None


class Player:
    """Chooses moves with a model under one :class:`EngineConfig`.

    ``scorer`` may be None: then only fallback moves are possible (the engine reports
    why). One Player serves one game at a time (it keeps resign streaks); the bot makes
    one per game over a shared scorer.
    """

    def __init__(self, config: EngineConfig, scorer: LMScorer | None, *, seed: int | None = None):
        self.config = config
        self.scorer = scorer
        self.stats = PlayerStats()
        self._template = PromptTemplate.load(config.prompt.template)
        self._builder: PromptBuilder | None = None
        self._seed = config.search.seed if seed is None else seed
        self.rng = random.Random(self._seed if self._seed >= 0 else None)
        self._resign_streak = 0
        self._low_streak = 0
        self.last_decision: Decision | None = None
        # (root FEN, moves, their SANs, the board after them): a game's move stack
        # only grows, so each move's SAN is written once, not once per later move.
        self._san_memo: tuple[str, list[chess.Move], list[str], chess.Board] | None = None
        self._window_memo: tuple[tuple[str, tuple[chess.Move, ...]], chess.Board] | None = None
        # -1: the window the loaded model says it was trained with (0 without a model).
        self.window_plies = config.prompt.window_plies
        if self.window_plies < 0:
            self.window_plies = int(getattr(scorer, "window_plies", 0) or 0)
        self.window_offset = config.prompt.window_offset
        # The model's window is known once a model is loaded (the UCI engine makes a Player
        # before its model loads, and again after): check the offset against it then.
        window_known = scorer is not None or config.prompt.window_plies >= 0
        if self.window_offset and window_known and self.window_offset >= max(self.window_plies, 1):
            raise ConfigError(
                f"prompt.window_offset {self.window_offset} needs board windows longer than it "
                f"(prompt.window_plies is {self.window_plies})"
            )

    # -- game state -------------------------------------------------------------
    def new_game(self) -> None:
        self._resign_streak = 0
        self._low_streak = 0
        self.last_decision = None
        if self._seed >= 0:
            self.rng = random.Random(self._seed)

    @property
    def builder(self) -> PromptBuilder:
        if self._builder is None:
            tokenizer = self.scorer.tokenizer if self.scorer is not None else None
            self._builder = PromptBuilder(self._template, tokenizer)
        return self._builder

    def prompt_for(self, board: chess.Board, *, engine_color: chess.Color | None = None) -> Prompt:
        p = self.config.prompt
        variables = play_variables(
            board,
            engine_color=engine_color,
            engine_name=p.engine_name,
            opponent_name=p.opponent_name,
            engine_elo=p.engine_elo or None,
            opponent_elo=p.opponent_elo or None,
            result=p.result,
        )
        root, sans = self._board_sans(board)
        window = self.window_plies
        cut = window_start(len(sans), window, self.window_offset) if window else 0
        if cut:
            # Board windows: the move text restarts at the window's first position.
            moves = board.move_stack
            root = self._window_root(root, moves[:cut])
            board = root.copy(stack=False)
            for move in moves[cut:]:
                board.push(move)
            sans = sans[cut:]
        prompt = self.builder.from_sans(sans, root_fen=root.fen(), variables=variables)
        limit = self._prompt_token_limit()
        if self.scorer is None or self.scorer.count_tokens(prompt) <= limit:
            return prompt
        # Too long for the context budget: restart the move text from a later position
        # (written with [SetUp]/[FEN]), keeping as many recent moves as fit.
        replay = root.copy(stack=False)
        moves = list(board.move_stack)
        lo, hi = 0, len(moves)
        best = self.builder.from_sans([], root_fen=board.fen(), variables=variables)
        boards = [replay.fen()]
        for mv in moves:
            replay.push(mv)
            boards.append(replay.fen())
        while lo < hi:  # smallest cut that fits
            mid = (lo + hi) // 2
            cand = self.builder.from_sans(sans[mid:], root_fen=boards[mid], variables=variables)
            if self.scorer.count_tokens(cand) <= limit:
                best, hi = cand, mid
            else:
                lo = mid + 1
        return best

    def _prompt_token_limit(self) -> int:
        """``prompt.max_prompt_tokens``, within the model's context (room kept for the move)."""
        limit = self.config.prompt.max_prompt_tokens
        model_config = getattr(getattr(self.scorer, "model", None), "config", None)
        max_positions = getattr(model_config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and max_positions > 0:
            limit = min(limit, max_positions - 32)
        return limit

    def _window_root(self, root: chess.Board, moves: list[chess.Move]) -> chess.Board:
        """The position after ``moves`` from ``root`` (remembered: a window's root serves
        all of its plies)."""
        key = (root.fen(), tuple(moves))
        memo = self._window_memo
        if memo is None or memo[0] != key:
            board = root.copy(stack=False)
            for move in moves:
                board.push(move)
            memo = self._window_memo = (key, board.copy(stack=False))
        return memo[1].copy(stack=False)

    def _board_sans(self, board: chess.Board) -> tuple[chess.Board, list[str]]:
        """:func:`engine.prompt.board_sans`, reusing the SANs of this player's last call."""
        root = board.root()
        root_fen = root.fen()
        moves = board.move_stack
        memo = self._san_memo
        if memo is not None and memo[0] == root_fen and moves[: len(memo[1])] == memo[1]:
            _, done, sans, replay = memo
            replay = replay.copy(stack=False)
            sans = list(sans)
        else:
            done, sans, replay = [], [], root.copy(stack=False)
        for move in moves[len(done) :]:
            sans.append(replay.san(move))
            replay.push(move)
        self._san_memo = (root_fen, list(moves), sans, replay)
        return root, list(sans)

    # -- the move -----------------------------------------------------------------
    def choose(
        self,
        board: chess.Board,
        *,
        engine_color: chess.Color | None = None,
        cancel: threading.Event | None = None,
        only: Sequence[chess.Move] = (),
        deadline: float | None = None,
    ) -> Decision:
        """The move for the side to move of ``board``. Never raises for model trouble.
        ``only`` (UCI ``go searchmoves``): choose among these legal moves alone (ignored when
        none of them is legal). ``deadline`` (monotonic seconds): when the answer is due; the
        tactical guard (``search.guard``) stops looking before it."""
        legal = restricted(board, only)
        if not legal:
            d = Decision(move=None, source="no-legal-move")
            self.last_decision = d
            return d
        self.stats.moves += 1
        if len(legal) == 1 and self.config.resign.mode == "never":
            d = Decision(move=legal[0], source="forced", probability=1.0, score_cp=0)
            self.stats.by_source["forced"] += 1
            self.last_decision = d
            return d
        if self.scorer is None:
            d = self._fallback(board, "no model loaded", [], policy="random")
            self.last_decision = d
            return d
        try:
            prompt = self.prompt_for(board, engine_color=engine_color)
            if self.config.search.mode == "constrained":
                d = self._constrained(board, legal, prompt, cancel)
                if self.config.search.guard != "none" and d.move is not None and d.ranked:
                    self._guard(board, d, deadline)
            else:
                d = self._generate(board, legal, prompt, cancel)
        except Cancelled:
            raise
        except PromptError:
            raise
        except Exception as exc:  # the model failed: a legal move all the same
            self.stats.errors += 1
            logger.exception("model error at {}: {}", board.fen(), exc)
            d = self._fallback(board, f"model error: {type(exc).__name__}: {exc}", [], policy="random", legal=legal)
            d.source = "error"
        d = self._apply_resign_policy(board, d)
        if d.move is not None and not board.is_legal(d.move):  # never pass an illegal move on
            logger.error("internal: illegal move {} from {} at {}", d.move, d.source, board.fen())
            d = self._fallback(
                board, f"internal error: illegal move {d.move.uci()} chosen", d.raw_outputs, policy="random", legal=legal
            )
            d.source = "error"
        self.stats.by_source[d.source] += 1
        self.last_decision = d
        return d

    def _guard(self, board: chess.Board, d: Decision, deadline: float | None) -> None:
        """The tactical guard (engine/guard.py) over the model's candidates, the chosen move
        first (it may be a sample): ``d`` takes the guard's move, its probability and a note."""
        cfg = self.config.search
        started = time.monotonic()
        stop = started + cfg.guard_ms / 1000.0
        if deadline is not None:
            stop = min(stop, deadline - GUARD_DEADLINE_MARGIN_S)
        candidates = [(m, p) for m, p in d.ranked if m == d.move]
        candidates += [(m, p) for m, p in d.ranked if m != d.move]
        result = guard_choice(
            board, candidates, moves=cfg.guard_moves, margin_cp=cfg.guard_margin_cp, deadline=stop, checks=cfg.guard_checks
        )
        self.stats.guard_looks += 1
        if not result.complete:
            self.stats.guard_cut += 1
        if result.note:
            d.notes.append(result.note)
        if result.changed:
            self.stats.guard_changes += 1
            d.move = result.move
            d.probability = result.probability
            d.score_cp = probability_to_cp(result.probability)
            logger.debug("{} at {}", result.note, board.fen())

    def emergency_move(self, board: chess.Board, reason: str, only: Sequence[chess.Move] = ()) -> Decision:
        """An instant legal move (one of ``only``, as :meth:`choose` reads it) when the model
        cannot answer in time: by ``time.emergency``, the best one-ply exchange
        (:func:`engine.guard.instant_move`, one pass over the legal moves) or any legal move."""
        self.stats.timeouts += 1
        return self._fallback(board, reason, [], policy=self.config.time.emergency, legal=restricted(board, only))

    def _constrained(
        self, board: chess.Board, legal: list[chess.Move], prompt: Prompt, cancel: threading.Event | None
    ) -> Decision:
        assert self.scorer is not None
        sans = legal_sans(board, legal)
        conts = [prompt.completion(s) for s in sans]
        with_resign = self.config.resign.mode != "never"
        if with_resign:
            conts.append(prompt.completion(own_loss_result(board.turn)))
        scores = self.scorer.score(prompt, conts, cancel)
        logps = scores.logprobs
        move_logps = logps[: len(legal)]
        # Normalise over legal moves (and the resignation, for play_on).
        mx = max(logps)
        weights = [math.exp(lp - mx) for lp in logps]
        total_moves = sum(weights[: len(legal)])
        play_on = None
        if with_resign:
            play_on = total_moves / (total_moves + weights[-1])
        probs = [w / total_moves for w in weights[: len(legal)]]
        order = sorted(range(len(legal)), key=lambda i: -move_logps[i])
        t = self.config.search.temperature
        if t > 0:
            tw = [math.exp((lp - max(move_logps)) / t) for lp in move_logps]
            idx = self.rng.choices(range(len(legal)), weights=tw, k=1)[0]
        else:
            idx = order[0]  # the most likely (the first of equals, as max would pick)
        d = Decision(
            move=legal[idx],
            probability=probs[idx],
            play_on=play_on,
            score_cp=probability_to_cp(probs[idx]),
            tokens=scores.tokens_evaluated,
            source="model",
            ranked=[(legal[i], probs[i]) for i in order],
        )
        if with_resign and logps[-1] > move_logps[idx]:
            d.notes.append("model prefers to resign here")
            d.raw_outputs.append(own_loss_result(board.turn))
        return d

    def _generate(
        self, board: chess.Board, legal: list[chess.Move], prompt: Prompt, cancel: threading.Event | None
    ) -> Decision:
        assert self.scorer is not None
        s = self.config.search
        raws: list[str] = []
        tokens = 0
        resign_seen = False
        for attempt in range(s.retries + 1):
            temp = s.temperature if attempt == 0 else max(s.retry_temperature, 1e-3)
            seed = self.rng.randrange(2**31) if temp > 0 else None
            text, n = self.scorer.generate(
                prompt, max_new_tokens=s.max_new_tokens, temperature=temp, generator_seed=seed, cancel=cancel
            )
            tokens += n
            raws.append(text)
            move, kind = parse_model_move(board, text)
            if move is not None and move not in legal:  # a legal move outside `go searchmoves`
                move, kind = None, "outside searchmoves"
            if move is not None:
                d = Decision(move=move, tokens=tokens, source="model", raw_outputs=raws)
                d.score_cp = 0
                if kind == "repaired":
                    d.notes.append(f"repaired model output {text.strip()!r} -> {board.san(move)}")
                if attempt:
                    d.notes.append(f"legal move on try {attempt + 1}; invalid before: {raws[:-1]!r}")
                return d
            if kind == "resign":
                resign_seen = True
                self.stats.resign_attempts += 1
                if self._resign_streak_complete(board):
                    d = Decision(move=None, resign=True, tokens=tokens, source="model-resign", raw_outputs=raws)
                    d.notes.append(f"model resigns (wrote {text.strip()!r})")
                    return d
            else:
                self.stats.invalid_outputs += 1
        reason = "model resigned" if resign_seen and len(raws) == 1 else f"no legal move in {len(raws)} tries"
        d = self._fallback(board, reason, raws, policy=s.fallback, prompt=prompt, cancel=cancel, legal=legal)
        d.tokens += tokens
        return d

    def _fallback(
        self,
        board: chess.Board,
        reason: str,
        raws: list[str],
        *,
        policy: str,
        prompt: Prompt | None = None,
        cancel: threading.Event | None = None,
        legal: list[chess.Move] | None = None,
    ) -> Decision:
        """A move by ``policy`` among ``legal`` (default: every legal move)."""
        self.stats.fallbacks += 1
        logger.warning("fallback ({}): {}; fen={} raw={!r}", policy, reason, board.fen(), raws)
        note = f"fallback {policy}: {reason}; raw output {raws!r}"
        if legal is None:
            legal = list(board.legal_moves)
        if policy == "resign":
            self.stats.resignations += 1
            return Decision(move=None, resign=True, source="fallback-resign", raw_outputs=raws, notes=[note])
        if policy == "material" and legal:
            order = list(legal)
            self.rng.shuffle(order)  # equal moves at random, as the random policy would choose
            move, why = instant_move(board, legal, order)
            note = f"fallback material: {reason}; {board.san(move)}: {why}"
            return Decision(move=move, source="fallback-material", raw_outputs=raws, notes=[note])
        if policy == "constrained" and prompt is not None and self.scorer is not None:
            d = self._constrained(board, legal, prompt, cancel)
            d.source = "fallback-constrained"
            d.raw_outputs = raws
            d.notes.append(note)
            return d
        move = self.rng.choice(legal)
        return Decision(move=move, source="fallback-random", raw_outputs=raws, notes=[note])

    # -- resign and draw ------------------------------------------------------------
    def _resign_streak_complete(self, board: chess.Board) -> bool:
        """Would one more resignation attempt complete the `streak` policy's run?"""
        r = self.config.resign
        return r.mode == "streak" and board.ply() >= r.min_ply and self._resign_streak + 1 >= r.streak

    def _apply_resign_policy(self, board: chess.Board, d: Decision) -> Decision:
        r = self.config.resign
        if d.resign:
            self.stats.resignations += 1
            return d
        if r.mode == "never" or d.move is None:
            return d
        wants = bool(d.raw_outputs) and d.raw_outputs[-1] == own_loss_result(board.turn) and d.source == "model"
        if self.config.search.mode == "generate":
            wants = any(parse_model_move(board, t)[1] == "resign" for t in d.raw_outputs)
        self._resign_streak = self._resign_streak + 1 if wants else 0
        low = d.play_on is not None and d.play_on < r.threshold
        self._low_streak = self._low_streak + 1 if low else 0
        if board.ply() < r.min_ply:
            return d
        if (r.mode == "streak" and self._resign_streak >= r.streak) or (
            r.mode == "threshold" and self._low_streak >= r.streak
        ):
            self.stats.resignations += 1
            d.notes.append(f"resigning by policy {r.mode} after {r.streak} moves in a row")
            return Decision(
                move=None, resign=True, tokens=d.tokens, source="policy-resign", raw_outputs=d.raw_outputs, notes=d.notes
            )
        return d

    def accept_draw(self, board: chess.Board) -> bool:
        """Answer to a draw offer in ``board`` (the engine's side to move or not)."""
        dc = self.config.draw
        if dc.accept == "never":
            return False
        if dc.accept == "always":
            return True
        if board.ply() < dc.min_ply:
            return False
        last = self.last_decision
        if last is None:
            return False
        if last.play_on is not None:
            return last.play_on < dc.threshold
        # No resignation score (generate mode): fall back on the move's confidence.
        return last.probability is not None and last.probability < dc.threshold

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {
            "moves": s.moves,
            "fallbacks": s.fallbacks,
            "invalid_outputs": s.invalid_outputs,
            "resign_attempts": s.resign_attempts,
            "resignations": s.resignations,
            "errors": s.errors,
            "timeouts": s.timeouts,
            "guard_looks": s.guard_looks,
            "guard_changes": s.guard_changes,
            "guard_cut": s.guard_cut,
            "by_source": dict(s.by_source),
        }


def restricted(board: chess.Board, only: Sequence[chess.Move]) -> list[chess.Move]:
    """The legal moves of ``board`` that are in ``only`` (in the board's order); all of them
    when ``only`` is empty or holds no legal move."""
    legal = list(board.legal_moves)
    if only:
        wanted = set(only)
        kept = [m for m in legal if m in wanted]
        if kept:
            return kept
    return legal


def parse_or_raise(board: chess.Board, text: str) -> chess.Move:
    move, kind = parse_model_move(board, text)
    if move is None:
        raise MoveParseError(f"no legal move in model output {text!r} ({kind}) at {board.fen()}")
    return move
