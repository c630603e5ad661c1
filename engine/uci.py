"""The UCI front end: reads commands on stdin, writes protocol lines on stdout.

stdout belongs to the protocol; logs go to stderr (or ``log_file``). ``uci`` is
answered at once; the model loads in the background after ``uciok`` and ``readyok``
is sent only when it is loaded. Each ``go`` runs the model on a worker thread under a
deadline from the clock; when the deadline passes first, the engine answers an
instant legal fallback move (and says so in ``info string``).

Bad input never stops the engine: unknown commands and malformed arguments get an
``info string``; a ``position`` with a broken FEN or an illegal move is reported and
leaves the engine without a valid position, so the next ``go`` answers
``bestmove 0000`` rather than play from a position the GUI did not mean.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

import chess
from loguru import logger

from engine import __version__
from engine.config import EngineConfig, load_engine_config
from engine.configtools import parse_overrides
from engine.errors import ConfigError, MistralChessError, PositionError
from engine.player import CP_LIMIT, Decision, Player, probability_to_cp
from engine.timeman import GoParams, budget_ms, parse_go

ENGINE_NAME = f"mistral-chess {__version__}"
ENGINE_AUTHOR = "the mistral-chess developers"


@dataclasses.dataclass(frozen=True)
class UciOption:
    name: str
    kind: str  # check | spin | combo | string | button
    key: str  # dotted config key ('' for accepted-and-ignored options)
    vars: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    reload: bool = False  # changing it needs a model reload
    to_value: Callable[[str], Any] | None = None

    def declaration(self, current: Any) -> str:
        default = _format_default(current, self.kind)
        line = f"option name {self.name} type {self.kind}"
        if self.kind != "button":
            line += f" default {default}"
        if self.kind == "spin":
            line += f" min {self.min} max {self.max}"
        for v in self.vars:
            line += f" var {v}"
        return line


def _format_default(value: Any, kind: str) -> str:
    if kind == "check":
        return "true" if value else "false"
    if kind == "string":
        return "<empty>" if value in ("", None) else str(value)
    return str(value)


def _float(text: str) -> float:
    return float(text)


OPTIONS: tuple[UciOption, ...] = (
    UciOption("ModelPath", "string", "model.path", reload=True),
    UciOption("AdapterPath", "string", "model.adapter", reload=True),
    UciOption("ModelServer", "string", "model.server", reload=True),
    UciOption("Device", "combo", "model.device", vars=("auto", "cpu", "cuda"), reload=True),
    UciOption("Quantization", "combo", "model.quantization", vars=("auto", "none", "nf4"), reload=True),
    UciOption("DType", "combo", "model.dtype", vars=("auto", "float32", "bfloat16", "float16"), reload=True),
    UciOption("Threads", "spin", "model.threads", min=0, max=256, reload=True),
    UciOption("Hash", "spin", "", min=1, max=65536),
    UciOption("Ponder", "check", ""),
    UciOption("MoveSelection", "combo", "search.mode", vars=("constrained", "generate")),
    UciOption("MultiPV", "spin", "search.multipv", min=1, max=256),
    UciOption("Guard", "combo", "search.guard", vars=("none", "material")),
    UciOption("GuardMoves", "spin", "search.guard_moves", min=1, max=256),
    UciOption("GuardMarginCp", "spin", "search.guard_margin_cp", min=0, max=10000),
    UciOption("GuardTimeMs", "spin", "search.guard_ms", min=1, max=10000),
    UciOption("GuardChecks", "check", "search.guard_checks"),
    UciOption("Temperature", "string", "search.temperature", to_value=_float),
    UciOption("Seed", "spin", "search.seed", min=-1, max=2**31 - 1),
    UciOption("Retries", "spin", "search.retries", min=0, max=20),
    UciOption("Fallback", "combo", "search.fallback", vars=("constrained", "random", "resign")),
    UciOption("MaxNewTokens", "spin", "search.max_new_tokens", min=1, max=64),
    UciOption("ResignMode", "combo", "resign.mode", vars=("never", "streak", "threshold")),
    UciOption("ResignStreak", "spin", "resign.streak", min=1, max=100),
    UciOption("ResignThreshold", "string", "resign.threshold", to_value=_float),
    UciOption("DrawAccept", "combo", "draw.accept", vars=("never", "always", "threshold")),
    UciOption("MoveOverhead", "spin", "time.move_overhead_ms", min=0, max=10000),
    UciOption("EmergencyMove", "combo", "time.emergency", vars=("material", "random")),
    UciOption("PromptTemplate", "string", "prompt.template"),
    UciOption("EngineElo", "spin", "prompt.engine_elo", min=0, max=4000),
)
_OPTIONS_BY_NAME = {o.name.lower(): o for o in OPTIONS}


def _get_key(cfg: EngineConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


class UciEngine:
    """One UCI session. ``handle(line)`` processes a line; returns False on ``quit``."""

    def __init__(
        self,
        config: EngineConfig,
        out: IO[str] | None = None,
        *,
        loader: Callable[[EngineConfig], Any] | None = None,
    ) -> None:
        self.config = config
        self.out = out if out is not None else sys.stdout
        self._out_lock = threading.Lock()
        self._loader = loader or load_scorer
        self._load_thread: threading.Thread | None = None
        self._load_error: str | None = None
        self._scorer: Any = None
        self._model_dirty = True
        self.player = Player(config, None)
        self.board: chess.Board | None = chess.Board()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._search: threading.Thread | None = None
        self._stop = threading.Event()
        self._ponderhit = threading.Event()
        self._answered = threading.Event()  # the current search has sent its bestmove
        self._debug = False

    # -- output -------------------------------------------------------------------
    def send(self, line: str) -> None:
        if line.startswith("bestmove"):
            # Set before the GUI can read it: its next `go` may arrive before this
            # search thread has returned.
            self._answered.set()
        with self._out_lock:
            self.out.write(line + "\n")
            self.out.flush()
        if self._debug:
            logger.debug(">> {}", line)

    def info_string(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.send(f"info string {part}")

    # -- model --------------------------------------------------------------------
    def _start_loading(self) -> None:
        if self._load_thread is not None and self._load_thread.is_alive():
            return
        if not self._model_dirty:
            return
        self._model_dirty = False
        self._load_error = None

        def load() -> None:
            try:
                self._scorer = self._loader(self.config)
                self.player = Player(self.config, self._scorer)
            except Exception as exc:
                self._scorer = None
                self.player = Player(self.config, None)
                self._load_error = str(exc)
                logger.error("model not loaded: {}", exc)

        self._load_thread = threading.Thread(target=load, name="model-loader", daemon=True)
        self._load_thread.start()

    def _wait_loaded(self, timeout: float | None = None) -> bool:
        self._start_loading()
        t = self._load_thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return False
        if self._load_error is not None:
            self.info_string(f"ERROR model not loaded: {self._load_error}")
            self.info_string("moves will be random legal fallbacks until ModelPath is fixed")
            self._load_error = None  # reported once per load attempt, not at every move
        return True

    # -- main loop ----------------------------------------------------------------
    def run(self, lines: Iterable[str]) -> None:
        for raw in lines:
            try:
                if not self.handle(raw):
                    break
            except Exception as exc:  # a bug must not take the engine down mid-game
                logger.exception("error handling {!r}", raw)
                self.info_string(f"ERROR internal error on {raw.strip()!r}: {exc}")
        self.shutdown()

    def shutdown(self) -> None:
        self._stop.set()
        self._ponderhit.set()
        if self._search is not None:
            self._search.join(timeout=5)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def handle(self, raw: str) -> bool:
        line = raw.strip()
        if self._debug:
            logger.debug("<< {}", line)
        if not line:
            return True
        tokens = line.split()
        cmd, args = tokens[0], tokens[1:]
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            self.info_string(f"unknown command ignored: {line[:200]}")
            return True
        result = handler(args)
        return result is not False

    # -- commands -----------------------------------------------------------------
    def cmd_uci(self, args: list[str]) -> None:
        self.send(f"id name {ENGINE_NAME}")
        self.send(f"id author {ENGINE_AUTHOR}")
        for opt in OPTIONS:
            current = _get_key(self.config, opt.key) if opt.key else _IGNORED_DEFAULTS.get(opt.name)
            self.send(opt.declaration(current))
        self.send("uciok")
        self._start_loading()

    def cmd_debug(self, args: list[str]) -> None:
        self._debug = bool(args) and args[0] == "on"

    def cmd_isready(self, args: list[str]) -> None:
        if self._search is None or not self._search.is_alive():
            self._wait_loaded()
        self.send("readyok")

    def cmd_setoption(self, args: list[str]) -> None:
        text = " ".join(args)
        if not text.startswith("name "):
            self.info_string(f"setoption: expected 'name <id> [value <x>]', got {text!r}")
            return
        body = text[5:]
        name, _, value = body.partition(" value ")
        name = name.strip()
        value = value.strip()
        opt = _OPTIONS_BY_NAME.get(name.lower())
        if opt is None:
            self.info_string(f"setoption: unknown option {name!r} ignored")
            return
        if not opt.key:
            return  # accepted for GUIs (Hash, Ponder), no effect on a language model
        try:
            new_value = self._convert(opt, value)
            section, field = opt.key.split(".")
            current = getattr(self.config, section)
            updated = dataclasses.replace(current, **{field: new_value})  # runs __post_init__ checks
        except (ValueError, ConfigError, TypeError) as exc:
            self.info_string(f"setoption {opt.name}: bad value {value!r} ({exc}); kept {_get_key(self.config, opt.key)!r}")
            return
        setattr(self.config, section, updated)
        if opt.reload:
            self._model_dirty = True
        else:
            # The player keeps config by reference; rebuild it to pick up the template.
            self.player = Player(self.config, self._scorer)

    def _convert(self, opt: UciOption, value: str) -> Any:
        if opt.kind == "string":
            if value in ("<empty>", ""):
                value = ""
            return opt.to_value(value) if opt.to_value else value
        if opt.kind == "check":
            if value not in ("true", "false"):
                raise ValueError("expected true or false")
            return value == "true"
        if opt.kind == "spin":
            n = int(value)
            if opt.min is not None and opt.max is not None and not opt.min <= n <= opt.max:
                raise ValueError(f"out of range {opt.min}..{opt.max}")
            return n
        if opt.kind == "combo":
            if value not in opt.vars:
                raise ValueError(f"expected one of {', '.join(opt.vars)}")
            return value
        return value

    def cmd_ucinewgame(self, args: list[str]) -> None:
        self.player.new_game()

    def cmd_position(self, args: list[str]) -> None:
        try:
            self.board = parse_position(args)
        except PositionError as exc:
            self.board = None
            self.info_string(f"ERROR {exc}; no valid position until the next 'position' command")
            print(f"mistral-chess: {exc}", file=sys.stderr, flush=True)

    def cmd_go(self, args: list[str]) -> None:
        if self._search is not None and self._search.is_alive():
            if not self._answered.is_set():
                self.info_string("go ignored: already searching (send stop first)")
                return
            self._search.join()  # it has answered and is only returning
        self._answered.clear()
        params, problems = parse_go(args)
        for p in problems:
            self.info_string(p)
        self._stop.clear()
        self._ponderhit.clear()
        board = self.board.copy() if self.board is not None else None
        started = time.monotonic()
        self._search = threading.Thread(target=self._search_main, args=(board, params, started), daemon=True)
        self._search.start()

    def cmd_stop(self, args: list[str]) -> None:
        self._stop.set()
        if self._search is not None:
            self._search.join()

    def cmd_ponderhit(self, args: list[str]) -> None:
        self._ponderhit.set()

    def cmd_quit(self, args: list[str]) -> bool:
        self._stop.set()
        return False

    # -- search -------------------------------------------------------------------
    def _search_main(self, board: chess.Board | None, params: GoParams, started: float) -> None:
        try:
            self._search_inner(board, params, started)
        except Exception as exc:  # never leave the GUI without a bestmove
            logger.exception("search failed")
            self.info_string(f"ERROR search failed: {exc}")
            if board is not None and any(board.legal_moves):
                self.send(f"bestmove {next(iter(board.legal_moves)).uci()}")
            else:
                self.send("bestmove 0000")

    def _search_inner(self, board: chess.Board | None, params: GoParams, started: float) -> None:
        if board is None:
            self.info_string("ERROR no valid position (the last 'position' command was rejected)")
            self.send("bestmove 0000")
            return
        if board.is_game_over(claim_draw=False) and not any(board.legal_moves):
            self.info_string("no legal move in this position")
            self.send("info depth 0 score cp 0")
            self.send("bestmove 0000")
            return
        waiting = params.ponder or params.infinite
        budget = budget_ms(params, board.turn, self.config.time)
        deadline = None if budget is None else started + budget / 1000.0
        if params.ponder:
            deadline = None  # the clock starts at ponderhit

        only = self._searchmoves(board, params.searchmoves)
        # The model may still be loading: wait for it inside the budget.
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        loaded = self._wait_loaded(remaining)
        cancel = threading.Event()
        decision: Decision | None = None
        if loaded:
            future = self._worker.submit(
                self.player.choose, board.copy(), cancel=cancel, only=only, deadline=deadline
            )
            decision = self._await(future, deadline, params, board.turn)
            if decision is None:
                cancel.set()
        if decision is None:
            reason = "model still loading" if not loaded else "time budget spent before the model answered"
            decision = self.player.emergency_move(board, reason, only)
            decision.notes.insert(0, f"fallback: {reason}")
        if waiting:
            # UCI: no bestmove for `go infinite` / `go ponder` until stop (or ponderhit).
            while not self._stop.is_set() and not (params.ponder and self._ponderhit.is_set()):
                self._stop.wait(0.01)
        self._report(board, decision, started)

    def _searchmoves(self, board: chess.Board, words: list[str]) -> list[chess.Move]:
        """The legal moves named by ``go searchmoves``; what is not one is reported and left out,
        and with none left every legal move is searched (so said)."""
        moves: list[chess.Move] = []
        for word in words:
            try:
                moves.append(board.parse_uci(word))  # the legal move, castling as king-takes-rook too
            except chess.InvalidMoveError:
                self.info_string(f"searchmoves: {word!r} is not a UCI move; ignored")
            except chess.IllegalMoveError:
                self.info_string(f"searchmoves: {word} is not legal in this position; ignored")
        if words and not moves:
            self.info_string("searchmoves: none of them is legal here; searching every legal move")
        return moves

    def _await(
        self, future: concurrent.futures.Future[Decision], deadline: float | None, params: GoParams, turn: chess.Color
    ) -> Decision | None:
        while True:
            if params.ponder and self._ponderhit.is_set() and deadline is None:
                # ponderhit: the clock of the `go ponder` command now runs.
                budget = budget_ms(dataclasses.replace(params, ponder=False), turn, self.config.time)
                deadline = None if budget is None else time.monotonic() + budget / 1000.0
            now = time.monotonic()
            if self._stop.is_set():
                try:
                    return future.result(timeout=0)
                except concurrent.futures.TimeoutError:
                    return None
            timeout = 0.01 if deadline is None else min(0.01, max(0.0, deadline - now))
            try:
                return future.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    return None

    def _report(self, board: chess.Board, d: Decision, started: float) -> None:
        elapsed_ms = int((time.monotonic() - started) * 1000)
        for note in d.notes:
            self.info_string(note)
        move = d.move
        score = d.score_cp
        if d.resign:
            # UCI has no resignation: say so, report a lost score (GUIs with resign
            # adjudication act on it) and still play a legal move.
            self.info_string("resign: the model gives this game up")
            score = -CP_LIMIT
            if move is None:
                move = self.player.emergency_move(board, "resignation over UCI").move
        if move is None:
            self.send("info depth 0 score cp 0")
            self.send("bestmove 0000")
            return
        if not board.is_legal(move):  # defence in depth: never pass an illegal move on
            logger.error("internal: illegal move {} chosen at {}", move, board.fen())
            move = next(iter(board.legal_moves))
        nps = int(d.tokens * 1000 / max(elapsed_ms, 1))
        lines = self.config.search.multipv
        if lines > 1 and d.ranked and not d.resign:
            # MultiPV: the N most likely candidates, most likely first; bestmove stays the choice.
            for k, (m, p) in enumerate(d.ranked[:lines], start=1):
                self.send(
                    f"info depth 1 seldepth 1 multipv {k} score cp {probability_to_cp(p)} nodes {d.tokens} "
                    f"nps {nps} time {elapsed_ms} pv {m.uci()}"
                )
        else:
            self.send(
                f"info depth 1 seldepth 1 multipv 1 score cp {score} nodes {d.tokens} nps {nps} "
                f"time {elapsed_ms} pv {move.uci()}"
            )
        self.send(f"bestmove {move.uci()}")


_IGNORED_DEFAULTS: dict[str, Any] = {"Hash": 16, "Ponder": False}


def parse_position(args: list[str]) -> chess.Board:
    """``position startpos|fen <FEN> [moves m1 m2 ...]`` -> a board (with its move stack)."""
    if not args:
        raise PositionError("position: expected 'startpos' or 'fen <FEN>'")
    if "moves" in args:
        i = args.index("moves")
        head, moves = args[:i], args[i + 1 :]
    else:
        head, moves = args, []
    if head[0] == "startpos":
        if len(head) > 1:
            raise PositionError(f"position: unexpected text after startpos: {' '.join(head[1:])!r}")
        board = chess.Board()
    elif head[0] == "fen":
        fen = " ".join(head[1:])
        if not fen:
            raise PositionError("position fen: the FEN is missing")
        try:
            board = chess.Board(fen)
        except ValueError as exc:
            raise PositionError(f"position: bad FEN {fen!r}: {exc}") from None
        status = board.status()
        if status != chess.STATUS_VALID and status & ~(chess.STATUS_TOO_MANY_CHECKERS | chess.STATUS_IMPOSSIBLE_CHECK):
            raise PositionError(f"position: FEN {fen!r} is not a legal position ({status!r})")
    else:
        raise PositionError(f"position: expected 'startpos' or 'fen', got {head[0]!r}")
    for n, uci in enumerate(moves, 1):
        try:
            move = chess.Move.from_uci(uci)
        except ValueError:
            raise PositionError(f"position: move {n} {uci!r} is not a UCI move, in {board.fen()}") from None
        # GUIs may send castling as king-takes-rook (Chess960 style) or e1g1; accept both.
        if not board.is_legal(move):
            alt = _castling_alias(board, move)
            if alt is None:
                raise PositionError(f"position: illegal move {n} {uci!r} in {board.fen()}")
            move = alt
        board.push(move)
    return board


def _castling_alias(board: chess.Board, move: chess.Move) -> chess.Move | None:
    if board.piece_type_at(move.from_square) != chess.KING:
        return None
    for legal in board.generate_castling_moves():
        if board.uci(legal, chess960=True) == move.uci():
            return legal
    return None


def load_scorer(config: EngineConfig, *, games: int = 1) -> Any:
    """The model of ``config`` behind a scorer. ``games`` > 1 (the bot's concurrent games
    over one model): at least ``2 * games + 2`` cache slots and batches of up to ``games``,
    so the games keep their caches and their batches are pipelined."""
    from engine.model import load_model
    from engine.scoring import LMScorer

    # A move tokenizes ~35 short texts: in the calling thread that is about twice as fast
    # as through the tokenizers library's thread pool, whose threads compete with torch's
    # (and, in the bot, with the other games' threads). A value the user set is kept.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.model.server:
        from engine.server import RemoteScorer

        remote = RemoteScorer(config.model.server)
        logger.info("model server {}: {}", config.model.server, remote.source)
        return remote
    loaded = load_model(config.model)
    logger.info("model ready: {}", loaded.source)
    slots = config.search.cache_slots
    max_batch = slots
    if games > 1:
        slots = max(slots, 2 * games + 2)
        max_batch = games
    scorer = LMScorer(
        loaded.model,
        loaded.tokenizer,
        loaded.device,
        score_batch=config.search.score_batch,
        cache_slots=slots,
        max_batch=max_batch,
        nf4_kernel_rows=config.model.nf4_kernel_rows,
    )
    scorer.window_plies = loaded.window_plies
    scorer.warmup()  # CUDA graphs of single-game steps now, not at the first moves (a no-op on a CPU)
    return scorer


def configure_logging(level: str, log_file: str = "") -> None:
    logger.remove()
    if log_file:
        logger.add(log_file, level=level.upper(), enqueue=True)
    else:
        logger.add(sys.stderr, level=level.upper(), format="{time:HH:mm:ss.SSS} {level} {message}")


def build_config(config_path: str | None, model: str | None, adapter: str | None, overrides: list[str]) -> EngineConfig:
    extra = parse_overrides(overrides)
    if model:
        extra.setdefault("model", {})["path"] = model
    if adapter:
        extra.setdefault("model", {})["adapter"] = adapter
    return load_engine_config(config_path, extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="engine YAML config (default: built-in defaults; see configs/engine.yaml)")
    parser.add_argument("--model", help="model folder or hub name (overrides model.path)")
    parser.add_argument("--adapter", help="LoRA adapter folder (overrides model.adapter)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. search.mode=generate")


def run_uci(args: argparse.Namespace) -> int:
    try:
        config = build_config(args.config, args.model, args.adapter, list(args.overrides or []))
    except MistralChessError as exc:
        print(f"mistral-chess uci: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_file)
    engine = UciEngine(config)
    engine.run(_stdin_lines())
    return 0


def _stdin_lines() -> Iterable[str]:
    while True:
        line = sys.stdin.readline()
        if not line:  # EOF: clean exit
            return
        yield line


def main(argv: list[str] | None = None) -> int:
    """``mistral-chess-uci``: the engine with no required arguments, for GUIs."""
    parser = argparse.ArgumentParser(prog="mistral-chess-uci", description="mistral-chess UCI engine")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_uci(args)


if __name__ == "__main__":
    sys.exit(main())
