"""One Lichess game: its stream, its board, its clock and its moves.

A :class:`GameRunner` owns one game. A reader thread follows
``GET /api/bot/game/stream/{id}`` (reconnecting after drops and stalls) and queues
its events; the runner thread applies them in order and plays. The position is
always rebuilt from the server's data (``initialFen`` plus the ``moves`` string), so
after any reconnect or restart the game goes on from the server's position and
clocks, never from a local guess.

A move is chosen by the game's :class:`engine.player.Player` on the shared model,
in a worker thread, under a deadline from the clock minus ``move_overhead``; when
the deadline passes first, :meth:`~engine.player.Player.emergency_move` answers.

Sending a move: after a 429 the same move goes again once ``move_rate_limit_wait``
has passed; after no answer or a 5xx it goes again only when the stream has not
shown it within ``game_resync_wait`` (or a growing backoff), so a move the server
took but answered late is not sent twice. A move the server rejects (400) is
never resent: the stream is reconnected to re-sync, and the model thinks again
only if the fresh ``gameFull`` still has the bot to move, at most
``network.move_retries`` times for one position. The clock bounds everything
else.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chess
import chess.pgn
from loguru import logger

from bot.client import LichessClient, MoveOutcome, backoff_delay
from bot.config import BotConfig
from bot.errors import ApiError
from bot.streams import StreamFollower
from engine.config import EngineConfig
from engine.player import Decision, Player
from engine.timeman import GoParams, budget_ms

LIVE_STATUSES = ("created", "started")
DRAW_STATUSES = ("draw", "stalemate", "insufficientMaterialClaim")
TERMINATIONS = {
    "mate": "Normal",
    "resign": "Normal",
    "stalemate": "Normal",
    "draw": "Normal",
    "insufficientMaterialClaim": "Normal",
    "outoftime": "Time forfeit",
    "timeout": "Abandoned",
    "aborted": "Abandoned",
    "noStart": "Abandoned",
    "cheat": "Rules infraction",
}


@dataclasses.dataclass
class SharedContext:
    """What every game of one bot shares: one model, one client, one config."""

    config: BotConfig
    client: LichessClient
    scorer: Any  # engine.scoring.LMScorer (or None: random fallback moves only)
    model_pool: concurrent.futures.ThreadPoolExecutor  # runs Player.choose calls
    user_id: str  # lower-case Lichess id of the bot account
    username: str
    stop: threading.Event


@dataclasses.dataclass
class SentMove:
    ply: int
    uci: str
    outcome: MoveOutcome
    at: float  # monotonic time of the send
    full_count: int  # gameFull events seen when it was sent
    resync_asked: bool = False


def result_of(state: dict[str, Any]) -> str:
    """PGN result of a finished game from its last ``gameState``."""
    winner = state.get("winner")
    if winner == "white":
        return "1-0"
    if winner == "black":
        return "0-1"
    status = state.get("status", "")
    if status in DRAW_STATUSES or status in ("outoftime", "timeout"):
        return "1/2-1/2"  # time out against insufficient material, or a claimed draw
    return "*"


def think_with_deadline(
    player: Player,
    board: chess.Board,
    *,
    engine_color: chess.Color,
    pool: concurrent.futures.Executor,
    deadline: float,
    give_up: threading.Event | None = None,
    poll_s: float = 0.02,
) -> Decision | None:
    """``player.choose`` in ``pool``, answered by ``deadline`` (monotonic seconds).

    When the deadline passes first the search is cancelled and an emergency move is
    returned. Returns None when ``give_up`` is set meanwhile (the game ended).
    """
    cancel = threading.Event()
    future = pool.submit(player.choose, board.copy(), engine_color=engine_color, cancel=cancel, deadline=deadline)
    while True:
        left = deadline - time.monotonic()
        try:
            return future.result(timeout=max(0.0, min(poll_s, left)))
        except concurrent.futures.TimeoutError:
            pass
        except Exception as exc:  # Cancelled or a prompt error: a legal move all the same
            logger.warning("move choice failed ({}: {}); playing an emergency move", type(exc).__name__, exc)
            return player.emergency_move(board, f"move choice failed: {exc}")
        if give_up is not None and give_up.is_set():
            cancel.set()
            return None
        if time.monotonic() >= deadline:
            cancel.set()
            d = player.emergency_move(board, "time budget spent before the model answered")
            d.notes.insert(0, "emergency move: the model did not answer in time")
            return d


class GameRunner:
    """Plays one game until it ends (or the bot stops)."""

    def __init__(
        self,
        ctx: SharedContext,
        game_id: str,
        *,
        on_finish: Callable[[GameRunner], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.client = ctx.client
        self.game_id = game_id
        self.on_finish = on_finish
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ended = threading.Event()  # set by the reader as soon as a final state arrives
        self._reader_stop = threading.Event()
        self.follower = StreamFollower(
            self.client,
            f"/api/bot/game/stream/{game_id}",
            endpoint=f"game:{game_id}",
            handle=self._enqueue,
            stop=self._reader_stop,
        )
        self.thread = threading.Thread(target=self.run, name=f"game-{game_id}", daemon=True)
        self.reader: threading.Thread | None = None

        self.full: dict[str, Any] | None = None
        self.state: dict[str, Any] = {}
        self.state_at = time.monotonic()
        self.board: chess.Board | None = None
        self.root: chess.Board | None = None
        self.color: chess.Color | None = None
        self.opponent: dict[str, Any] = {}
        self.player: Player | None = None
        self.full_count = 0
        self.sent: SentMove | None = None
        self.rejections: dict[int, int] = {}  # ply -> moves the server rejected there
        self.unclear: dict[int, int] = {}  # ply -> sends with no clear answer (timeout, 5xx)
        self.lost: dict[int, int] = {}  # ply -> resends of a taken move the stream never showed
        self.last_change = time.monotonic()  # when the position last changed
        self.draw_answered: set[int] = set()
        self.takeback_answered: set[int] = set()
        self.claim_at: float | None = None
        self.claims = 0
        self.abort_sent = False
        self.resign_sent = False
        self.greeted = False
        self.status = "created"
        self.result: str | None = None
        self.finished = False  # the game is over and recorded
        self.not_ours = False
        self.pgn_path: Path | None = None
        self.moves_played = 0

    # -- threads -------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _read(self) -> None:
        reason = self.follower.run()
        self.events.put({"type": "_readerEnd", "reason": reason})

    def _enqueue(self, event: dict[str, Any]) -> bool:
        self.events.put(event)
        state = event.get("state") if event.get("type") == "gameFull" else event
        final = isinstance(state, dict) and state.get("status", "started") not in LIVE_STATUSES
        if event.get("type") in ("gameFull", "gameState") and final:
            self.ended.set()
            return True  # the stream has nothing more to say
        return False

    def notify_finished(self) -> None:
        """The event stream reported ``gameFinish``: make sure the game stream tells us."""
        if not self.ended.is_set():
            self.follower.close_current()

    def run(self) -> None:
        self.reader = threading.Thread(target=self._read, name=f"stream-{self.game_id}", daemon=True)
        self.reader.start()
        try:
            self._loop()
        except Exception:
            logger.exception("game {}: the game loop failed", self.game_id)
        finally:
            self._reader_stop.set()
            self.follower.close_current()
            if self.over:
                self._finish()
            if self.on_finish is not None:
                self.on_finish(self)

    @property
    def over(self) -> bool:
        return self.status not in LIVE_STATUSES or self.not_ours

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self.ctx.stop.is_set() and not self.over:
            try:
                event: dict[str, Any] | None = self.events.get(timeout=0.05)
            except queue.Empty:
                event = None
            while event is not None:
                self._apply(event)
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    event = None
            if self.over or self.ctx.stop.is_set():
                break
            self._housekeeping()
            if self._our_turn():
                self._play()

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "gameFull":
            self._on_full(event)
        elif kind == "gameState":
            self._on_state(event)
        elif kind == "chatLine":
            logger.info(
                "game {} chat [{}] {}: {}",
                self.game_id,
                event.get("room"),
                event.get("username"),
                event.get("text"),
            )
        elif kind == "opponentGone":
            self._on_gone(event)
        elif kind == "_readerEnd":
            self._on_reader_end(str(event.get("reason")))

    def _on_full(self, full: dict[str, Any]) -> None:
        self.full_count += 1
        first = self.full is None
        self.full = full
        white, black = full.get("white") or {}, full.get("black") or {}
        me = self.ctx.user_id
        if str(white.get("id", "")).lower() == me:
            self.color, self.opponent = chess.WHITE, black
        elif str(black.get("id", "")).lower() == me:
            self.color, self.opponent = chess.BLACK, white
        else:
            logger.error(
                "game {}: {} is neither White nor Black here; not playing it", self.game_id, self.ctx.username
            )
            self.not_ours = True
            return
        variant = (full.get("variant") or {}).get("key", "standard")
        fen = full.get("initialFen") or "startpos"
        try:
            self.root = chess.Board() if fen == "startpos" else chess.Board(fen)
        except ValueError:
            self.root = None
        if variant not in ("standard", "fromPosition") or self.root is None:
            logger.error("game {}: cannot play variant {} from {!r}; resigning", self.game_id, variant, fen)
            self._resign()
            return
        if first:
            self.player = self._make_player()
            side = "White" if self.color == chess.WHITE else "Black"
            logger.info(
                "game {}: {} as {} vs {} ({}), {} {}, {}",
                self.game_id,
                self.ctx.username,
                side,
                self.opponent.get("name", "?"),
                self.opponent.get("rating", "?"),
                "rated" if full.get("rated") else "casual",
                full.get("speed", "?"),
                "from a position" if fen != "startpos" else "standard",
            )
        else:
            logger.info("game {}: re-synced from a fresh gameFull", self.game_id)
        self._on_state(full.get("state") or {})
        if first and not self.over and self.board is not None and len(self.board.move_stack) < 2:
            self._greet()

    def _make_player(self) -> Player:
        base: EngineConfig = self.cfg.engine
        prompt = dataclasses.replace(
            base.prompt,
            engine_name=self.ctx.username or base.prompt.engine_name,
            opponent_name=str(self.opponent.get("name") or self.opponent.get("id") or "?"),
            opponent_elo=int(self.opponent.get("rating") or 0),
        )
        player = Player(dataclasses.replace(base, prompt=prompt), self.ctx.scorer)
        player.new_game()
        return player

    def _on_state(self, state: dict[str, Any]) -> None:
        if self.root is None:
            return  # no gameFull yet (cannot happen: the stream starts with one)
        self.state = state
        self.state_at = time.monotonic()
        board = self.root.copy(stack=False)
        for n, uci in enumerate(str(state.get("moves", "")).split(), 1):
            try:
                board.push(board.parse_uci(uci))
            except ValueError:
                logger.error(
                    "game {}: server move {} {!r} is illegal in {}; re-syncing",
                    self.game_id,
                    n,
                    uci,
                    board.fen(),
                )
                self.follower.close_current()
                return
        if self.board is None or board.move_stack != self.board.move_stack:
            self.last_change = time.monotonic()
        self.board = board
        self.status = str(state.get("status", "started"))
        if self.over:
            return
        opp_white = self.color == chess.BLACK
        ply = len(board.move_stack)
        if state.get("wdraw" if opp_white else "bdraw") and ply not in self.draw_answered:
            self.draw_answered.add(ply)
            self._answer_draw(board)
        if state.get("wtakeback" if opp_white else "btakeback") and ply not in self.takeback_answered:
            self.takeback_answered.add(ply)
            self._call("decline takeback", lambda: self.client.answer_takeback(self.game_id, accept=False))

    def _on_gone(self, event: dict[str, Any]) -> None:
        if event.get("gone"):
            secs = event.get("claimWinInSeconds")
            logger.info("game {}: the opponent left (claim possible in {} s)", self.game_id, secs)
            if secs is not None and self.cfg.claim_victory:
                self.claim_at = time.monotonic() + max(0, int(secs))
        else:
            logger.info("game {}: the opponent is back", self.game_id)
            self.claim_at = None

    def _on_reader_end(self, reason: str) -> None:
        if self.over or reason in ("done", "stopped"):
            return
        if reason == "unauthorized":
            logger.error("game {}: the server no longer accepts the token; stopping the bot", self.game_id)
            self.ctx.stop.set()
            return
        # 404 / 401 / gave up: ask the server whether the game still runs.
        logger.warning("game {}: game stream ended ({}); checking /api/account/playing", self.game_id, reason)
        try:
            ongoing = {g.get("gameId") for g in self.client.playing()}
        except ApiError as exc:
            logger.warning("game {}: cannot list ongoing games: {}", self.game_id, exc)
            ongoing = {self.game_id}
        if self.game_id in ongoing and not self.ctx.stop.is_set():
            if self.ctx.stop.wait(self.cfg.network.backoff_initial):
                return
            self.reader = threading.Thread(target=self._read, name=f"stream-{self.game_id}", daemon=True)
            self.reader.start()
        else:
            logger.warning("game {}: no longer running on the server", self.game_id)
            self.status = "unknownFinish" if self.status in LIVE_STATUSES else self.status

    # -- playing -----------------------------------------------------------------------------
    def _our_turn(self) -> bool:
        b = self.board
        return (
            b is not None
            and self.player is not None
            and not self.resign_sent
            and b.turn == self.color
            and not b.is_game_over(claim_draw=False)
        )

    def _deadline(self, board: chess.Board) -> float:
        s = self.state
        big = 10**9
        params = GoParams(
            wtime=int(s.get("wtime", big)),
            btime=int(s.get("btime", big)),
            winc=int(s.get("winc", 0)),
            binc=int(s.get("binc", 0)),
        )
        overhead = self.cfg.move_overhead
        time_cfg = dataclasses.replace(self.cfg.engine.time, move_overhead_ms=overhead)
        budget = budget_ms(params, board.turn, time_cfg)
        own = params.wtime if board.turn == chess.WHITE else params.btime
        assert own is not None
        limit = own - overhead  # the move must be back before the flag falls
        expiration = s.get("expiration")
        if isinstance(expiration, dict) and "millisToMove" in expiration:
            limit = min(
                limit, int(expiration["millisToMove"]) - int(expiration.get("idleMillis", 0)) - overhead
            )
        ms = min(budget if budget is not None else limit, limit)
        return self.state_at + max(0, ms) / 1000.0

    def _play(self) -> None:
        assert self.board is not None and self.player is not None and self.color is not None
        board = self.board
        ply = len(board.move_stack)
        net = self.cfg.network
        sent = self.sent if self.sent is not None and self.sent.ply == ply else None
        now = time.monotonic()
        if sent is not None:
            if sent.outcome == MoveOutcome.SENT:
                if self.full_count == sent.full_count:
                    # The server took it and the stream will show it; if it stays
                    # silent, reconnect it once for a fresh gameFull.
                    if now - sent.at > net.game_resync_wait and not sent.resync_asked:
                        logger.warning(
                            "game {}: move {} taken but not in the stream yet; re-syncing",
                            self.game_id,
                            sent.uci,
                        )
                        sent.resync_asked = True
                        self.follower.close_current()
                    return
                # A fresh gameFull still shows this position: the move was lost; send it again.
                if self._count(self.lost, ply) <= net.move_retries and board.is_legal(
                    chess.Move.from_uci(sent.uci)
                ):
                    self._send(board, ply, sent.uci)
                return
            if sent.outcome == MoveOutcome.REJECTED:
                if sent.full_count == self.full_count or self.rejections.get(ply, 0) >= net.move_retries:
                    return  # wait for the re-sync; never loop on a rejected move
            else:
                # 429: resend after move_rate_limit_wait. No answer or 5xx: the stream
                # had game_resync_wait (or a growing backoff) to show the move; it did not.
                if sent.outcome == MoveOutcome.RATE_LIMITED:
                    wait = net.move_rate_limit_wait
                else:
                    wait = max(
                        net.game_resync_wait,
                        backoff_delay(self.unclear.get(ply, 1) - 1, net, self.client.rng),
                    )
                if now - sent.at < wait:
                    return
                if board.is_legal(chess.Move.from_uci(sent.uci)):
                    self._send(board, ply, sent.uci)
                    return
        decision = think_with_deadline(
            self.player,
            board,
            engine_color=self.color,
            pool=self.ctx.model_pool,
            deadline=self._deadline(board),
            give_up=self.ended,
        )
        if decision is None:
            return
        for note in decision.notes:
            logger.info("game {}: {}", self.game_id, note)
        # Events that came in while the model thought may have changed everything.
        self._drain()
        if self.over or self.board is None or len(self.board.move_stack) != ply:
            return
        if decision.resign:
            logger.info("game {}: resigning ({})", self.game_id, decision.source)
            self._resign()
            return
        if decision.move is None:
            return
        if not board.is_legal(decision.move):  # defence in depth
            logger.error(
                "game {}: internal: illegal move {} chosen at {}", self.game_id, decision.move, board.fen()
            )
            decision.move = next(iter(board.legal_moves))
        self._send(board, ply, decision.move.uci(), decision=decision)

    def _send(self, board: chess.Board, ply: int, uci: str, *, decision: Decision | None = None) -> None:
        outcome, why = self.client.make_move(self.game_id, uci)
        if outcome == MoveOutcome.REJECTED:
            self._count(self.rejections, ply)
        elif outcome == MoveOutcome.UNKNOWN:
            self._count(self.unclear, ply)
        self.sent = SentMove(ply, uci, outcome, time.monotonic(), self.full_count)
        san = board.san(chess.Move.from_uci(uci)) if board.is_legal(chess.Move.from_uci(uci)) else uci
        if outcome == MoveOutcome.SENT:
            self.moves_played += 1
            extra = (
                f" ({decision.source}, p={decision.probability:.2f})"
                if decision and decision.probability
                else ""
            )
            logger.info("game {}: ply {} played {}{}", self.game_id, ply + 1, san, extra)
        elif outcome == MoveOutcome.REJECTED:
            logger.warning(
                "game {}: the server rejected {} at ply {}: {}; re-syncing", self.game_id, uci, ply + 1, why
            )
            self.follower.close_current()
        else:
            logger.warning(
                "game {}: move {} at ply {} not confirmed ({}): {}",
                self.game_id,
                uci,
                ply + 1,
                outcome.value,
                why,
            )

    @staticmethod
    def _count(counter: dict[int, int], ply: int) -> int:
        counter[ply] = counter.get(ply, 0) + 1
        return counter[ply]

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self._apply(event)

    def _answer_draw(self, board: chess.Board) -> None:
        assert self.player is not None
        accept = self.player.accept_draw(board)
        logger.info(
            "game {}: draw offer at ply {}: {}",
            self.game_id,
            len(board.move_stack),
            "accepted" if accept else "declined",
        )
        self._call("answer draw", lambda: self.client.answer_draw(self.game_id, accept=accept))

    def _resign(self) -> None:
        if not self.resign_sent:
            self.resign_sent = True
            self._call("resign", lambda: self.client.resign(self.game_id))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        b = self.board
        if (
            b is not None
            and not self.abort_sent
            and len(b.move_stack) < 2
            and b.turn != self.color
            and now - self.last_change > self.cfg.abort_time
        ):
            self.abort_sent = True
            logger.info(
                "game {}: the opponent has not moved for {:g} s; aborting", self.game_id, self.cfg.abort_time
            )
            self._call("abort", lambda: self.client.abort(self.game_id))
        if self.claim_at is not None and now >= self.claim_at and self.claims < 3:
            self.claims += 1
            logger.info("game {}: claiming victory (the opponent left)", self.game_id)
            if not self._call("claim victory", lambda: self.client.claim_victory(self.game_id)):
                self.claim_at = now + 2.0
            else:
                self.claim_at = None

    def _call(self, what: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
            return True
        except ApiError as exc:
            logger.warning("game {}: {} failed: {}", self.game_id, what, exc)
            return False

    # -- chat and the end ----------------------------------------------------------------------
    def _chat_text(self, template: str) -> str:
        name = str(self.opponent.get("name") or self.opponent.get("id") or "opponent")
        return template.replace("{me}", self.ctx.username).replace("{opponent}", name)

    def _chat(self, room: str, template: str, what: str) -> None:
        text = self._chat_text(template)
        self._call(what, lambda: self.client.chat(self.game_id, room, text))

    def _greet(self) -> None:
        self.greeted = True
        g = self.cfg.greeting
        for room, text in (("player", g.hello), ("spectator", g.hello_spectators)):
            if text:
                self._chat(room, text, "greeting")

    def _finish(self) -> None:
        if self.finished or self.not_ours or self.full is None:
            return
        self.finished = True
        self.result = result_of(self.state)
        moves = len(self.board.move_stack) if self.board is not None else 0
        logger.info(
            "game {} over: {} {} after {} plies (winner: {})",
            self.game_id,
            self.status,
            self.result,
            moves,
            self.state.get("winner", "none"),
        )
        if self.player is not None:
            logger.info("game {}: player stats {}", self.game_id, self.player.summary())
        g = self.cfg.greeting
        if self.status != "aborted":
            for room, text in (("player", g.goodbye), ("spectator", g.goodbye_spectators)):
                if text:
                    self._chat(room, text, "goodbye")
        if self.cfg.pgn_directory:
            try:
                self.pgn_path = write_pgn(Path(self.cfg.pgn_directory), self)
                logger.info("game {}: PGN saved to {}", self.game_id, self.pgn_path)
            except OSError as exc:
                logger.error(
                    "game {}: cannot write the PGN to {}: {}", self.game_id, self.cfg.pgn_directory, exc
                )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "unknown"


def game_pgn(runner: GameRunner) -> chess.pgn.Game:
    """The finished game as PGN, with Lichess's headers."""
    full = runner.full or {}
    board = runner.board or chess.Board()
    game = chess.pgn.Game.from_board(board)
    white, black = full.get("white") or {}, full.get("black") or {}
    created = full.get("createdAt")
    when = (
        datetime.datetime.fromtimestamp(created / 1000, tz=datetime.timezone.utc)
        if isinstance(created, (int, float))
        else datetime.datetime.now(tz=datetime.timezone.utc)
    )
    clock = full.get("clock") or {}
    h = game.headers
    h["Event"] = f"{'Rated' if full.get('rated') else 'Casual'} {full.get('speed', '')} game".replace(
        "  ", " "
    )
    h["Site"] = runner.client.url(runner.game_id)
    h["Date"] = when.strftime("%Y.%m.%d")
    h["White"] = str(white.get("name") or white.get("id") or "?")
    h["Black"] = str(black.get("name") or black.get("id") or "?")
    h["Result"] = runner.result or result_of(runner.state)
    if white.get("rating"):
        h["WhiteElo"] = str(white["rating"])
    if black.get("rating"):
        h["BlackElo"] = str(black["rating"])
    for side, info in (("White", white), ("Black", black)):
        if info.get("title"):
            h[f"{side}Title"] = str(info["title"])
    if clock:
        h["TimeControl"] = f"{int(clock.get('initial', 0)) // 1000}+{int(clock.get('increment', 0)) // 1000}"
    h["Termination"] = TERMINATIONS.get(runner.status, "Unterminated")
    h["UTCDate"] = when.strftime("%Y.%m.%d")
    h["UTCTime"] = when.strftime("%H:%M:%S")
    h["GameId"] = runner.game_id
    return game


def write_pgn(directory: Path, runner: GameRunner) -> Path:
    """Write ``{White} vs {Black} - {id}.pgn`` (lichess-bot's per-game file name)."""
    directory.mkdir(parents=True, exist_ok=True)
    game = game_pgn(runner)
    name = f"{_safe(game.headers['White'])} vs {_safe(game.headers['Black'])} - {_safe(runner.game_id)}.pgn"
    path = directory / name
    path.write_text(str(game) + "\n\n", encoding="utf-8")
    return path
